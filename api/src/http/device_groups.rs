//! Device groups: sets of devices, optionally placed at a site of the tenant.

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
pub struct DeviceGroup {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub site_id: Option<Uuid>,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Keyed for DeviceGroup {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "Roof sensors",
    "site_id": "0192f0c4-0000-7000-8000-000000000020"
}))]
struct NewDeviceGroup {
    #[schema(value_type = Name)]
    name: String,
    site_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "name": "Roof sensors (east)", "site_id": null }))]
struct DeviceGroupPatch {
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(value_type = Option<Name>, nullable = false)]
    name: Option<String>,
    #[serde(default, deserialize_with = "fields::patch")]
    site_id: Option<Option<Uuid>>,
}

/// Create a device group
///
/// Answers 201 with the new device group. `site_id` is optional; when given it must name a site of
/// this tenant, or the answer is 422 `invalid_reference`.
#[utoipa::path(post, path = "/tenants/{tenant_id}/device-groups", tag = "hierarchy", params(TenantPath), request_body = NewDeviceGroup,
    responses((status = 201, description = "Created", body = DeviceGroup)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewDeviceGroup>,
) -> Result<(StatusCode, Json<DeviceGroup>), ApiError> {
    let name = fields::text("name", &body.name, MAX_NAME_CHARS)?;
    let row = sqlx::query_as!(
        DeviceGroup,
        "INSERT INTO device_groups (id, tenant_id, site_id, name) VALUES ($1, $2, $3, $4)
         RETURNING id, tenant_id, site_id, name, created_at, updated_at",
        Uuid::now_v7(),
        tenant_id,
        body.site_id,
        name
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// List device groups
///
/// One page of the tenant's device groups in creation order: pass `limit` (1–1000, default 100) and
/// the previous page's `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/tenants/{tenant_id}/device-groups", tag = "hierarchy", params(TenantPath, PageParams),
    responses((status = 200, description = "One page, oldest first", body = Page<DeviceGroup>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<DeviceGroup>>, ApiError> {
    let limit = page.limit()?;
    let rows = sqlx::query_as!(
        DeviceGroup,
        "SELECT id, tenant_id, site_id, name, created_at, updated_at FROM device_groups
         WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
        tenant_id,
        page.after()?,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

/// Read a device group
///
/// A device group of another tenant is 404, exactly as if it did not exist.
#[utoipa::path(get, path = "/tenants/{tenant_id}/device-groups/{id}", tag = "hierarchy", params(ItemPath),
    responses((status = 200, description = "The device group", body = DeviceGroup)))]
async fn read(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<DeviceGroup>, ApiError> {
    sqlx::query_as!(
        DeviceGroup,
        "SELECT id, tenant_id, site_id, name, created_at, updated_at FROM device_groups
         WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("device group"))
}

/// Update a device group
///
/// Absent fields are kept; `"site_id": null` detaches the group from its site, while `"name": null`
/// is 422. A `site_id` that is not this tenant's is 422 `invalid_reference`. Answers 200 with the
/// device group as stored.
#[utoipa::path(patch, path = "/tenants/{tenant_id}/device-groups/{id}", tag = "hierarchy", params(ItemPath), request_body = DeviceGroupPatch,
    responses((status = 200, description = "The updated device group", body = DeviceGroup)))]
async fn update(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
    Json(body): Json<DeviceGroupPatch>,
) -> Result<Json<DeviceGroup>, ApiError> {
    let name = fields::optional_text("name", body.name.as_deref(), MAX_NAME_CHARS)?;
    sqlx::query_as!(
        DeviceGroup,
        "UPDATE device_groups SET
             name = COALESCE($3, name),
             site_id = CASE WHEN $4 THEN $5 ELSE site_id END,
             updated_at = now()
         WHERE tenant_id = $1 AND id = $2
         RETURNING id, tenant_id, site_id, name, created_at, updated_at",
        tenant_id,
        id,
        name,
        body.site_id.is_some(),
        body.site_id.flatten()
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("device group"))
}

/// Delete a device group
///
/// Answers 204. While devices are still in the group the answer is 409: move or delete them first.
#[utoipa::path(delete, path = "/tenants/{tenant_id}/device-groups/{id}", tag = "hierarchy", params(ItemPath),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query!(
        "DELETE FROM device_groups WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .execute(&state.pool)
    .await
    .map_err(in_use("device group"))?;
    deletion(deleted.rows_affected(), "device group")
}
