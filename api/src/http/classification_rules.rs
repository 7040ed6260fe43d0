//! Classification rules: "a device whose `external_id` matches PATTERN gets this type and/or place
//! in the hierarchy". The API applies them when it creates a device (devices.rs, in the same
//! statement as the idempotent create) and, on demand, to existing devices; `devices/classify` is
//! the same operation without saving a rule. A rule only fills what a device lacks; `classify`
//! sets what it is given.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::devices::Device;
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
        .routes(routes!(classify))
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "pattern": "SDE11/+/UTILITIES/BOILER/+",
    "device_type_id": "0192f0c4-0000-7000-8000-000000000030",
    "dry_run": true,
    "only_unassigned": true
}))]
struct ClassifyDevices {
    #[schema(value_type = ExternalId)]
    pattern: String,
    device_type_id: Option<Uuid>,
    organization_id: Option<Uuid>,
    site_id: Option<Uuid>,
    device_group_id: Option<Uuid>,
    /// Only answer which devices would change (default false: change them).
    #[serde(default)]
    dry_run: bool,
    /// Only devices with no `device_type_id` yet (default false).
    #[serde(default)]
    only_unassigned: bool,
}

/// Which devices an apply or classify changed (or, in a dry run, would change).
#[derive(Debug, Serialize, ToSchema)]
pub struct Classified {
    /// All of them, not only this page's.
    pub count: i64,
    /// One page of them, in creation order, as they are (or would be) after the change.
    pub devices: Vec<Device>,
    /// Dry run: pass as `cursor` for the next page; `null` on the last one. Always `null` after
    /// a real run (the devices changed no longer need changing).
    pub next_cursor: Option<String>,
}

/// The targets of a rule or a classify request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Targets {
    pub device_type_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    pub device_group_id: Option<Uuid>,
}

impl Targets {
    fn require_one(&self) -> Result<(), ApiError> {
        let any = self.device_type_id.is_some()
            || self.organization_id.is_some()
            || self.site_id.is_some()
            || self.device_group_id.is_some();
        if any {
            Ok(())
        } else {
            Err(ApiError::unprocessable(
                "invalid_field",
                "give at least one of device_type_id, organization_id, site_id, device_group_id",
            ))
        }
    }
}

fn pattern(text: &str) -> Result<TopicPattern, ApiError> {
    Ok(TopicPattern::parse("pattern", text)?)
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

/// Classify devices by pattern, without a rule
///
/// The devices whose `external_id` matches `pattern` (and, with `only_unassigned`, that have no
/// `device_type_id`) get the targets given, replacing what they had; devices that already have
/// them are not counted. At least one target is required, each this tenant's. `dry_run` and the
/// answer are as for a rule's `apply`.
#[utoipa::path(post, path = "/tenants/{tenant_id}/devices/classify", tag = "classification", params(TenantPath, PageParams), request_body = ClassifyDevices,
    responses((status = 200, description = "The devices changed (or that would change)", body = Classified)))]
async fn classify(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
    Query(page): Query<PageParams>,
    Json(body): Json<ClassifyDevices>,
) -> Result<Json<Classified>, ApiError> {
    let targets = Targets {
        device_type_id: body.device_type_id,
        organization_id: body.organization_id,
        site_id: body.site_id,
        device_group_id: body.device_group_id,
    };
    targets.require_one()?;
    tenants::ensure_exists(&state.pool, tenant_id).await?;
    let change = Change {
        tenant_id,
        pattern: pattern(&body.pattern)?,
        targets,
        overwrite: true,
        only_unassigned: body.only_unassigned,
    };
    // A dry run writes nothing, so no foreign key would catch another tenant's ids.
    check_targets(&state.pool, tenant_id, &targets).await?;
    run(&state.pool, &change, body.dry_run, &page)
        .await
        .map(Json)
}

/// What to change on which devices.
struct Change {
    tenant_id: Uuid,
    pattern: TopicPattern,
    targets: Targets,
    /// Replace what devices have (classify) rather than only fill what they lack (a rule).
    overwrite: bool,
    only_unassigned: bool,
}

