//! The classification inbox's groups: devices by topic shape and by the set of metrics they send,
//! computed by PostgreSQL (one pass over the tenant's devices, nothing loaded into the API).
//!
//! A device's shape is its `external_id` with the levels that name an instance replaced by `+`:
//! a level (after the first, which names the site or vendor) that contains a digit, and any level
//! that contains `+` or `#`. `SDE11/B3/UTILITIES/BOILER/T1` has the shape
//! `SDE11/+/UTILITIES/BOILER/+`. A shape is a valid pattern that matches every device of its group,
//! so it can be used as is for the device list's `pattern` filter, `classify` or a rule.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::openapi::TenantPath;
use super::page;
use super::{AppState, tenants};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "shape": "SDE11/+/UTILITIES/BOILER/+",
    "metrics": ["pressure", "temp"],
    "count": 214,
    "last_seen_at": "2026-01-05T10:00:00Z",
    "example_external_id": "SDE11/B3/UTILITIES/BOILER/T1"
}))]
pub struct DeviceShape {
    /// The devices' `external_id` with their instance levels as `+`.
    pub shape: String,
    /// The metrics these devices have sent (each device exactly this set), sorted.
    pub metrics: Vec<String>,
    pub count: i64,
    /// The newest `last_seen_at` of these devices.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
    /// The first of their `external_id`s in sort order.
    pub example_external_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShapePage {
    pub items: Vec<DeviceShape>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ShapeFilter {
    /// Groups per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only devices with no `device_type_id` yet.
    #[serde(default)]
    unassigned: bool,
}

/// Group devices by topic shape and metrics
///
/// One page of groups of the tenant's devices that have an `external_id`, by shape (the
/// `external_id` with each level after the first that contains a digit, and each level containing
/// `+` or `#`, replaced by `+`) and by the sorted set of metrics they have sent (empty before the
/// first message), in order of shape then metrics. `unassigned=true` counts only devices with no
/// `device_type_id`. Pass `limit` (1–1000, default 100) and the previous page's `next_cursor` as
/// `cursor` for the next page.
#[utoipa::path(get, path = "/tenants/{tenant_id}/device-shapes", tag = "classification", params(TenantPath, ShapeFilter),
    responses((status = 200, description = "One page of groups", body = ShapePage)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(filter): Query<ShapeFilter>,
) -> Result<Json<ShapePage>, ApiError> {
    let limit = page::limit(filter.limit)?;
    let after: Option<(String, Vec<String>)> = filter
        .cursor
        .as_deref()
        .map(|c| {
            serde_json::from_str(c).map_err(|_| {
                ApiError::bad_request("invalid_query", "cursor is not one this API returned")
            })
        })
        .transpose()?;
    let (after_shape, after_metrics) = after.unzip();
    let mut rows = sqlx::query_as!(
        DeviceShape,
        r#"WITH grouped AS (
               -- The first level becomes `+` if it has `+` or `#`, every later level if it has
               -- a digit, `+` or `#` (a match cannot cross a `/`, so it is the whole level).
               SELECT CASE WHEN strpos(d.external_id, '/') = 0
                           THEN regexp_replace(d.external_id, '^.*[+#].*$', '+')
                           ELSE regexp_replace(split_part(d.external_id, '/', 1), '^.*[+#].*$', '+')
                                || '/' || regexp_replace(substr(d.external_id, strpos(d.external_id, '/') + 1),
                                                         '[^/]*[0-9+#][^/]*', '+', 'g')
                      END AS shape,
                      ARRAY(SELECT m.metric FROM device_metrics m WHERE m.device_id = d.id
                            ORDER BY m.metric) AS metrics,
                      d.external_id, d.last_seen_at
               FROM devices d
               WHERE d.tenant_id = $1 AND d.external_id IS NOT NULL
                 AND (NOT $2 OR d.device_type_id IS NULL)
           )
           SELECT shape AS "shape!", metrics AS "metrics!", count(*) AS "count!",
                  max(last_seen_at) AS last_seen_at, min(external_id) AS "example_external_id!"
           FROM grouped
           GROUP BY shape, metrics
           HAVING $3::text IS NULL OR (shape, metrics) > ($3, $4::text[])
           ORDER BY shape, metrics
           LIMIT $5"#,
        tenant_id,
        filter.unassigned,
        after_shape,
        after_metrics.as_deref(),
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    if rows.is_empty() {
        tenants::ensure_exists(&state.pool, tenant_id).await?;
    }
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last())
        .flatten()
        .map(|last| serde_json::json!([last.shape, last.metrics]).to_string());
    Ok(Json(ShapePage {
        items: rows,
        next_cursor,
    }))
}
