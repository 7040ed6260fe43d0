//! Creating or finding many devices by `external_id` in one call and one statement, so that a
//! bridge discovering a large fleet pays one round trip per batch instead of one per device. It is
//! the single create of devices.rs applied to a list: the same validation, the same classification
//! rule in the same statement, the same idempotence under races.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::AppState;
use super::devices::{CheckedDevice, Device, NewDevice, Upserted};
use super::error::ApiError;
use super::extract::{Json, Path};
use super::openapi::{ExternalId, Name, TenantPath};

/// The most devices one batch may hold.
pub const MAX_BATCH_DEVICES: usize = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "devices": [
        {"external_id": "SDE11/JAX/UTILITIES/BOILER/OPT_G"},
        {"external_id": "SDE11/JAX/UTILITIES/BOILER/OPT_H", "name": "Boiler H", "device_type": "SDE11"}
    ]
}))]
struct NewDevices {
    /// 1 to 1000 devices.
    #[schema(min_items = 1, max_items = 1000)]
    devices: Vec<BatchItem>,
}

/// One device of a batch: the fields of the single create, with `external_id` required and
/// `name` defaulting to the `external_id`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    #[schema(value_type = ExternalId)]
    external_id: String,
    /// Default: the `external_id` (give one when the `external_id` is longer than a name may be).
    #[schema(value_type = Option<Name>)]
    name: Option<String>,
    #[schema(value_type = Option<Name>)]
    device_type: Option<String>,
    device_type_id: Option<Uuid>,
    organization_id: Option<Uuid>,
    site_id: Option<Uuid>,
    device_group_id: Option<Uuid>,
}

