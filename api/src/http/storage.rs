//! Storage you can see: how much telemetry a tenant keeps (rows and bytes per device and per
//! metric) and, for the admin, the partitions of `telemetry` with their sizes.
//!
//! Counting a tenant's rows exactly would read them all, so the answer is estimated from a page
//! sample: `TABLESAMPLE SYSTEM` reads about `SAMPLE_PAGES` pages of the whole table (every
//! partition), whatever its size, and each sampled row stands for 1/p rows (p: the fraction of
//! pages read); bytes are shared out by rows (the table's size, indexes included, per row). Exact
//! while the table has fewer pages than the sample; beyond, a device or metric with a few
//! thousand rows or more is typically within a few percent, a small one may read as 0 or as one
//! page's worth (`"estimated": true`). docs/OPERATIONS.md, "Storage: partitions and retention".

use std::collections::BTreeMap;

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, Path};
use super::openapi::TenantPath;
use super::tenants::ensure_exists;
use crate::partitions::{self, Partition};

/// Pages (8 kB) a storage estimate reads at most: ~16 MB, about 0.1 s (docs/ARCHITECTURE.md).
pub const SAMPLE_PAGES: i64 = 2_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tenant_storage))
        .routes(routes!(list_partitions))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantStorage {
    /// Always true: figures come from a sample (see the route's description).
    pub estimated: bool,
    pub total_rows: i64,
    pub total_bytes: i64,
    /// Largest first.
    pub devices: Vec<DeviceStorage>,
    /// Largest first.
    pub metrics: Vec<MetricStorage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceStorage {
    pub device_id: Uuid,
    pub rows: i64,
    pub bytes: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MetricStorage {
    pub metric: String,
    pub rows: i64,
    pub bytes: i64,
}

/// A tenant's telemetry storage
///
/// Rows and bytes (indexes included) per device and per metric, estimated from a sample of about
/// 2,000 pages of the telemetry table: exact for small tables, within a few percent for devices
/// and metrics with thousands of rows, cheap whatever the size. Devices without sampled rows are
/// left out.
#[utoipa::path(get, path = "/tenants/{tenant_id}/storage", tag = "storage", params(TenantPath),
    responses((status = 200, description = "The tenant's storage, estimated", body = TenantStorage)))]
async fn tenant_storage(
    State(state): State<AppState>,
    Path(tenant_id): Path<Uuid>,
) -> Result<Json<TenantStorage>, ApiError> {
    ensure_exists(&state.pool, tenant_id).await?;
    Ok(Json(estimate(&state.pool, tenant_id).await?))
}

/// Telemetry partitions
///
/// Admin token only (a tenant token gets 403). Every partition of the telemetry table, oldest
/// first, the default partition (event times no other partition covers) last; `rows` is
/// PostgreSQL's estimate (`pg_class.reltuples`, 0 before the first ANALYZE), `bytes` the size on
/// disk with indexes.
#[utoipa::path(get, path = "/storage/partitions", tag = "storage",
    responses((status = 200, description = "The partitions (admin token only)", body = Vec<Partition>)))]
async fn list_partitions(State(state): State<AppState>) -> Result<Json<Vec<Partition>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(partitions::partitions(&mut conn).await?))
}

#[tracing::instrument(skip_all)]
async fn estimate(pool: &sqlx::PgPool, tenant_id: Uuid) -> Result<TenantStorage, ApiError> {
    let size = sqlx::query!(
        r#"SELECT coalesce(sum(pg_relation_size(c.oid)), 0)::bigint AS "heap!",
                  coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS "total!"
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'telemetry'::regclass"#
    )
    .fetch_one(pool)
    .await?;
    let pages = (size.heap / 8192).max(1);
    let percent = (SAMPLE_PAGES as f64 * 100.0 / pages as f64).min(100.0);
    let sampled = sqlx::query!(
        r#"WITH s AS (
               SELECT device_id, metric FROM telemetry TABLESAMPLE SYSTEM ($1::float8) REPEATABLE (18)
           )
           SELECT s.device_id AS "device_id!", s.metric AS "metric!", count(*) AS "rows!",
                  (SELECT count(*) FROM s) AS "all_rows!"
           FROM s JOIN devices d ON d.id = s.device_id
           WHERE d.tenant_id = $2
           GROUP BY s.device_id, s.metric"#,
        percent,
        tenant_id
    )
    .fetch_all(pool)
    .await?;
    let all_rows = sampled.first().map_or(0, |r| r.all_rows);
    // Each sampled row stands for 100/percent rows, and for its share of the bytes.
    let rows_per_sample = 100.0 / percent;
    let bytes_per_sample = if all_rows > 0 {
        size.total as f64 / all_rows as f64
    } else {
        0.0
    };
    let mut devices: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut metrics: BTreeMap<String, i64> = BTreeMap::new();
    for r in sampled {
        *devices.entry(r.device_id).or_default() += r.rows;
        *metrics.entry(r.metric).or_default() += r.rows;
    }
    let scale = |n: i64| {
        (
            (n as f64 * rows_per_sample).round() as i64,
            (n as f64 * bytes_per_sample).round() as i64,
        )
    };
    let mut devices: Vec<DeviceStorage> = devices
        .into_iter()
        .map(|(device_id, n)| {
            let (rows, bytes) = scale(n);
            DeviceStorage {
                device_id,
                rows,
                bytes,
            }
        })
        .collect();
    devices.sort_by_key(|d| std::cmp::Reverse(d.rows));
    let mut metrics: Vec<MetricStorage> = metrics
        .into_iter()
        .map(|(metric, n)| {
            let (rows, bytes) = scale(n);
            MetricStorage {
                metric,
                rows,
                bytes,
            }
        })
        .collect();
    metrics.sort_by_key(|m| std::cmp::Reverse(m.rows));
    Ok(TenantStorage {
        estimated: true,
        total_rows: devices.iter().map(|d| d.rows).sum(),
        total_bytes: devices.iter().map(|d| d.bytes).sum(),
        devices,
        metrics,
    })
}