async fn run(
    pool: &PgPool,
    change: &Change,
    dry_run: bool,
    page: &PageParams,
) -> Result<Classified, ApiError> {
    let limit = page.limit()?;
    let after = page.after()?;
    if dry_run {
        preview(pool, change, after, limit).await
    } else {
        tenants::ensure_exists(pool, change.tenant_id).await?;
        commit(pool, change, limit).await
    }
}

/// The devices `change` would change, one page of them as they would be, and their count.
/// A field changes when a target is given for it, differs from the device's, and either
/// `overwrite` is set or the device has none.
async fn preview(
    pool: &PgPool,
    change: &Change,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Classified, ApiError> {
    let t = &change.targets;
    let regex = change.pattern.to_regex();
    let mut tx = pool.begin().await?;
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM devices d
           WHERE d.tenant_id = $1 AND d.external_id ~ $2 AND (NOT $3 OR d.device_type_id IS NULL)
             AND (($5::uuid IS NOT NULL AND ($4 OR d.device_type_id IS NULL) AND d.device_type_id IS DISTINCT FROM $5)
               OR ($6::uuid IS NOT NULL AND ($4 OR d.organization_id IS NULL) AND d.organization_id IS DISTINCT FROM $6)
               OR ($7::uuid IS NOT NULL AND ($4 OR d.site_id IS NULL) AND d.site_id IS DISTINCT FROM $7)
               OR ($8::uuid IS NOT NULL AND ($4 OR d.device_group_id IS NULL) AND d.device_group_id IS DISTINCT FROM $8))"#,
        change.tenant_id,
        regex,
        change.only_unassigned,
        change.overwrite,
        t.device_type_id,
        t.organization_id,
        t.site_id,
        t.device_group_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let rows = sqlx::query_as!(
        Device,
        r#"SELECT d.id, d.tenant_id, d.name, d.external_id, d.device_type,
                  CASE WHEN $5::uuid IS NOT NULL AND ($4 OR d.device_type_id IS NULL) THEN $5 ELSE d.device_type_id END AS device_type_id,
                  CASE WHEN $6::uuid IS NOT NULL AND ($4 OR d.organization_id IS NULL) THEN $6 ELSE d.organization_id END AS organization_id,
                  CASE WHEN $7::uuid IS NOT NULL AND ($4 OR d.site_id IS NULL) THEN $7 ELSE d.site_id END AS site_id,
                  CASE WHEN $8::uuid IS NOT NULL AND ($4 OR d.device_group_id IS NULL) THEN $8 ELSE d.device_group_id END AS device_group_id,
                  d.status, d.last_seen_at, d.created_at, d.updated_at
           FROM devices d
           WHERE d.tenant_id = $1 AND d.external_id ~ $2 AND (NOT $3 OR d.device_type_id IS NULL)
             AND (($5::uuid IS NOT NULL AND ($4 OR d.device_type_id IS NULL) AND d.device_type_id IS DISTINCT FROM $5)
               OR ($6::uuid IS NOT NULL AND ($4 OR d.organization_id IS NULL) AND d.organization_id IS DISTINCT FROM $6)
               OR ($7::uuid IS NOT NULL AND ($4 OR d.site_id IS NULL) AND d.site_id IS DISTINCT FROM $7)
               OR ($8::uuid IS NOT NULL AND ($4 OR d.device_group_id IS NULL) AND d.device_group_id IS DISTINCT FROM $8))
             AND ($9::uuid IS NULL OR d.id > $9)
           ORDER BY d.id LIMIT $10"#,
        change.tenant_id,
        regex,
        change.only_unassigned,
        change.overwrite,
        t.device_type_id,
        t.organization_id,
        t.site_id,
        t.device_group_id,
        after,
        limit + 1
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    if count == 0 && after.is_none() {
        tenants::ensure_exists(pool, change.tenant_id).await?;
    }
    let page = Page::from_rows(rows, limit);
    Ok(Classified {
        count,
        devices: page.items,
        next_cursor: page.next_cursor,
    })
}

/// Changes what `preview` lists, in one statement; answers the first page of the changed devices.
async fn commit(pool: &PgPool, change: &Change, limit: i64) -> Result<Classified, ApiError> {
    let t = &change.targets;
    let rows = sqlx::query!(
        r#"WITH changed AS (
               UPDATE devices d SET
                   device_type_id = CASE WHEN $5::uuid IS NOT NULL AND ($4 OR d.device_type_id IS NULL) THEN $5 ELSE d.device_type_id END,
                   organization_id = CASE WHEN $6::uuid IS NOT NULL AND ($4 OR d.organization_id IS NULL) THEN $6 ELSE d.organization_id END,
                   site_id = CASE WHEN $7::uuid IS NOT NULL AND ($4 OR d.site_id IS NULL) THEN $7 ELSE d.site_id END,
                   device_group_id = CASE WHEN $8::uuid IS NOT NULL AND ($4 OR d.device_group_id IS NULL) THEN $8 ELSE d.device_group_id END,
                   updated_at = now()
               WHERE d.tenant_id = $1 AND d.external_id ~ $2 AND (NOT $3 OR d.device_type_id IS NULL)
                 AND (($5::uuid IS NOT NULL AND ($4 OR d.device_type_id IS NULL) AND d.device_type_id IS DISTINCT FROM $5)
                   OR ($6::uuid IS NOT NULL AND ($4 OR d.organization_id IS NULL) AND d.organization_id IS DISTINCT FROM $6)
                   OR ($7::uuid IS NOT NULL AND ($4 OR d.site_id IS NULL) AND d.site_id IS DISTINCT FROM $7)
                   OR ($8::uuid IS NOT NULL AND ($4 OR d.device_group_id IS NULL) AND d.device_group_id IS DISTINCT FROM $8))
               RETURNING d.id, d.tenant_id, d.name, d.external_id, d.device_type, d.device_type_id,
                         d.organization_id, d.site_id, d.device_group_id, d.status, d.last_seen_at,
                         d.created_at, d.updated_at
           )
           SELECT id AS "id!", tenant_id AS "tenant_id!", name AS "name!", external_id, device_type,
                  device_type_id, organization_id, site_id, device_group_id, status AS "status!",
                  last_seen_at, created_at AS "created_at!", updated_at AS "updated_at!",
                  count(*) OVER () AS "count!"
           FROM changed ORDER BY id LIMIT $9"#,
        change.tenant_id,
        change.pattern.to_regex(),
        change.only_unassigned,
        change.overwrite,
        t.device_type_id,
        t.organization_id,
        t.site_id,
        t.device_group_id,
        limit
    )
    .fetch_all(pool)
    .await?;
    let count = rows.first().map_or(0, |r| r.count);
    let devices = rows
        .into_iter()
        .map(|r| Device {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            external_id: r.external_id,
            device_type: r.device_type,
            device_type_id: r.device_type_id,
            organization_id: r.organization_id,
            site_id: r.site_id,
            device_group_id: r.device_group_id,
            status: r.status,
            last_seen_at: r.last_seen_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect();
    Ok(Classified {
        count,
        devices,
        next_cursor: None,
    })
}

/// 422 `invalid_reference` unless every target given is this tenant's.
async fn check_targets(pool: &PgPool, tenant_id: Uuid, t: &Targets) -> Result<(), ApiError> {
    let found = sqlx::query!(
        r#"SELECT
             ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM device_types WHERE tenant_id = $1 AND id = $2)) AS "device_type!",
             ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM organizations WHERE tenant_id = $1 AND id = $3)) AS "organization!",
             ($4::uuid IS NULL OR EXISTS (SELECT 1 FROM sites WHERE tenant_id = $1 AND id = $4)) AS "site!",
             ($5::uuid IS NULL OR EXISTS (SELECT 1 FROM device_groups WHERE tenant_id = $1 AND id = $5)) AS "device_group!""#,
        tenant_id,
        t.device_type_id,
        t.organization_id,
        t.site_id,
        t.device_group_id
    )
    .fetch_one(pool)
    .await?;
    let missing = [
        (found.device_type, "device_type_id", "a device type"),
        (found.organization, "organization_id", "an organization"),
        (found.site, "site_id", "a site"),
        (found.device_group, "device_group_id", "a device group"),
    ]
    .into_iter()
    .find(|(ok, _, _)| !ok);
    match missing {
        None => Ok(()),
        Some((_, field, what)) => Err(ApiError::unprocessable(
            "invalid_reference",
            format!("{field} does not name {what} of this tenant"),
        )),
    }
}
