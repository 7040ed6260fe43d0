//! Devices of a tenant. The bridge creates them idempotently by `external_id` (its MQTT device
//! path) with no device type; the tenant's classification rules (classification_rules.rs) classify
//! them as they are created, operators later with PATCH or by pattern.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::{ApiError, deletion};
use super::extract::{Json, Path, Query};
use super::fields::{self, MAX_EXTERNAL_ID_CHARS, MAX_NAME_CHARS};
use super::openapi::{ExternalId, ItemPath, Name, TenantPath};
use super::page::{self, Keyed, Page};
use super::{AppState, tenants};
use crate::domain::topic_pattern::TopicPattern;
use gito_wire::Connectivity;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub external_id: Option<String>,
    pub device_type: Option<String>,
    pub device_type_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    pub device_group_id: Option<Uuid>,
    pub status: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
    /// `online` while messages arrive; `offline` once nothing arrived for the device type's
    /// `offline_after_secs` (or `GITO_DEVICE_OFFLINE_AFTER`), and for a device never heard from.
    #[schema(pattern = "^(online|offline)$")]
    pub connectivity: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Keyed for Device {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "SDE11/JAX/UTILITIES/BOILER/OPT_G",
    "external_id": "SDE11/JAX/UTILITIES/BOILER/OPT_G",
    "device_type": "SDE11"
}))]
pub(super) struct NewDevice {
    #[schema(value_type = Name)]
    pub(super) name: String,
    #[schema(value_type = Option<ExternalId>)]
    pub(super) external_id: Option<String>,
    #[schema(value_type = Option<Name>)]
    pub(super) device_type: Option<String>,
    pub(super) device_type_id: Option<Uuid>,
    pub(super) organization_id: Option<Uuid>,
    pub(super) site_id: Option<Uuid>,
    pub(super) device_group_id: Option<Uuid>,
}

/// A new device's fields once checked: the one validation of the single and the batch create.
pub(super) struct CheckedDevice {
    pub(super) name: String,
    pub(super) external_id: Option<String>,
    pub(super) device_type: Option<String>,
    pub(super) device_type_id: Option<Uuid>,
    pub(super) organization_id: Option<Uuid>,
    pub(super) site_id: Option<Uuid>,
    pub(super) device_group_id: Option<Uuid>,
}

impl NewDevice {
    pub(super) fn check(self) -> Result<CheckedDevice, ApiError> {
        Ok(CheckedDevice {
            name: fields::text("name", &self.name, MAX_NAME_CHARS)?,
            external_id: fields::optional_text(
                "external_id",
                self.external_id.as_deref(),
                MAX_EXTERNAL_ID_CHARS,
            )?,
            device_type: fields::optional_text(
                "device_type",
                self.device_type.as_deref(),
                MAX_NAME_CHARS,
            )?,
            device_type_id: self.device_type_id,
            organization_id: self.organization_id,
            site_id: self.site_id,
            device_group_id: self.device_group_id,
        })
    }
}

/// Absent fields are kept; `null` clears a nullable one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "Boiler 7, plant A",
    "status": "maintenance",
    "device_type_id": "0192f0c4-0000-7000-8000-000000000030",
    "device_group_id": null
}))]
struct DevicePatch {
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(value_type = Option<Name>, nullable = false)]
    name: Option<String>,
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(pattern = "^(active|inactive|maintenance)$", nullable = false)]
    status: Option<String>,
    #[serde(default, deserialize_with = "fields::patch")]
    #[schema(value_type = Option<Name>)]
    device_type: Option<Option<String>>,
    #[serde(default, deserialize_with = "fields::patch")]
    device_type_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "fields::patch")]
    organization_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "fields::patch")]
    site_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "fields::patch")]
    device_group_id: Option<Option<Uuid>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeviceFilter {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
    device_type: Option<String>,
    device_type_id: Option<Uuid>,
    /// Only devices nobody has classified yet (no `device_type_id`).
    #[serde(default)]
    unassigned: bool,
    external_id: Option<String>,
    /// Only `online` or only `offline` devices.
    #[param(value_type = Option<String>, pattern = "^(online|offline)$")]
    connectivity: Option<Connectivity>,
    /// Only devices whose `external_id` matches this MQTT-style pattern (`+` one level, `#` the
    /// rest), e.g. `SDE11/+/UTILITIES/BOILER/+`; a level that is one space (an unescaped `+`
    /// after form decoding) is read as `+`.
    #[param(value_type = Option<ExternalId>)]
    pattern: Option<String>,
}

