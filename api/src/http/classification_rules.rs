//! Classification rules: "a device whose `external_id` matches PATTERN gets this type and/or place
//! in the hierarchy". The API applies them when it creates a device (devices.rs, in the same
//! statement as the idempotent create) and, on demand, to existing devices (`apply`, which
//! classify.rs carries out). A rule only fills what a device lacks.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::classify::{Change, Classified, Targets, pattern, run};
use super::error::{ApiError, deletion};
use super::extract::{Json, Path, Query};
use super::fields;
use super::openapi::{ExternalId, ItemPath, TenantPath};
use super::page::{Keyed, Page, PageParams};
use super::{AppState, tenants};
use crate::domain::topic_pattern::TopicPattern;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read, update, remove))
        .routes(routes!(apply))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassificationRule {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// MQTT-style over the device's `external_id`: `+` one level, `#` the rest (last level only).
    pub pattern: String,
    pub device_type_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    pub device_group_id: Option<Uuid>,
    /// The highest wins; ties go to the oldest rule.
    pub priority: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Keyed for ClassificationRule {
    fn key(&self) -> Uuid {
        self.id
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "pattern": "SDE11/+/UTILITIES/BOILER/+",
    "device_type_id": "0192f0c4-0000-7000-8000-000000000030",
    "priority": 10
}))]
struct NewClassificationRule {
    #[schema(value_type = ExternalId)]
    pattern: String,
    device_type_id: Option<Uuid>,
    organization_id: Option<Uuid>,
    site_id: Option<Uuid>,
    device_group_id: Option<Uuid>,
    /// Default 0.
    priority: Option<i32>,
}

/// Absent fields are kept; `null` clears a target (at least one must remain).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "priority": 20, "site_id": null }))]
struct ClassificationRulePatch {
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(value_type = Option<ExternalId>, nullable = false)]
    pattern: Option<String>,
    #[serde(default, deserialize_with = "fields::patch")]
    device_type_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "fields::patch")]
    organization_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "fields::patch")]
    site_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "fields::patch")]
    device_group_id: Option<Option<Uuid>>,
    #[serde(default, deserialize_with = "fields::not_null")]
    #[schema(nullable = false)]
    priority: Option<i32>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({ "dry_run": true }))]
struct ApplyRule {
    /// Only answer which devices would change (default false: change them).
    #[serde(default)]
    dry_run: bool,
}

/// Create a classification rule
///
/// `pattern` is MQTT-style over the device's `external_id`: `+` matches one level, `#` (last level
/// only) the rest, including nothing; every other character matches itself (a pattern with `+` or
/// `#` inside a level is 422). At least one target is required, and each must be this tenant's
/// (else 422 `invalid_reference`). From now on, a device created with a matching `external_id`
/// (as gito-bridge creates them) gets the targets of the highest-`priority` matching rule (ties:
/// the oldest rule) that it was not given itself. Existing devices change only with `apply`.
#[utoipa::path(post, path = "/tenants/{tenant_id}/classification-rules", tag = "classification", params(TenantPath), request_body = NewClassificationRule,
    responses((status = 201, description = "Created", body = ClassificationRule)))]
async fn create(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Json(body): Json<NewClassificationRule>,
) -> Result<(StatusCode, Json<ClassificationRule>), ApiError> {
    let pattern = pattern(&body.pattern)?;
    Targets {
        device_type_id: body.device_type_id,
        organization_id: body.organization_id,
        site_id: body.site_id,
        device_group_id: body.device_group_id,
    }
    .require_one()?;
    let rule = sqlx::query_as!(
        ClassificationRule,
        "INSERT INTO classification_rules (id, tenant_id, pattern, pattern_regex, device_type_id,
                                           organization_id, site_id, device_group_id, priority)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING id, tenant_id, pattern, device_type_id, organization_id, site_id,
                   device_group_id, priority, created_at, updated_at",
        Uuid::now_v7(),
        tenant_id,
        pattern.as_str(),
        pattern.to_regex(),
        body.device_type_id,
        body.organization_id,
        body.site_id,
        body.device_group_id,
        body.priority.unwrap_or(0)
    )
    .fetch_one(&state.pool)
    .await?;
    Ok((StatusCode::CREATED, Json(rule)))
}

/// List classification rules
///
/// One page of the tenant's rules in creation order: pass `limit` (1–1000, default 100) and the
/// previous page's `next_cursor` as `cursor` for the next page.
#[utoipa::path(get, path = "/tenants/{tenant_id}/classification-rules", tag = "classification", params(TenantPath, PageParams),
    responses((status = 200, description = "One page, oldest first", body = Page<ClassificationRule>)))]
