//! Changing many devices at once by pattern: what a rule's `apply` and `devices/classify` share.
//! A dry run lists exactly the devices a real run changes (the same predicate), paged; a real run
//! changes them in one statement. `classify` sets the targets it is given; a rule only fills
//! what a device lacks.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::devices::Device;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::openapi::{ExternalId, TenantPath};
use super::page::{Page, PageParams};
use super::{AppState, tenants};
use crate::domain::topic_pattern::TopicPattern;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(classify))
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
    pub fn require_one(&self) -> Result<(), ApiError> {
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

pub fn pattern(text: &str) -> Result<TopicPattern, ApiError> {
    Ok(TopicPattern::parse("pattern", text)?)
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
pub struct Change {
    pub tenant_id: Uuid,
    pub pattern: TopicPattern,
    pub targets: Targets,
    /// Replace what devices have (classify) rather than only fill what they lack (a rule).
    pub overwrite: bool,
    pub only_unassigned: bool,
}

pub async fn run(
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
                  d.status, d.last_seen_at,
                  CASE WHEN c.check_at IS NULL THEN 'offline' ELSE 'online' END AS "connectivity!",
                  d.created_at, d.updated_at
           FROM devices d LEFT JOIN device_connectivity c ON c.device_id = d.id
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
           SELECT d.id AS "id!", d.tenant_id AS "tenant_id!", d.name AS "name!", d.external_id,
                  d.device_type, d.device_type_id, d.organization_id, d.site_id, d.device_group_id,
                  d.status AS "status!", d.last_seen_at,
                  CASE WHEN c.check_at IS NULL THEN 'offline' ELSE 'online' END AS "connectivity!",
                  d.created_at AS "created_at!", d.updated_at AS "updated_at!",
                  count(*) OVER () AS "count!"
           FROM changed d LEFT JOIN device_connectivity c ON c.device_id = d.id
           ORDER BY d.id LIMIT $9"#,
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
            connectivity: r.connectivity,
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