/// Create or find a device by external_id
///
/// Answers 201 with a new device, or 200 with the existing device, unchanged, when one with this
/// `external_id` already exists in the tenant (the request's other fields are then ignored): safe
/// to repeat and to race, never a duplicate. Without `external_id` every call creates a device.
/// A new device's `device_type_id`, `organization_id`, `site_id` and `device_group_id` must be
/// this tenant's, or the answer is 422 `invalid_reference`. Those it is not given come from the
/// tenant's classification rule of highest priority (ties: the oldest) whose pattern matches its
/// `external_id`, if any, in the same statement.
#[utoipa::path(post, path = "/tenants/{tenant_id}/devices", tag = "devices", params(TenantPath), request_body = NewDevice,
    responses((status = 201, description = "Created", body = Device),
        (status = 200, description = "A device with this external_id already exists: it is returned unchanged", body = Device)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewDevice>,
) -> Result<(StatusCode, Json<Device>), ApiError> {
    let new = body.check()?;
    // One statement, safe under concurrent calls: on a known external_id the no-op update
    // returns the existing row, and `xmax = 0` tells a fresh insert from it. What the request does
    // not give comes from the best matching classification rule.
    let row = sqlx::query_as!(
        Upserted,
        r#"WITH rule AS (
               SELECT device_type_id, organization_id, site_id, device_group_id
               FROM classification_rules
               WHERE tenant_id = $2 AND $4::text IS NOT NULL AND $4 ~ pattern_regex
               ORDER BY priority DESC, id
               LIMIT 1
           ),
           d AS (
               INSERT INTO devices (id, tenant_id, name, external_id, device_type, device_type_id,
                                    organization_id, site_id, device_group_id)
               SELECT $1, $2, $3, $4, $5, COALESCE($6, rule.device_type_id),
                      COALESCE($7, rule.organization_id), COALESCE($8, rule.site_id),
                      COALESCE($9, rule.device_group_id)
               FROM (VALUES (1)) AS one (x) LEFT JOIN rule ON true
               ON CONFLICT (tenant_id, external_id) DO UPDATE SET external_id = EXCLUDED.external_id
               RETURNING id, tenant_id, name, external_id, device_type, device_type_id,
                         organization_id, site_id, device_group_id, status, last_seen_at,
                         created_at, updated_at, (xmax = 0) AS created
           )
           SELECT d.id AS "id!", d.tenant_id AS "tenant_id!", d.name AS "name!", d.external_id,
                  d.device_type, d.device_type_id, d.organization_id, d.site_id, d.device_group_id,
                  d.status AS "status!", d.last_seen_at,
                  CASE WHEN c.check_at IS NULL THEN 'offline' ELSE 'online' END AS "connectivity!",
                  d.created_at AS "created_at!", d.updated_at AS "updated_at!",
                  d.created AS "created!"
           FROM d LEFT JOIN device_connectivity c ON c.device_id = d.id"#,
        Uuid::now_v7(),
        tenant_id,
        new.name,
        new.external_id,
        new.device_type,
        new.device_type_id,
        new.organization_id,
        new.site_id,
        new.device_group_id
    )
    .fetch_one(&state.pool)
    .await?;
    let status = if row.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(row.into())))
}

