//! Alert rules: "open an alert when METRIC OPERATOR THRESHOLD", for every device of the tenant or
//! one scope (a device, a device type, or a device-type string as the bridge sets it).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::{ApiError, deletion, in_use};
use super::extract::{Json, Path, Query};
use super::fields::{self, MAX_NAME_CHARS};
use super::openapi::{ItemPath, Name, TenantPath};
use super::page::{Keyed, Page, PageParams};
use super::{AppState, tenants};
use crate::domain::alerts::{self, AlertRule};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
}

impl Keyed for AlertRule {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "Chimney too hot",
    "metric": "CHIMNEY_TEMP",
    "operator": ">",
    "threshold": 600.0,
    "device_type": "SDE11"
}))]
struct NewRule {
    #[schema(value_type = Name)]
    name: String,
    #[schema(value_type = Name)]
    metric: String,
    #[schema(pattern = "^(>|>=|<|<=|==|!=)$")]
    operator: String,
    threshold: f64,
    device_id: Option<Uuid>,
    device_type_id: Option<Uuid>,
    #[schema(value_type = Option<Name>)]
    device_type: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "operator": ">=", "threshold": 580.0 }))]
struct RulePatch {
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(value_type = Option<Name>, nullable = false)]
    name: Option<String>,
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(pattern = "^(>|>=|<|<=|==|!=)$", nullable = false)]
    operator: Option<String>,
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(nullable = false)]
    threshold: Option<f64>,
}

fn operator(op: &str) -> Result<String, ApiError> {
    Ok(alerts::operator(op)?.to_owned())
}

/// Create an alert rule
///
/// The processor opens an alert for a device when a numeric value of `metric` compared to
/// `threshold` by `operator` (`>`, `>=`, `<`, `<=`, `==`, `!=`) becomes true, and resolves it when
/// the comparison turns false. The rule watches every device of the tenant, or only one scope:
/// `device_id`, `device_type_id` or `device_type` (the devices' free-text label); two scopes, an
/// unknown operator, a threshold that is not finite or a reference that is not this tenant's are
/// 422. Answers 201.
#[utoipa::path(post, path = "/tenants/{tenant_id}/alert-rules", tag = "alerts", params(TenantPath), request_body = NewRule,
    responses((status = 201, description = "Created", body = AlertRule)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewRule>,
) -> Result<(StatusCode, Json<AlertRule>), ApiError> {
    let name = fields::text("name", &body.name, MAX_NAME_CHARS)?;
    let metric = fields::text("metric", &body.metric, MAX_NAME_CHARS)?;
    let device_type =
        fields::optional_text("device_type", body.device_type.as_deref(), MAX_NAME_CHARS)?;
    let scopes = [
        body.device_id.is_some(),
        body.device_type_id.is_some(),
        device_type.is_some(),
    ];
    if scopes.iter().filter(|s| **s).count() > 1 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "give at most one of device_id, device_type_id, device_type",
        ));
    }
    let rule = sqlx::query_as!(
        AlertRule,
        "INSERT INTO alert_rules (id, tenant_id, name, metric, operator, threshold, device_id, device_type_id, device_type)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING id, tenant_id, name, metric, operator, threshold, device_id, device_type_id,
                   device_type, created_at, updated_at",
        Uuid::now_v7(),
        tenant_id,
        name,
        metric,
        operator(&body.operator)?,
        finite(body.threshold)?,
        body.device_id,
        body.device_type_id,
        device_type
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(rule)))
}

fn finite(threshold: f64) -> Result<f64, ApiError> {
    if threshold.is_finite() {
        Ok(threshold)
    } else {
        Err(ApiError::unprocessable(
            "invalid_field",
            "threshold must be a finite number",
        ))
    }
}

/// List alert rules
///
/// One page of the tenant's alert rules in creation order: pass `limit` (1–1000, default 100) and
/// the previous page's `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/tenants/{tenant_id}/alert-rules", tag = "alerts", params(TenantPath, PageParams),
    responses((status = 200, description = "One page, oldest first", body = Page<AlertRule>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<AlertRule>>, ApiError> {
    let limit = page.limit()?;
    let rows = sqlx::query_as!(
        AlertRule,
        "SELECT id, tenant_id, name, metric, operator, threshold, device_id, device_type_id,
                device_type, created_at, updated_at
         FROM alert_rules WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
        tenant_id,
        page.after()?,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

/// Read an alert rule
///
/// An alert rule of another tenant is 404, exactly as if it did not exist.
#[utoipa::path(get, path = "/tenants/{tenant_id}/alert-rules/{id}", tag = "alerts", params(ItemPath),
    responses((status = 200, description = "The alert rule", body = AlertRule)))]
async fn read(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<AlertRule>, ApiError> {
    sqlx::query_as!(
        AlertRule,
        "SELECT id, tenant_id, name, metric, operator, threshold, device_id, device_type_id,
                device_type, created_at, updated_at
         FROM alert_rules WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("alert rule"))
}

/// Update an alert rule
///
/// Changes `name`, `operator` or `threshold`; absent fields are kept and `null` is 422. The metric
/// and the scope cannot change (any other field is 422): create another rule instead. Answers 200
/// with the rule as stored.
#[utoipa::path(patch, path = "/tenants/{tenant_id}/alert-rules/{id}", tag = "alerts", params(ItemPath), request_body = RulePatch,
    responses((status = 200, description = "The updated alert rule", body = AlertRule)))]
async fn update(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
    Json(body): Json<RulePatch>,
) -> Result<Json<AlertRule>, ApiError> {
    let name = fields::optional_text("name", body.name.as_deref(), MAX_NAME_CHARS)?;
    let op = body.operator.as_deref().map(operator).transpose()?;
    let threshold = body.threshold.map(finite).transpose()?;
    sqlx::query_as!(
        AlertRule,
        "UPDATE alert_rules SET name = COALESCE($3, name), operator = COALESCE($4, operator),
                threshold = COALESCE($5, threshold), updated_at = now()
         WHERE tenant_id = $1 AND id = $2
         RETURNING id, tenant_id, name, metric, operator, threshold, device_id, device_type_id,
                   device_type, created_at, updated_at",
        tenant_id,
        id,
        name,
        op,
        threshold
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("alert rule"))
}

/// Delete an alert rule
///
/// Answers 204; the alerts the rule raised are deleted with it.
#[utoipa::path(delete, path = "/tenants/{tenant_id}/alert-rules/{id}", tag = "alerts", params(ItemPath),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query!(
        "DELETE FROM alert_rules WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .execute(&state.pool)
    .await
    .map_err(in_use("alert rule"))?;
    deletion(deleted.rows_affected(), "alert rule")
}
