//! The telemetry partition maintainer: `telemetry` is range-partitioned by `ts` (migration 013),
//! and somebody has to create tomorrow's partitions and drop the expired ones. Every replica of
//! `gito-api serve` runs this task; a round takes a transaction-level advisory lock, so replicas
//! take turns and every step is idempotent (a partition that exists is not created again).
//!
//! Partitions are `GITO_TELEMETRY_PARTITION_INTERVAL` wide, aligned to UTC multiples of it, kept
//! `GITO_TELEMETRY_PARTITIONS_AHEAD` ahead of now. A sample whose time has no partition lands in
//! `telemetry_default` (counted: `gito_telemetry_default_partition_rows`); creating a partition
//! moves the default partition's rows of its range into it first, or PostgreSQL would refuse it.
//! Retention (docs/OPERATIONS.md, "Storage: partitions and retention") drops whole partitions
//! when every tenant's data in them expired, and deletes a shorter-lived tenant's rows in batches
//! otherwise: never one table-wide DELETE.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use time::OffsetDateTime;
use time::macros::format_description;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::StorageConfig;

/// The advisory lock a replica holds while it maintains partitions ("gito" and migration 013).
pub const LOCK_KEY: i64 = 0x6769_746f_0013;
/// Held (session-level) while a replica builds partitions' `ts` indexes: a key of its own, since
/// `CREATE INDEX CONCURRENTLY` waits for every transaction in flight, the other replicas' rounds
/// waiting for `LOCK_KEY` included.
const INDEX_LOCK_KEY: i64 = 0x6769_746f_0015;
/// Every partition's BRIN index on `ts`: summarized as its page ranges fill (by autovacuum,
/// within `autovacuum_naptime`), not only by VACUUM, so that the rollup follower's scan of a
/// minute reads that minute's ranges and not every range added since the last VACUUM (migration
/// 022).
const BRIN_OPTIONS: &str = "WITH (autosummarize = on)";
/// How often the maintainer runs (and once at start).
pub const EVERY: Duration = Duration::from_secs(300);
/// Rows one retention DELETE removes at most: short statements, short row locks.
pub const DELETE_BATCH: i64 = 10_000;
/// How long a DDL statement of the maintainer waits for a lock before giving up until next round.
const LOCK_TIMEOUT: &str = "2s";

/// One partition of `telemetry` as the catalog describes it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Partition {
    pub name: String,
    /// Inclusive lower bound; `null`: unbounded (`telemetry_legacy`, the default partition).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub from: Option<OffsetDateTime>,
    /// Exclusive upper bound; `null`: unbounded (the default partition).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub to: Option<OffsetDateTime>,
    /// Estimated from statistics (`pg_class.reltuples`; 0 before the first ANALYZE).
    pub rows: i64,
    /// On disk, with indexes and TOAST.
    pub bytes: i64,
    pub default: bool,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    pub created: Vec<String>,
    /// Partitions that got their `ts` BRIN index this round (those made before migration 015).
    pub indexed: Vec<String>,
    pub dropped: Vec<String>,
    pub rows_deleted: u64,
    pub default_rows: i64,
}

/// Maintains every `EVERY` until `stop` (a supervised task). Failures are logged and retried at
/// the next round, never fatal: the database may be away for a while.
pub async fn run(
    config: StorageConfig,
    pool: PgPool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    log_timescaledb(&pool).await;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match maintain(&pool, &config, OffsetDateTime::now_utc()).await {
            Ok(round) if round != Round::default() => {
                tracing::info!(
                    created = ?round.created,
                    indexed = ?round.indexed,
                    dropped = ?round.dropped,
                    rows_deleted = round.rows_deleted,
                    default_rows = round.default_rows,
                    "telemetry partitions maintained"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "telemetry partition maintenance failed; retrying next round")
            }
        }
    }
}