/// List devices
///
/// One page of the tenant's devices in creation order: pass `limit` (1–1000, default 100) and the
/// previous page's `next_cursor` as `cursor` for the next page. The filters combine: `device_type`
/// (the free-text label), `device_type_id`, `unassigned=true` (no `device_type_id` yet, whatever
/// the label) and `external_id`, each an exact match, `pattern`, an MQTT-style pattern over
/// the `external_id` (`+` one level, `#` the rest; 422 if malformed), and `connectivity`
/// (`online` or `offline`).
#[utoipa::path(get, path = "/tenants/{tenant_id}/devices", tag = "devices", params(TenantPath, DeviceFilter),
    responses((status = 200, description = "One page, oldest first", body = Page<Device>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(filter): Query<DeviceFilter>,
) -> Result<Json<Page<Device>>, ApiError> {
    let limit = page::limit(filter.limit)?;
    let pattern = filter
        .pattern
        .as_deref()
        .map(|p| TopicPattern::parse_query("pattern", p))
        .transpose()?;
    let rows = sqlx::query_as!(
        Device,
        r#"SELECT d.id, d.tenant_id, d.name, d.external_id, d.device_type, d.device_type_id,
                  d.organization_id, d.site_id, d.device_group_id, d.status, d.last_seen_at,
                  CASE WHEN c.check_at IS NULL THEN 'offline' ELSE 'online' END AS "connectivity!",
                  d.created_at, d.updated_at
           FROM devices d LEFT JOIN device_connectivity c ON c.device_id = d.id
           WHERE d.tenant_id = $1
             AND ($2::uuid IS NULL OR d.id > $2)
             AND ($3::text IS NULL OR d.device_type = $3)
             AND ($4::uuid IS NULL OR d.device_type_id = $4)
             AND (NOT $5 OR d.device_type_id IS NULL)
             AND ($6::text IS NULL OR d.external_id = $6)
             AND ($7::bool IS NULL OR (c.check_at IS NOT NULL) = $7)
             AND ($8::text IS NULL OR d.external_id ~ $8)
           ORDER BY d.id LIMIT $9"#,
        tenant_id,
        page::cursor(filter.cursor.as_deref())?,
        filter.device_type,
        filter.device_type_id,
        filter.unassigned,
        filter.external_id,
        filter.connectivity.map(|c| c == Connectivity::Online),
        pattern.as_ref().map(TopicPattern::to_regex),
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

/// Read a device
///
/// A device of another tenant is 404, exactly as if it did not exist.
#[utoipa::path(get, path = "/tenants/{tenant_id}/devices/{id}", tag = "devices", params(ItemPath),
    responses((status = 200, description = "The device", body = Device)))]
async fn read(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<Device>, ApiError> {
    sqlx::query_as!(
        Device,
        r#"SELECT d.id, d.tenant_id, d.name, d.external_id, d.device_type, d.device_type_id,
                  d.organization_id, d.site_id, d.device_group_id, d.status, d.last_seen_at,
                  CASE WHEN c.check_at IS NULL THEN 'offline' ELSE 'online' END AS "connectivity!",
                  d.created_at, d.updated_at
           FROM devices d LEFT JOIN device_connectivity c ON c.device_id = d.id
           WHERE d.tenant_id = $1 AND d.id = $2"#,
        tenant_id,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("device"))
}

/// Update or classify a device
///
/// Absent fields are kept; `null` clears `device_type`, `device_type_id`, `organization_id`,
/// `site_id` or `device_group_id`, while `null` for `name` or `status` is 422. Setting
/// `device_type_id` classifies the device: its type's `telemetry_schema` and the rules on that type
/// then apply (the free-text `device_type` classifies nothing). `status` is `active`, `inactive` or
/// `maintenance`; a reference that is not this tenant's is 422 `invalid_reference`.
#[utoipa::path(patch, path = "/tenants/{tenant_id}/devices/{id}", tag = "devices", params(ItemPath), request_body = DevicePatch,
    responses((status = 200, description = "The updated device", body = Device)))]
