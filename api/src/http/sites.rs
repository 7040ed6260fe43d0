//! Sites: places where devices are installed, optionally under an organization of the tenant.

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
pub struct Site {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub organization_id: Option<Uuid>,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Keyed for Site {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "Boiler house 3",
    "organization_id": "0192f0c4-0000-7000-8000-000000000010"
}))]
struct NewSite {
    #[schema(value_type = Name)]
    name: String,
    organization_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "name": "Boiler house 3 (east)", "organization_id": null }))]
struct SitePatch {
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(value_type = Option<Name>, nullable = false)]
    name: Option<String>,
    #[serde(default, deserialize_with = "fields::patch")]
    organization_id: Option<Option<Uuid>>,
}

/// Create a site
///
/// Answers 201 with the new site. `organization_id` is optional; when given it must name an
/// organization of this tenant, or the answer is 422 `invalid_reference`.
#[utoipa::path(post, path = "/tenants/{tenant_id}/sites", tag = "hierarchy", params(TenantPath), request_body = NewSite,
    responses((status = 201, description = "Created", body = Site)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewSite>,
) -> Result<(StatusCode, Json<Site>), ApiError> {
    let name = fields::text("name", &body.name, MAX_NAME_CHARS)?;
    let row = sqlx::query_as!(
        Site,
        "INSERT INTO sites (id, tenant_id, organization_id, name) VALUES ($1, $2, $3, $4)
         RETURNING id, tenant_id, organization_id, name, created_at, updated_at",
        Uuid::now_v7(),
        tenant_id,
        body.organization_id,
        name
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// List sites
///
/// One page of the tenant's sites in creation order: pass `limit` (1–1000, default 100) and the
/// previous page's `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/tenants/{tenant_id}/sites", tag = "hierarchy", params(TenantPath, PageParams),
    responses((status = 200, description = "One page, oldest first", body = Page<Site>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<Site>>, ApiError> {
    let limit = page.limit()?;
    let rows = sqlx::query_as!(
        Site,
        "SELECT id, tenant_id, organization_id, name, created_at, updated_at FROM sites
         WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
        tenant_id,
        page.after()?,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

/// Read a site
///
/// A site of another tenant is 404, exactly as if it did not exist.
#[utoipa::path(get, path = "/tenants/{tenant_id}/sites/{id}", tag = "hierarchy", params(ItemPath),
    responses((status = 200, description = "The site", body = Site)))]
async fn read(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<Site>, ApiError> {
    sqlx::query_as!(
        Site,
        "SELECT id, tenant_id, organization_id, name, created_at, updated_at FROM sites
         WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("site"))
}

/// Update a site
///
/// Absent fields are kept; `"organization_id": null` detaches the site from its organization, while
/// `"name": null` is 422. An `organization_id` that is not this tenant's is 422
/// `invalid_reference`. Answers 200 with the site as stored.
#[utoipa::path(patch, path = "/tenants/{tenant_id}/sites/{id}", tag = "hierarchy", params(ItemPath), request_body = SitePatch,
    responses((status = 200, description = "The updated site", body = Site)))]
async fn update(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
    Json(body): Json<SitePatch>,
) -> Result<Json<Site>, ApiError> {
    let name = fields::optional_text("name", body.name.as_deref(), MAX_NAME_CHARS)?;
    sqlx::query_as!(
        Site,
        "UPDATE sites SET
             name = COALESCE($3, name),
             organization_id = CASE WHEN $4 THEN $5 ELSE organization_id END,
             updated_at = now()
         WHERE tenant_id = $1 AND id = $2
         RETURNING id, tenant_id, organization_id, name, created_at, updated_at",
        tenant_id,
        id,
        name,
        body.organization_id.is_some(),
        body.organization_id.flatten()
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("site"))
}

/// Delete a site
///
/// Answers 204. While device groups or devices still reference the site the answer is 409: reassign
/// or delete them first.
#[utoipa::path(delete, path = "/tenants/{tenant_id}/sites/{id}", tag = "hierarchy", params(ItemPath),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query!(
        "DELETE FROM sites WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .execute(&state.pool)
    .await
    .map_err(in_use("site"))?;
    deletion(deleted.rows_affected(), "site")
}