/// One round at time `now`: partitions ahead, the default partition's gauge, retention.
#[tracing::instrument(skip_all)]
pub async fn maintain(
    pool: &PgPool,
    config: &StorageConfig,
    now: OffsetDateTime,
) -> Result<Round, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut round = Round {
        created: ensure_partitions(&mut conn, config, now).await?,
        ..Round::default()
    };
    round.default_rows = default_rows(&mut conn).await?;
    metrics::gauge!("gito_telemetry_default_partition_rows").set(round.default_rows as f64);
    let (dropped, deleted) = enforce_retention(&mut conn, config.retention_days, now).await?;
    round.dropped = dropped;
    round.rows_deleted = deleted;
    // Last: it may wait for every transaction in flight.
    round.indexed = index_partitions(&mut conn).await?;
    Ok(round)
}

/// Creates the partitions from the one holding `now` to `ahead` widths later, where no partition
/// covers them yet. Returns the names created.
pub async fn ensure_partitions(
    conn: &mut PgConnection,
    config: &StorageConfig,
    now: OffsetDateTime,
) -> Result<Vec<String>, sqlx::Error> {
    let width = i64::try_from(config.partition_interval.as_secs())
        .unwrap_or(86_400)
        .max(3600);
    let mut tx = conn.begin().await?;
    take_turn(&mut tx).await?;
    let existing: Vec<(i64, i64)> = partitions(&mut tx)
        .await?
        .iter()
        .filter(|p| !p.default)
        .map(|p| {
            (
                p.from.map_or(i64::MIN, OffsetDateTime::unix_timestamp),
                p.to.map_or(i64::MAX, OffsetDateTime::unix_timestamp),
            )
        })
        .collect();
    let first = now.unix_timestamp().div_euclid(width) * width;
    let mut created = Vec::new();
    for k in 0..=i64::from(config.partitions_ahead) {
        let slot = (first + k * width, first + (k + 1) * width);
        for (from, to) in uncovered(slot, &existing) {
            let name = partition_name(from, width);
            create_partition(&mut tx, &name, from, to).await?;
            created.push(name);
        }
    }
    tx.commit().await?;
    Ok(created)
}

/// Waits for the other replicas' round to end (the advisory lock, released at commit), then
/// bounds this transaction's lock waits by `LOCK_TIMEOUT`.
async fn take_turn(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar!(
        r#"SELECT set_config('lock_timeout', $1, true) AS "set!""#,
        LOCK_TIMEOUT
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// Builds the BRIN index on `ts` that the rollup follower reads by (migration 015 made it on
/// `telemetry` and its partitions under 8 MB) on each partition that lacks it, CONCURRENTLY so that writes go on, and
/// attaches it; partitions made since 015 have it from their creation. Outside a transaction
/// (CONCURRENTLY needs it), under a session-level lock (`INDEX_LOCK_KEY`): a replica that finds it
/// taken leaves the work to the holder. Returns the partitions indexed.
async fn index_partitions(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    let missing: Vec<String> = sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "name!" FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'telemetry'::regclass AND to_regclass('telemetry_ts_brin') IS NOT NULL
             AND NOT EXISTS (
                 SELECT 1 FROM pg_inherits x JOIN pg_index ix ON ix.indexrelid = x.inhrelid
                 WHERE x.inhparent = to_regclass('telemetry_ts_brin') AND ix.indrelid = c.oid)
           ORDER BY 1"#
    )
    .fetch_all(&mut *conn)
    .await?;
    if missing.is_empty() {
        return Ok(missing);
    }
    let mine = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock($1) AS "mine!""#,
        INDEX_LOCK_KEY
    )
    .fetch_one(&mut *conn)
    .await?;
    if !mine {
        return Ok(Vec::new());
    }
    let mut indexed = Vec::new();
    let mut outcome = Ok(());
    for partition in missing {
        let index = format!("{partition}_ts_brin");
        let statements = [
            // What a failed CONCURRENTLY build left behind (an invalid index) goes first.
            format!(
                "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('{index}')
                 AND NOT indisvalid) THEN EXECUTE 'DROP INDEX {index}'; END IF; END $$"
            ),
            format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {partition} USING brin (ts) {BRIN_OPTIONS}"
            ),
            format!("ALTER INDEX telemetry_ts_brin ATTACH PARTITION {index}"),
        ];
        for statement in statements {
            outcome = sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await
                .map(drop);
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_err() {
            break;
        }
        indexed.push(partition);
    }
    sqlx::query_scalar!(
        r#"SELECT pg_advisory_unlock($1) AS "unlocked!""#,
        INDEX_LOCK_KEY
    )
    .fetch_one(&mut *conn)
    .await?;
    outcome.map(|()| indexed)
}

