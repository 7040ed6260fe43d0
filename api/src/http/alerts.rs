//! Alerts the processor opened and resolved; operators list and acknowledge them.

use axum::extract::State;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::openapi::{ItemPath, TenantPath};
use super::page::{self, Keyed, Page};
use super::{AppState, tenants};
use crate::domain::alerts::Alert;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(acknowledge))
}

impl Keyed for Alert {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AlertFilter {
    /// `open` (unresolved, unacknowledged), `acknowledged` or `resolved`.
    state: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    cursor: Option<String>,
}

/// List alerts
///
/// One page of the tenant's alerts in creation order, all or only those in `state` `open`,
/// `acknowledged` or `resolved` (any other state is 400): pass `limit` (1–1000, default 100) and
/// the previous page's `next_cursor` as `cursor` for the next page. Alerts are opened and resolved
/// by the processor, as the tenant's alert rules say.
#[utoipa::path(get, path = "/tenants/{tenant_id}/alerts", tag = "alerts", params(TenantPath, AlertFilter),
    responses((status = 200, description = "One page, oldest first", body = Page<Alert>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(filter): Query<AlertFilter>,
) -> Result<Json<Page<Alert>>, ApiError> {
    if let Some(s) = &filter.state
        && !["open", "acknowledged", "resolved"].contains(&s.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "state must be open, acknowledged or resolved",
        ));
    }
    let limit = page::limit(filter.limit)?;
    let rows = sqlx::query_as!(
        Alert,
        "SELECT id, tenant_id, rule_id, device_id, value, state, opened_at, acknowledged_at, resolved_at
         FROM alerts
         WHERE tenant_id = $1 AND ($2::text IS NULL OR state = $2) AND ($3::uuid IS NULL OR id > $3)
         ORDER BY id LIMIT $4",
        tenant_id,
        filter.state,
        page::cursor(filter.cursor.as_deref())?,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

/// Acknowledge an alert
///
/// An open alert becomes `acknowledged`, with `acknowledged_at` set; acknowledging it again is
/// harmless and answers 200 with the alert unchanged. A resolved alert is 409. Takes no body.
#[utoipa::path(post, path = "/tenants/{tenant_id}/alerts/{id}/ack", tag = "alerts", params(ItemPath),
    responses((status = 200, description = "The alert, acknowledged (again: unchanged)", body = Alert)))]
async fn acknowledge(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<Alert>, ApiError> {
    let alert = sqlx::query_as!(
        Alert,
        "UPDATE alerts SET state = CASE WHEN state = 'open' THEN 'acknowledged' ELSE state END,
                acknowledged_at = COALESCE(acknowledged_at, CASE WHEN state = 'open' THEN now() END)
         WHERE tenant_id = $1 AND id = $2
         RETURNING id, tenant_id, rule_id, device_id, value, state, opened_at, acknowledged_at, resolved_at",
        tenant_id,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("alert"))?;
    if alert.state == "resolved" {
        return Err(ApiError::Conflict("the alert is already resolved".into()));
    }
    Ok(Json(alert))
}
