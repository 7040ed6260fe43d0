//! Device types: how operators classify devices. A type's `telemetry_schema` describes the
//! metrics it reports (unit, expected min/max), which dashboards and the processor use.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::{ApiError, deletion, in_use};
use super::extract::{Json, Path, Query};
use super::fields::{self, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS};
use super::openapi::{Description, ItemPath, Name, TenantPath};
use super::page::{Keyed, Page, PageParams};
use super::{AppState, tenants};
use crate::domain::telemetry_schema::TelemetrySchema;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceType {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    #[schema(value_type = Option<TelemetrySchema>)]
    pub telemetry_schema: Option<Jsonb<TelemetrySchema>>,
    /// Seconds without a message after which a device of this type is offline; `null`: the
    /// instance's default (`GITO_DEVICE_OFFLINE_AFTER`).
    #[schema(minimum = 1, maximum = 2592000)]
    pub offline_after_secs: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Keyed for DeviceType {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "SDE11 boiler controller",
    "description": "Wall-mounted boiler controller, one message every 30 s",
    "telemetry_schema": {
        "CHIMNEY_TEMP": { "unit": "°C", "min": -20, "max": 600 },
        "burner_on": {}
    }
}))]
struct NewDeviceType {
    #[schema(value_type = Name)]
    name: String,
    #[schema(value_type = Option<Description>)]
    description: Option<String>,
    telemetry_schema: Option<TelemetrySchema>,
    #[schema(minimum = 1, maximum = 2592000)]
    offline_after_secs: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "description": null,
    "telemetry_schema": { "CHIMNEY_TEMP": { "unit": "°C", "max": 650 } }
}))]
struct DeviceTypePatch {
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(value_type = Option<Name>, nullable = false)]
    name: Option<String>,
    #[serde(default, deserialize_with = "fields::patch")]
    #[schema(value_type = Option<Description>)]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "fields::patch")]
    telemetry_schema: Option<Option<TelemetrySchema>>,
    #[serde(default, deserialize_with = "fields::patch")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 2592000)]
    offline_after_secs: Option<Option<i64>>,
}