async fn list(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<ClassificationRule>>, ApiError> {
    let limit = page.limit()?;
    let rows = sqlx::query_as!(
        ClassificationRule,
        "SELECT id, tenant_id, pattern, device_type_id, organization_id, site_id,
                device_group_id, priority, created_at, updated_at
         FROM classification_rules
         WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3",
        tenant_id,
        page.after()?,
        limit + 1
    )
    .fetch_all(&state.pool)
    .await?;
    tenants::page(&state.pool, tenant_id, rows, limit).await
}

/// Read a classification rule
///
/// A rule of another tenant is 404, exactly as if it did not exist.
#[utoipa::path(get, path = "/tenants/{tenant_id}/classification-rules/{id}", tag = "classification", params(ItemPath),
    responses((status = 200, description = "The rule", body = ClassificationRule)))]
async fn read(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<Json<ClassificationRule>, ApiError> {
    rule(&state.pool, tenant_id, id).await.map(Json)
}

async fn rule(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<ClassificationRule, ApiError> {
    sqlx::query_as!(
        ClassificationRule,
        "SELECT id, tenant_id, pattern, device_type_id, organization_id, site_id,
                device_group_id, priority, created_at, updated_at
         FROM classification_rules WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .fetch_optional(pool)
    .await?
    .ok_or(ApiError::NotFound("classification rule"))
}

/// Update a classification rule
///
/// Absent fields are kept; `null` clears a target, but a rule left with no target is 422, as is
/// `null` for `pattern` or `priority`. Devices already classified keep what they got.
#[utoipa::path(patch, path = "/tenants/{tenant_id}/classification-rules/{id}", tag = "classification", params(ItemPath), request_body = ClassificationRulePatch,
    responses((status = 200, description = "The updated rule", body = ClassificationRule)))]
async fn update(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
    Json(body): Json<ClassificationRulePatch>,
) -> Result<Json<ClassificationRule>, ApiError> {
    let pattern = body.pattern.as_deref().map(pattern).transpose()?;
    sqlx::query_as!(
        ClassificationRule,
        "UPDATE classification_rules SET
             pattern = COALESCE($3, pattern),
             pattern_regex = COALESCE($4, pattern_regex),
             device_type_id = CASE WHEN $5 THEN $6 ELSE device_type_id END,
             organization_id = CASE WHEN $7 THEN $8 ELSE organization_id END,
             site_id = CASE WHEN $9 THEN $10 ELSE site_id END,
             device_group_id = CASE WHEN $11 THEN $12 ELSE device_group_id END,
             priority = COALESCE($13, priority),
             updated_at = now()
         WHERE tenant_id = $1 AND id = $2
         RETURNING id, tenant_id, pattern, device_type_id, organization_id, site_id,
                   device_group_id, priority, created_at, updated_at",
        tenant_id,
        id,
        pattern.as_ref().map(TopicPattern::as_str),
        pattern.as_ref().map(TopicPattern::to_regex),
        body.device_type_id.is_some(),
        body.device_type_id.flatten(),
        body.organization_id.is_some(),
        body.organization_id.flatten(),
        body.site_id.is_some(),
        body.site_id.flatten(),
        body.device_group_id.is_some(),
        body.device_group_id.flatten(),
        body.priority
    )
    .fetch_optional(&state.pool)
    .await?
    .map(Json)
    .ok_or(ApiError::NotFound("classification rule"))
}

/// Delete a classification rule
///
/// Answers 204. Devices it classified keep what they got.
#[utoipa::path(delete, path = "/tenants/{tenant_id}/classification-rules/{id}", tag = "classification", params(ItemPath),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let deleted = sqlx::query!(
        "DELETE FROM classification_rules WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        id
    )
    .execute(&state.pool)
    .await?;
    deletion(deleted.rows_affected(), "classification rule")
}

/// Apply a classification rule to existing devices
///
/// The devices whose `external_id` matches the rule's pattern and that lack a target the rule has
/// (a rule fills, it never overwrites: a device that has a type keeps it) get the rule's targets.
/// With `"dry_run": true` nothing changes and the answer lists exactly the devices that would,
/// as they would be, paged with `limit` and `cursor`; without, the same set changes in one
/// statement and the answer is the first page of the changed devices, with their `count`.
#[utoipa::path(post, path = "/tenants/{tenant_id}/classification-rules/{id}/apply", tag = "classification", params(ItemPath, PageParams), request_body = ApplyRule,
    responses((status = 200, description = "The devices changed (or that would change)", body = Classified)))]
async fn apply(
    State(state): State<AppState>,
    Path((tenant_id, id)): Path<(Uuid, Uuid)>,
    Query(page): Query<PageParams>,
    Json(body): Json<ApplyRule>,
) -> Result<Json<Classified>, ApiError> {
    let rule = rule(&state.pool, tenant_id, id).await?;
    let change = Change {
        tenant_id,
        pattern: pattern(&rule.pattern)?,
        targets: Targets {
            device_type_id: rule.device_type_id,
            organization_id: rule.organization_id,
            site_id: rule.site_id,
            device_group_id: rule.device_group_id,
        },
        overwrite: false,
        only_unassigned: false,
    };
    run(&state.pool, &change, body.dry_run, &page)
        .await
        .map(Json)
}
