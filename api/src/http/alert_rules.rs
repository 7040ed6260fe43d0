//! Alert rules: "open an alert when METRIC OPERATOR THRESHOLD" (kind `metric`) or "when a device
//! has been offline for N seconds" (kind `offline`), for every device of the tenant or one scope
//! (a device, a device type, or a device-type string as the bridge sets it); or "when the tenant
//! sent no telemetry at all for N seconds" (kind `stale`, the tenant as a whole).

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
    /// `metric` (the default), `offline` or `stale`.
    #[schema(pattern = "^(metric|offline|stale)$")]
    kind: Option<String>,
    /// Kind `metric`: required; else absent.
    #[schema(value_type = Option<Name>)]
    metric: Option<String>,
    #[schema(pattern = "^(>|>=|<|<=|==|!=)$")]
    operator: Option<String>,
    threshold: Option<f64>,
    /// Kinds `offline` and `stale`: required, 1 to 2592000; else absent.
    #[schema(minimum = 1, maximum = 2592000)]
    after_secs: Option<i64>,
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
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(nullable = false, minimum = 1, maximum = 2592000)]
    after_secs: Option<i64>,
}

fn operator(op: &str) -> Result<String, ApiError> {
    Ok(alerts::operator(op)?.to_owned())
}

/// Create an alert rule
///
/// Kind `metric` (the default): the processor opens an alert for a device when a numeric value of
/// `metric` compared to `threshold` by `operator` (`>`, `>=`, `<`, `<=`, `==`, `!=`) becomes true,
/// and resolves it when the comparison turns false. Kind `offline`: an alert opens for a device
/// that has been `offline` for `after_secs` seconds (`value`: seconds offline by then) and
/// resolves with its next message; a device never heard from raises none. Kind `stale`: one alert
/// for the tenant (`device_id` null) when none of its devices sent anything for `after_secs`
/// (counted from the rule's creation if none ever did; `value`: seconds without telemetry), resolved
/// within a second of telemetry flowing again. `metric` and `offline` rules watch every device of
/// the tenant, or only one scope: `device_id`, `device_type_id` or `device_type` (the devices'
/// free-text label); `stale` rules take none. An unknown kind, a field the kind does not take or
/// lacks, two scopes, an unknown operator, a threshold that is not finite, `after_secs` outside
/// 1–2592000 or a reference that is not this tenant's are 422. Answers 201.
#[utoipa::path(post, path = "/tenants/{tenant_id}/alert-rules", tag = "alerts", params(TenantPath), request_body = NewRule,
    responses((status = 201, description = "Created", body = AlertRule)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewRule>,
) -> Result<(StatusCode, Json<AlertRule>), ApiError> {
    let name = fields::text("name", &body.name, MAX_NAME_CHARS)?;
    let device_type =
        fields::optional_text("device_type", body.device_type.as_deref(), MAX_NAME_CHARS)?;
    let scopes = [
        body.device_id.is_some(),
        body.device_type_id.is_some(),
        device_type.is_some(),
    ];
    let scoped = scopes.iter().filter(|s| **s).count();
    if scoped > 1 {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "give at most one of device_id, device_type_id, device_type",
        ));
    }
    let kind = alerts::kind(body.kind.as_deref().unwrap_or("metric"))?;
    let Condition {
        metric,
        operator: op,
        threshold,
        after_secs,
    } = condition(kind, &body, scoped)?;
    let rule = sqlx::query_as!(
        AlertRule,
        "INSERT INTO alert_rules (id, tenant_id, name, kind, metric, operator, threshold, after_secs,
                                  device_id, device_type_id, device_type)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING id, tenant_id, name, kind, metric, operator, threshold, after_secs, device_id,
                   device_type_id, device_type, created_at, updated_at",
        Uuid::now_v7(),
        tenant_id,
        name,
        kind,
        metric,
        op,
        threshold,
        after_secs,
        body.device_id,
        body.device_type_id,
        device_type
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(rule)))
}