/// The parts of `slot` that no range of `existing` covers.
fn uncovered(slot: (i64, i64), existing: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut gaps = vec![slot];
    for &(from, to) in existing {
        gaps = gaps
            .into_iter()
            .flat_map(|(a, b)| {
                if to <= a || from >= b {
                    vec![(a, b)]
                } else {
                    [(a, from.max(a)), (to.min(b), b)]
                        .into_iter()
                        .filter(|(x, y)| x < y)
                        .collect()
                }
            })
            .collect();
    }
    gaps
}

/// `telemetry_pYYYYMMDD` for a partition starting at midnight UTC that is whole days wide,
/// `telemetry_pYYYYMMDD_HHMM` otherwise.
fn partition_name(from: i64, width: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp(from).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let day = at
        .format(format_description!("[year][month][day]"))
        .unwrap_or_default();
    if width % 86_400 == 0 && from % 86_400 == 0 {
        format!("telemetry_p{day}")
    } else {
        let hm = at
            .format(format_description!("[hour][minute]"))
            .unwrap_or_default();
        format!("telemetry_p{day}_{hm}")
    }
}

fn literal(at: i64) -> String {
    let at = OffsetDateTime::from_unix_timestamp(at).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "'{}'",
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    )
}

/// Creates the partition apart, moves the default partition's rows of its range into it, and
/// attaches it (SHARE UPDATE EXCLUSIVE on `telemetry`, where CREATE TABLE ... PARTITION OF would
/// take ACCESS EXCLUSIVE); the CHECK spares ATTACH a scan of the new table.
async fn create_partition(
    conn: &mut PgConnection,
    name: &str,
    from: i64,
    to: i64,
) -> Result<(), sqlx::Error> {
    let (from, to) = (literal(from), literal(to));
    let statements = [
        format!("CREATE TABLE {name} (LIKE telemetry INCLUDING DEFAULTS)"),
        format!(
            "WITH moved AS (
                 DELETE FROM telemetry_default WHERE ts >= {from} AND ts < {to}
                 RETURNING device_id, ts, metric, value, value_json, flagged)
             INSERT INTO {name} (device_id, ts, metric, value, value_json, flagged)
             SELECT device_id, ts, metric, value, value_json, flagged FROM moved"
        ),
        format!(
            "ALTER TABLE {name} ADD CONSTRAINT {name}_bounds CHECK (ts >= {from} AND ts < {to})"
        ),
        // The attach below adopts this index as the partition's `telemetry_ts_brin` instead of
        // cloning one: a partitioned index takes no storage parameter to pass on.
        format!("CREATE INDEX {name}_ts_brin ON {name} USING brin (ts) {BRIN_OPTIONS}"),
        format!("ALTER TABLE telemetry ATTACH PARTITION {name} FOR VALUES FROM ({from}) TO ({to})"),
        format!("ALTER TABLE {name} DROP CONSTRAINT {name}_bounds"),
    ];
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Every partition of `telemetry`, oldest first, the default partition last.
pub async fn partitions(conn: &mut PgConnection) -> Result<Vec<Partition>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT c.relname::text AS "name!",
                  CASE WHEN b LIKE 'FOR VALUES FROM (''%'
                       THEN substring(b FROM 'FROM \(''([^'']*)''\)')::timestamptz END AS "from",
                  CASE WHEN b LIKE '% TO (''%'
                       THEN substring(b FROM ' TO \(''([^'']*)''\)')::timestamptz END AS "to",
                  greatest(c.reltuples, 0)::bigint AS "rows!",
                  pg_total_relation_size(c.oid) AS "bytes!",
                  b = 'DEFAULT' AS "default!"
           FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) AS b
           WHERE i.inhparent = 'telemetry'::regclass
           ORDER BY b = 'DEFAULT', 2 NULLS FIRST"#
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Partition {
            name: r.name,
            from: r.from,
            to: r.to,
            rows: r.rows,
            bytes: r.bytes,
            default: r.default,
        })
        .collect())
}

