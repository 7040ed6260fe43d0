//! Organizations: the top of a tenant's hierarchy (organization > site > device group).

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::{ApiError, deletion, in_use};
use super::extract::{Json, Path, Query};
use super::fields::{self, MAX_NAME_CHARS};
use super::openapi::{ItemPath, Name, TenantPath};
use super::page::{Keyed, Page, PageParams};
use super::{AppState, tenants};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Organization {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Keyed for Organization {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "name": "Acme Northern Region" }))]
struct NewOrganization {
    #[schema(value_type = Name)]
    name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "name": "Acme North" }))]
struct OrganizationPatch {
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(value_type = Option<Name>, nullable = false)]
    name: Option<String>,
}

/// Create an organization
///
/// Answers 201 with the new organization, the top of the tenant's hierarchy (organization > site >
/// device group). A `name` that breaks the name rules is 422.
#[utoipa::path(post, path = "/tenants/{tenant_id}/organizations", tag = "hierarchy", params(TenantPath), request_body = NewOrganization,
    responses((status = 201, description = "Created", body = Organization)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewOrganization>,
) -> Result<(StatusCode, Json<Organization>), ApiError> {
    let name = fields::text("name", &body.name, MAX_NAME_CHARS)?;
    let row = sqlx::query_as!(
        Organization,
        "INSERT INTO organizations (id, tenant_id, name) VALUES ($1, $2, $3)
         RETURNING id, tenant_id, name, created_at, updated_at",
        Uuid::now_v7(),
        tenant_id,
        name
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// List organizations
///
/// One page of the tenant's organizations in creation order: pass `limit` (1–1000, default 100) and
/// the previous page's `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/tenants/{tenant_id}/organizations", tag = "hierarchy", params(TenantPath, PageParams),
    responses((status = 200, description = "One page, oldest first", body = Page<Organization>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<Organization>>, ApiError> {
    let limit = page.limit()?;
    let rows = sqlx::query_as!(
        Organization,
        "SELECT id, tenant_id, name, created_at, updated_at FROM organizations
         WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
        tenant_id,
        page.after()?,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

/// Read an organization
///
/// An organization of another tenant is 404, exactly as if it did not exist.
#[utoipa::path(get, path = "/tenants/{tenant_id}/organizations/{id}", tag = "hierarchy", params(ItemPath),
    responses((status = 200, description = "The organization", body = Organization)))]
async fn read(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<Organization>, ApiError> {
    sqlx::query_as!(
        Organization,
        "SELECT id, tenant_id, name, created_at, updated_at FROM organizations
         WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("organization"))
}

/// Update an organization
///
/// Renames the organization when `name` is present; an absent `name` is kept, and `null` is 422 (a
/// name cannot be cleared). Answers 200 with the organization as stored.
#[utoipa::path(patch, path = "/tenants/{tenant_id}/organizations/{id}", tag = "hierarchy", params(ItemPath), request_body = OrganizationPatch,
    responses((status = 200, description = "The updated organization", body = Organization)))]
async fn update(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
    Json(body): Json<OrganizationPatch>,
) -> Result<Json<Organization>, ApiError> {
    let name = fields::optional_text("name", body.name.as_deref(), MAX_NAME_CHARS)?;
    sqlx::query_as!(
        Organization,
        "UPDATE organizations SET name = COALESCE($3, name), updated_at = now()
         WHERE tenant_id = $1 AND id = $2
         RETURNING id, tenant_id, name, created_at, updated_at",
        tenant_id,
        id,
        name
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("organization"))
}

/// Delete an organization
///
/// Answers 204. While sites or devices still reference the organization the answer is 409: reassign
/// or delete them first.
#[utoipa::path(delete, path = "/tenants/{tenant_id}/organizations/{id}", tag = "hierarchy", params(ItemPath),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query!(
        "DELETE FROM organizations WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .execute(&state.pool)
    .await
    .map_err(in_use("organization"))?;
    deletion(deleted.rows_affected(), "organization")
}