/// What a new rule compares, by kind: `metric`, `operator` and `threshold` for a metric rule,
/// `after_secs` for the others; anything else given is 422.
#[derive(Debug, Default)]
struct Condition {
    metric: Option<String>,
    operator: Option<String>,
    threshold: Option<f64>,
    after_secs: Option<i32>,
}

fn condition(kind: &str, body: &NewRule, scoped: usize) -> Result<Condition, ApiError> {
    if kind == "metric" {
        let missing = |field: &str| {
            ApiError::unprocessable("invalid_field", format!("a metric rule needs {field}"))
        };
        if body.after_secs.is_some() {
            return Err(ApiError::unprocessable(
                "invalid_field",
                "after_secs is for rules of kind offline or stale",
            ));
        }
        let metric = body.metric.as_deref().ok_or_else(|| missing("metric"))?;
        let op = body
            .operator
            .as_deref()
            .ok_or_else(|| missing("operator"))?;
        let threshold = body.threshold.ok_or_else(|| missing("threshold"))?;
        Ok(Condition {
            metric: Some(fields::text("metric", metric, MAX_NAME_CHARS)?),
            operator: Some(operator(op)?),
            threshold: Some(finite(threshold)?),
            after_secs: None,
        })
    } else {
        if body.metric.is_some() || body.operator.is_some() || body.threshold.is_some() {
            return Err(ApiError::unprocessable(
                "invalid_field",
                format!("a rule of kind {kind} takes no metric, operator or threshold"),
            ));
        }
        if kind == "stale" && scoped > 0 {
            return Err(ApiError::unprocessable(
                "invalid_field",
                "a rule of kind stale watches the whole tenant: no device_id, device_type_id or device_type",
            ));
        }
        let after = body.after_secs.ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_field",
                format!("a rule of kind {kind} needs after_secs"),
            )
        })?;
        Ok(Condition {
            after_secs: Some(alerts::seconds("after_secs", after)?),
            ..Condition::default()
        })
    }
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
        "SELECT id, tenant_id, name, kind, metric, operator, threshold, after_secs, device_id,
                device_type_id, device_type, created_at, updated_at
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
        "SELECT id, tenant_id, name, kind, metric, operator, threshold, after_secs, device_id,
                device_type_id, device_type, created_at, updated_at
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
/// Changes `name`, and `operator` or `threshold` of a `metric` rule, `after_secs` of an `offline` or
/// `stale` rule; absent fields are kept and `null` is 422, as is a field the rule's kind does not
/// take. The kind, the metric and the scope cannot change (any other field is 422): create another
/// rule instead. Answers 200 with the rule as stored.
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
    let after_secs = body
        .after_secs
        .map(|s| alerts::seconds("after_secs", s))
        .transpose()?;
    // The kind check is in the statement, so that a rule of another kind is never half-updated.
    let row = sqlx::query!(
        r#"WITH rule AS (SELECT id, kind FROM alert_rules WHERE tenant_id = $1 AND id = $2),
                updated AS (
                    UPDATE alert_rules r SET name = COALESCE($3, r.name),
                        operator = COALESCE($4, r.operator),
                        threshold = COALESCE($5, r.threshold),
                        after_secs = COALESCE($6, r.after_secs), updated_at = now()
                    FROM rule
                    WHERE r.id = rule.id
                      AND CASE WHEN rule.kind = 'metric' THEN $6::int IS NULL
                               ELSE $4::text IS NULL AND $5::float8 IS NULL END
                    RETURNING r.id
                )
           SELECT rule.kind, EXISTS (SELECT 1 FROM updated) AS "updated!" FROM rule"#,
        tenant_id,
        id,
        name,
        op,
        threshold,
        after_secs
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(ApiError::NotFound("alert rule"))?;
    if !row.updated {
        let fields = if row.kind == "metric" {
            "after_secs"
        } else {
            "operator or threshold"
        };
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("a rule of kind {} takes no {fields}", row.kind),
        ));
    }
    read(State(state), Path((tenant_id, id))).await
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