async fn update(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
    Json(body): Json<DevicePatch>,
) -> Result<Json<Device>, ApiError> {
    let name = fields::optional_text("name", body.name.as_deref(), MAX_NAME_CHARS)?;
    let device_type = match &body.device_type {
        Some(Some(t)) => Some(fields::text("device_type", t, MAX_NAME_CHARS)?),
        _ => None,
    };
    // A new type may have a shorter inactivity timeout: the sweeper then looks again at once.
    sqlx::query_as!(
        Device,
        r#"WITH d AS (
               UPDATE devices SET
                   name = COALESCE($3, name),
                   status = COALESCE($4, status),
                   device_type = CASE WHEN $5 THEN $6 ELSE device_type END,
                   device_type_id = CASE WHEN $7 THEN $8 ELSE device_type_id END,
                   organization_id = CASE WHEN $9 THEN $10 ELSE organization_id END,
                   site_id = CASE WHEN $11 THEN $12 ELSE site_id END,
                   device_group_id = CASE WHEN $13 THEN $14 ELSE device_group_id END,
                   updated_at = now()
               WHERE tenant_id = $1 AND id = $2
               RETURNING id, tenant_id, name, external_id, device_type, device_type_id,
                         organization_id, site_id, device_group_id, status, last_seen_at,
                         created_at, updated_at
           ), rearmed AS (
               UPDATE device_connectivity SET check_at = now()
               WHERE $7 AND device_id IN (SELECT id FROM d) AND check_at > now()
               RETURNING device_id, check_at
           )
           SELECT d.id AS "id!", d.tenant_id AS "tenant_id!", d.name AS "name!", d.external_id,
                  d.device_type, d.device_type_id, d.organization_id, d.site_id, d.device_group_id,
                  d.status AS "status!", d.last_seen_at,
                  CASE WHEN COALESCE(r.check_at, c.check_at) IS NULL THEN 'offline' ELSE 'online' END
                      AS "connectivity!",
                  d.created_at AS "created_at!", d.updated_at AS "updated_at!"
           FROM d LEFT JOIN device_connectivity c ON c.device_id = d.id
                  LEFT JOIN rearmed r ON r.device_id = d.id"#,
        tenant_id,
        id,
        name,
        body.status,
        body.device_type.is_some(),
        device_type,
        body.device_type_id.is_some(),
        body.device_type_id.flatten(),
        body.organization_id.is_some(),
        body.organization_id.flatten(),
        body.site_id.is_some(),
        body.site_id.flatten(),
        body.device_group_id.is_some(),
        body.device_group_id.flatten()
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("device"))
}

/// Delete a device
///
/// Answers 204. The device's telemetry, its alerts and the alert rules scoped to it (`device_id`)
/// are deleted with it.
#[utoipa::path(delete, path = "/tenants/{tenant_id}/devices/{id}", tag = "devices", params(ItemPath),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    // Waits, if need be, for a rollup writer's step (migration 019): never a deadlock with it.
    let deleted = sqlx::query!(
        "DELETE FROM devices WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .execute(&state.pool)
    .await?;
    deletion(deleted.rows_affected(), "device")
}

/// A device as returned by the idempotent insert, with whether it was new.
pub(super) struct Upserted {
    pub(super) id: Uuid,
    pub(super) tenant_id: Uuid,
    pub(super) name: String,
    pub(super) external_id: Option<String>,
    pub(super) device_type: Option<String>,
    pub(super) device_type_id: Option<Uuid>,
    pub(super) organization_id: Option<Uuid>,
    pub(super) site_id: Option<Uuid>,
    pub(super) device_group_id: Option<Uuid>,
    pub(super) status: String,
    pub(super) last_seen_at: Option<OffsetDateTime>,
    pub(super) connectivity: String,
    pub(super) created_at: OffsetDateTime,
    pub(super) updated_at: OffsetDateTime,
    pub(super) created: bool,
}

impl From<Upserted> for Device {
    fn from(u: Upserted) -> Self {
        Device {
            id: u.id,
            tenant_id: u.tenant_id,
            name: u.name,
            external_id: u.external_id,
            device_type: u.device_type,
            device_type_id: u.device_type_id,
            organization_id: u.organization_id,
            site_id: u.site_id,
            device_group_id: u.device_group_id,
            status: u.status,
            last_seen_at: u.last_seen_at,
            connectivity: u.connectivity,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}
