//! A device type's discovered metrics: what its devices have actually sent (recorded by the
//! processor in `device_metrics`) set beside its `telemetry_schema`, so that an operator can adopt
//! what is sent and notice what never is.

use axum::extract::State;
use serde::Serialize;
use sqlx::types::Json as Jsonb;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, Path};
use super::openapi::ItemPath;
use crate::domain::telemetry_schema::TelemetrySchema;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read))
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "sent_not_in_schema": ["pressure"],
    "in_schema_never_sent": ["CHIMNEY_TEMP"],
    "in_schema_and_sent": ["temp"]
}))]
pub struct DiscoveredMetrics {
    /// Sent by a device of this type, missing from the schema: candidates to adopt.
    pub sent_not_in_schema: Vec<String>,
    /// In the schema, never sent by any device of this type.
    pub in_schema_never_sent: Vec<String>,
    pub in_schema_and_sent: Vec<String>,
}

/// Discovered metrics of a device type
///
/// The metric names ever sent by the devices now classified with this type (the processor records
/// each device's metrics, whatever its type), compared with the type's `telemetry_schema`.
/// Each list is sorted. A device type of another tenant is 404.
#[utoipa::path(get, path = "/tenants/{tenant_id}/device-types/{id}/discovered-metrics", tag = "device types", params(ItemPath),
    responses((status = 200, description = "The three lists", body = DiscoveredMetrics)))]
async fn read(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<DiscoveredMetrics>, ApiError> {
    let schema = sqlx::query_scalar!(
        r#"SELECT telemetry_schema AS "schema: Jsonb<TelemetrySchema>"
           FROM device_types WHERE tenant_id = $1 AND id = $2"#,
        tenant_id,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("device type"))?;
    let sent = sqlx::query_scalar!(
        r#"SELECT DISTINCT m.metric AS "metric!"
           FROM devices d JOIN device_metrics m ON m.device_id = d.id
           WHERE d.tenant_id = $1 AND d.device_type_id = $2
           ORDER BY 1"#,
        tenant_id,
        id
    )
    .fetch_all(&state.pool)
    .await?;
    let listed = schema.map(|s| s.0.0).unwrap_or_default();
    let (in_schema_and_sent, sent_not_in_schema): (Vec<String>, Vec<String>) =
        sent.into_iter().partition(|m| listed.contains_key(m));
    let in_schema_never_sent = listed
        .into_keys()
        .filter(|m| !in_schema_and_sent.contains(m))
        .collect();
    Ok(Json(DiscoveredMetrics {
        sent_not_in_schema,
        in_schema_never_sent,
        in_schema_and_sent,
    }))
}