/// Rows in the default partition: samples whose time no partition covers (far future or past).
pub async fn default_rows(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    if sqlx::query_scalar!(r#"SELECT to_regclass('public.telemetry_default') IS NOT NULL AS "e!""#)
        .fetch_one(&mut *conn)
        .await?
    {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM telemetry_default")
            .fetch_one(&mut *conn)
            .await
    } else {
        Ok(0)
    }
}

/// A tenant's retention as enforced: its own `retention_days`, else the default; `None`: forever.
#[derive(Debug, Clone, Copy)]
struct Retention {
    tenant_id: Uuid,
    days: Option<i64>,
}

/// Drops the partitions every tenant's data in which expired, then deletes in batches the
/// expired rows of tenants that keep less than the longest. Returns the dropped partitions and
/// the number of rows deleted.
pub async fn enforce_retention(
    conn: &mut PgConnection,
    default_days: Option<u32>,
    now: OffsetDateTime,
) -> Result<(Vec<String>, u64), sqlx::Error> {
    let tenants: Vec<Retention> = sqlx::query!("SELECT id, retention_days FROM tenants")
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|t| Retention {
            tenant_id: t.id,
            days: t
                .retention_days
                .map(i64::from)
                .or(default_days.map(i64::from)),
        })
        .collect();
    // The longest retention of all: None (forever) as soon as one tenant keeps everything.
    let longest = if tenants.is_empty() {
        default_days.map(i64::from)
    } else {
        tenants
            .iter()
            .map(|t| t.days)
            .try_fold(0, |max, days| days.map(|d| max.max(d)))
    };
    let cutoff = |days: i64| now - time::Duration::days(days);
    let mut dropped = Vec::new();
    if let Some(longest) = longest {
        let before = cutoff(longest);
        for p in partitions(conn).await? {
            if !p.default && p.to.is_some_and(|to| to <= before) {
                match drop_partition(conn, &p.name).await {
                    Ok(()) => {
                        metrics::counter!("gito_retention_partitions_dropped_total").increment(1);
                        dropped.push(p.name);
                    }
                    // Busy (a long query reads it): next round.
                    Err(e) if is_lock_timeout(&e) => {
                        tracing::info!(
                            partition = p.name,
                            "partition busy; dropping it next round"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let mut deleted = 0;
    for t in &tenants {
        let Some(days) = t.days else { continue };
        let before = cutoff(days);
        // At the longest retention, its rows go with whole partitions.
        if longest.is_none_or(|longest| days < longest) {
            deleted += delete_expired(conn, t.tenant_id, before).await?;
        }
        prune_rollups(conn, t.tenant_id, before).await?;
    }
    Ok((dropped, deleted))
}

/// A plain DETACH (CONCURRENTLY is refused while a default partition exists) and DROP, waiting
/// at most `LOCK_TIMEOUT` for the lock. The same advisory lock as creation: replicas take turns.
async fn drop_partition(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    take_turn(&mut tx).await?;
    let still_there = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                          WHERE i.inhparent = 'telemetry'::regclass AND c.relname = $1) AS "e!""#,
        name
    )
    .fetch_one(&mut *tx)
    .await?;
    if still_there {
        for statement in [
            format!("ALTER TABLE telemetry DETACH PARTITION {name}"),
            format!("DROP TABLE {name}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "55P03")
}

/// Deletes a tenant's rows older than `before`, `DELETE_BATCH` per statement (each its own
/// transaction: row locks stay short, and the work done so far stays done).
async fn delete_expired(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    before: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query!(
            "DELETE FROM telemetry t
             USING (SELECT device_id, metric, ts FROM telemetry
                    WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = $1) AND ts < $2
                    LIMIT $3) AS expired
             WHERE t.device_id = expired.device_id AND t.metric = expired.metric
               AND t.ts = expired.ts",
            tenant_id,
            before,
            DELETE_BATCH
        )
        .execute(&mut *conn)
        .await?
        .rows_affected();
        total += n;
        metrics::counter!("gito_retention_rows_deleted_total").increment(n);
        if n < DELETE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Deletes a tenant's rollup rows (migration 014) whose whole bucket lies before `before`,
/// `DELETE_BATCH` per statement: a bucket still holding one unexpired sample stays whole, so a
/// rollup never answers for only part of what its bucket covered.
pub async fn prune_rollups(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    before: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for table in [Rollup::Minute, Rollup::Hour, Rollup::Day] {
        loop {
            let n = table
                .delete_before(&mut *conn, tenant_id, before - table.width())
                .await?;
            total += n;
            if n < DELETE_BATCH as u64 {
                break;
            }
        }
    }
    Ok(total)
}

/// The three rollup tables, each pruned by its own checked statement.
#[derive(Debug, Clone, Copy)]
enum Rollup {
    Minute,
    Hour,
    Day,
}

impl Rollup {
    fn width(self) -> time::Duration {
        match self {
            Rollup::Minute => time::Duration::MINUTE,
            Rollup::Hour => time::Duration::HOUR,
            Rollup::Day => time::Duration::DAY,
        }
    }

    /// Deletes at most `DELETE_BATCH` of the tenant's rows with `bucket <= last_bucket`.
    async fn delete_before(
        self,
        conn: &mut PgConnection,
        tenant_id: Uuid,
        last_bucket: OffsetDateTime,
    ) -> Result<u64, sqlx::Error> {
        let done = match self {
            Rollup::Minute => sqlx::query!(
                "DELETE FROM telemetry_rollup_1m r
                 USING (SELECT device_id, metric, bucket FROM telemetry_rollup_1m
                        WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = $1)
                          AND bucket <= $2
                        LIMIT $3) AS expired
                 WHERE (r.device_id, r.metric, r.bucket) = (expired.device_id, expired.metric, expired.bucket)",
                tenant_id,
                last_bucket,
                DELETE_BATCH
            )
            .execute(conn)
            .await?,
            Rollup::Hour => sqlx::query!(
                "DELETE FROM telemetry_rollup_1h r
                 USING (SELECT device_id, metric, bucket FROM telemetry_rollup_1h
                        WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = $1)
                          AND bucket <= $2
                        LIMIT $3) AS expired
                 WHERE (r.device_id, r.metric, r.bucket) = (expired.device_id, expired.metric, expired.bucket)",
                tenant_id,
                last_bucket,
                DELETE_BATCH
            )
            .execute(conn)
            .await?,
            Rollup::Day => sqlx::query!(
                "DELETE FROM telemetry_rollup_1d r
                 USING (SELECT device_id, metric, bucket FROM telemetry_rollup_1d
                        WHERE device_id IN (SELECT id FROM devices WHERE tenant_id = $1)
                          AND bucket <= $2
                        LIMIT $3) AS expired
                 WHERE (r.device_id, r.metric, r.bucket) = (expired.device_id, expired.metric, expired.bucket)",
                tenant_id,
                last_bucket,
                DELETE_BATCH
            )
            .execute(conn)
            .await?,
        };
        Ok(done.rows_affected())
    }
}

/// TimescaleDB does what this module does (and compression); say so where it is installed.
async fn log_timescaledb(pool: &PgPool) {
    let available: Result<bool, _> = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') AS "a!""#
    )
    .fetch_one(pool)
    .await;
    if available.unwrap_or(false) {
        tracing::info!(
            "TimescaleDB is available on this PostgreSQL: it could replace gito's native partitions \
             (hypertables, compression); see docs/OPERATIONS.md, \"Storage: partitions and retention\""
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncovered_leaves_only_the_gaps() {
        assert_eq!(uncovered((0, 10), &[]), vec![(0, 10)]);
        assert_eq!(uncovered((0, 10), &[(i64::MIN, 4)]), vec![(4, 10)]);
        assert_eq!(
            uncovered((0, 10), &[(2, 4), (6, 8)]),
            vec![(0, 2), (4, 6), (8, 10)]
        );
        assert!(uncovered((0, 10), &[(-5, 15)]).is_empty());
    }

    #[test]
    fn partitions_are_named_by_their_start() {
        let day = 20_427 * 86_400; // 2025-12-05
        assert_eq!(partition_name(day, 86_400), "telemetry_p20251205");
        assert_eq!(
            partition_name(day + 6 * 3600, 6 * 3600),
            "telemetry_p20251205_0600"
        );
    }
}