impl BatchItem {
    /// Checked exactly as the single create checks its body.
    fn check(self) -> Result<CheckedDevice, ApiError> {
        NewDevice {
            name: self.name.unwrap_or_else(|| self.external_id.clone()),
            external_id: Some(self.external_id),
            device_type: self.device_type,
            device_type_id: self.device_type_id,
            organization_id: self.organization_id,
            site_id: self.site_id,
            device_group_id: self.device_group_id,
        }
        .check()
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct BatchDevices {
    /// One per requested device, in request order.
    devices: Vec<BatchDevice>,
}

#[derive(Debug, Serialize, ToSchema)]
struct BatchDevice {
    #[serde(flatten)]
    device: Device,
    /// Whether this call created the device (false: it existed, and is returned unchanged).
    created: bool,
}

/// Create or find devices by external_id, in bulk
///
/// The single create (`POST /tenants/{tenant_id}/devices`) for 1 to 1000 devices in one statement:
/// each device with this `external_id` that exists in the tenant is returned unchanged with
/// `created: false` (the item's other fields are then ignored), each other one is created with
/// `created: true`, the tenant's best matching classification rule filling what the item does not
/// give. Safe to repeat and to race, never a duplicate. The answer holds one device per item, in
/// request order. The same `external_id` twice in one batch is one device: both items answer it,
/// the first one's fields create it, and only the first can say `created: true`.
///
/// Each item is checked as the single create checks its body; one bad item (or a reference to
/// another tenant's device type, organization, site or group, 422 `invalid_reference`) refuses the
/// whole batch and creates nothing. An empty batch or one of more than 1000 devices is 422
/// `invalid_field`; a body larger than `GITO_MAX_BODY_BYTES` is 413 before it is read.
#[utoipa::path(post, path = "/tenants/{tenant_id}/devices/batch", tag = "devices", params(TenantPath), request_body = NewDevices,
    responses((status = 200, description = "Each requested device, in request order", body = BatchDevices)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewDevices>,
) -> Result<Json<BatchDevices>, ApiError> {
    let count = body.devices.len();
    if count == 0 || count > MAX_BATCH_DEVICES {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("devices: give 1 to {MAX_BATCH_DEVICES} devices, not {count}"),
        ));
    }
    let mut columns = Columns::with_capacity(count);
    for (index, item) in body.devices.into_iter().enumerate() {
        let checked = item.check().map_err(|e| match e {
            ApiError::Unprocessable { code, message } => {
                ApiError::unprocessable(code, format!("devices[{index}]: {message}"))
            }
            other => other,
        })?;
        columns.push(checked);
    }
    // As the single create, in one statement: the no-op update on a known external_id returns
    // the existing row and `xmax = 0` tells a fresh insert from it. Duplicates in the batch are
    // inserted once (ON CONFLICT may not touch a row twice), in external_id order so that two
    // batches racing over the same devices lock them in the same order and cannot deadlock.
    let rows = sqlx::query_as!(
        Upserted,
        r#"WITH input AS (
               SELECT *
               FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::uuid[],
                           $8::uuid[], $9::uuid[])
                    WITH ORDINALITY AS i (id, name, external_id, device_type, device_type_id,
                                          organization_id, site_id, device_group_id, ord)
           ),
           first AS (
               SELECT DISTINCT ON (external_id) * FROM input ORDER BY external_id, ord
           ),
           d AS (
               INSERT INTO devices (id, tenant_id, name, external_id, device_type, device_type_id,
                                    organization_id, site_id, device_group_id)
               SELECT f.id, $1, f.name, f.external_id, f.device_type,
                      COALESCE(f.device_type_id, rule.device_type_id),
                      COALESCE(f.organization_id, rule.organization_id),
                      COALESCE(f.site_id, rule.site_id),
                      COALESCE(f.device_group_id, rule.device_group_id)
               FROM first f LEFT JOIN LATERAL (
                   SELECT r.device_type_id, r.organization_id, r.site_id, r.device_group_id
                   FROM classification_rules r
                   WHERE r.tenant_id = $1 AND f.external_id ~ r.pattern_regex
                   ORDER BY r.priority DESC, r.id
                   LIMIT 1
               ) rule ON true
               ORDER BY f.external_id
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
                  (d.created AND i.ord = f.ord) AS "created!"
           FROM input i
                JOIN first f ON f.external_id = i.external_id
                JOIN d ON d.external_id = i.external_id
                LEFT JOIN device_connectivity c ON c.device_id = d.id
           ORDER BY i.ord"#,
        tenant_id,
        &columns.id,
        &columns.name,
        &columns.external_id,
        &columns.device_type as &[Option<String>],
        &columns.device_type_id as &[Option<Uuid>],
        &columns.organization_id as &[Option<Uuid>],
        &columns.site_id as &[Option<Uuid>],
        &columns.device_group_id as &[Option<Uuid>]
    )
    .fetch_all(&state.pool)
    .await?;
    let devices = rows
        .into_iter()
        .map(|row| {
            let created = row.created;
            BatchDevice {
                device: row.into(),
                created,
            }
        })
        .collect();
    Ok(Json(BatchDevices { devices }))
}

/// The checked items as the statement's parallel arrays.
struct Columns {
    id: Vec<Uuid>,
    name: Vec<String>,
    external_id: Vec<String>,
    device_type: Vec<Option<String>>,
    device_type_id: Vec<Option<Uuid>>,
    organization_id: Vec<Option<Uuid>>,
    site_id: Vec<Option<Uuid>>,
    device_group_id: Vec<Option<Uuid>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Columns {
            id: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            external_id: Vec::with_capacity(n),
            device_type: Vec::with_capacity(n),
            device_type_id: Vec::with_capacity(n),
            organization_id: Vec::with_capacity(n),
            site_id: Vec::with_capacity(n),
            device_group_id: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, device: CheckedDevice) {
        self.id.push(Uuid::now_v7());
        self.name.push(device.name);
        // A batch item always has one: `BatchItem::check` passes it.
        self.external_id
            .push(device.external_id.unwrap_or_default());
        self.device_type.push(device.device_type);
        self.device_type_id.push(device.device_type_id);
        self.organization_id.push(device.organization_id);
        self.site_id.push(device.site_id);
        self.device_group_id.push(device.device_group_id);
    }
}