/// Create a device type
///
/// Answers 201 with the new device type; its name is unique in the tenant (a duplicate is 409).
/// `telemetry_schema` maps each metric name to its optional `unit`, `min` and `max` (`min` above
/// `max` is 422); the processor flags values of devices of this type that it does not list or that
/// fall outside min/max. `offline_after_secs` (1 to 2592000, i.e. 30 days) is how long a device
/// of this type may stay silent before it is `offline`; absent or `null`, the instance's default
/// (`GITO_DEVICE_OFFLINE_AFTER`) applies. Zero, negative or larger values are 422.
#[utoipa::path(post, path = "/tenants/{tenant_id}/device-types", tag = "device types", params(TenantPath), request_body = NewDeviceType,
    responses((status = 201, description = "Created", body = DeviceType)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewDeviceType>,
) -> Result<(StatusCode, Json<DeviceType>), ApiError> {
    let name = fields::text("name", &body.name, MAX_NAME_CHARS)?;
    let description = fields::optional_text(
        "description",
        body.description.as_deref(),
        MAX_DESCRIPTION_CHARS,
    )?;
    if let Some(schema) = &body.telemetry_schema {
        schema.validate()?;
    }
    let offline_after = body.offline_after_secs.map(offline_after).transpose()?;
    let row = sqlx::query_as!(
        DeviceType,
        r#"INSERT INTO device_types (id, tenant_id, name, description, telemetry_schema,
                                     offline_after_secs)
           VALUES ($1, $2, $3, $4, $5, $6)
           RETURNING id, tenant_id, name, description,
                     telemetry_schema AS "telemetry_schema: Jsonb<TelemetrySchema>",
                     offline_after_secs, created_at, updated_at"#,
        Uuid::now_v7(),
        tenant_id,
        name,
        description,
        body.telemetry_schema.map(Jsonb) as _,
        offline_after
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// List device types
///
/// One page of the tenant's device types in creation order: pass `limit` (1–1000, default 100) and
/// the previous page's `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/tenants/{tenant_id}/device-types", tag = "device types", params(TenantPath, PageParams),
    responses((status = 200, description = "One page, oldest first", body = Page<DeviceType>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<DeviceType>>, ApiError> {
    let limit = page.limit()?;
    let rows = sqlx::query_as!(
        DeviceType,
        r#"SELECT id, tenant_id, name, description,
                  telemetry_schema AS "telemetry_schema: Jsonb<TelemetrySchema>",
                  offline_after_secs, created_at, updated_at
           FROM device_types
           WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3"#,
        tenant_id,
        page.after()?,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

/// Read a device type
///
/// A device type of another tenant is 404, exactly as if it did not exist.
#[utoipa::path(get, path = "/tenants/{tenant_id}/device-types/{id}", tag = "device types", params(ItemPath),
    responses((status = 200, description = "The device type", body = DeviceType)))]
async fn read(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<DeviceType>, ApiError> {
    sqlx::query_as!(
        DeviceType,
        r#"SELECT id, tenant_id, name, description,
                  telemetry_schema AS "telemetry_schema: Jsonb<TelemetrySchema>",
                  offline_after_secs, created_at, updated_at
           FROM device_types WHERE tenant_id = $1 AND id = $2"#,
        tenant_id,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("device type"))
}

/// Update a device type
///
/// Absent fields are kept; `null` clears `description` or `telemetry_schema`, while `"name": null`
/// is 422. A new `telemetry_schema` replaces the old one as a whole, and a name another device type
/// of the tenant has is 409. `offline_after_secs` (1 to 2592000, or `null` for the default)
/// applies to the type's online devices at the sweeper's next tick. Answers 200 with the device
/// type as stored.
#[utoipa::path(patch, path = "/tenants/{tenant_id}/device-types/{id}", tag = "device types", params(ItemPath), request_body = DeviceTypePatch,
    responses((status = 200, description = "The updated device type", body = DeviceType)))]
async fn update(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
    Json(body): Json<DeviceTypePatch>,
) -> Result<Json<DeviceType>, ApiError> {
    let name = fields::optional_text("name", body.name.as_deref(), MAX_NAME_CHARS)?;
    let description = match &body.description {
        Some(Some(d)) => Some(fields::text("description", d, MAX_DESCRIPTION_CHARS)?),
        _ => None,
    };
    if let Some(Some(schema)) = &body.telemetry_schema {
        schema.validate()?;
    }
    let offline_after = body
        .offline_after_secs
        .flatten()
        .map(offline_after)
        .transpose()?;
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query_as!(
        DeviceType,
        r#"UPDATE device_types SET
               name = COALESCE($3, name),
               description = CASE WHEN $4 THEN $5 ELSE description END,
               telemetry_schema = CASE WHEN $6 THEN $7 ELSE telemetry_schema END,
               offline_after_secs = CASE WHEN $8 THEN $9 ELSE offline_after_secs END,
               updated_at = now()
           WHERE tenant_id = $1 AND id = $2
           RETURNING id, tenant_id, name, description,
                     telemetry_schema AS "telemetry_schema: Jsonb<TelemetrySchema>",
                     offline_after_secs, created_at, updated_at"#,
        tenant_id,
        id,
        name,
        body.description.is_some(),
        description,
        body.telemetry_schema.is_some(),
        body.telemetry_schema.flatten().map(Jsonb) as _,
        body.offline_after_secs.is_some(),
        offline_after
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::NotFound("device type"))?;
    if body.offline_after_secs.is_some() {
        // A shorter timeout must not wait for the old deadline: the sweeper looks again now.
        sqlx::query!(
            "UPDATE device_connectivity c SET check_at = now()
             FROM devices d
             WHERE d.id = c.device_id AND d.tenant_id = $1 AND d.device_type_id = $2
               AND c.check_at > now()",
            tenant_id,
            id
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Json(row))
}

fn offline_after(secs: i64) -> Result<i32, ApiError> {
    Ok(crate::domain::alerts::seconds("offline_after_secs", secs)?)
}

/// Delete a device type
///
/// Answers 204, and deletes the alert rules scoped to this type (`device_type_id`) with it. While
/// devices are classified with the type, or a classification rule names it, the answer is 409:
/// reclassify or delete them (or change the rule) first.
#[utoipa::path(delete, path = "/tenants/{tenant_id}/device-types/{id}", tag = "device types", params(ItemPath),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query!(
        "DELETE FROM device_types WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .execute(&state.pool)
    .await
    .map_err(in_use("device type"))?;
    deletion(deleted.rows_affected(), "device type")
}
