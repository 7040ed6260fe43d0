//! Rollups: per device and metric, the count, min, max, sum, first and last of numeric telemetry
//! per minute, hour and day (`telemetry_rollup_1m`, `_1h`, `_1d`), so that a month of hourly
//! buckets reads hundreds of rows instead of millions.
//!
//! They are kept by a follower (`run`), not by the processor: the processor only stores raw
//! rows, which is what ingest can afford, and the follower rolls up whole minutes behind it, then
//! whole hours from minutes and whole days from hours once they are complete, the way
//! TimescaleDB's continuous aggregates do. Edges in `telemetry_rollup_state` say where it stands:
//!
//! - `materialized_before`: every minute before it was rolled up from the raw rows there;
//!   `hours_before` and `days_before` (each at most the one before) likewise for hours and days;
//! - `invalidated_before` (≥ `materialized_before`): a processor that stores a row older than this
//!   logs the row's minute in `telemetry_rollup_invalidations` in the same statement, and the
//!   follower recomputes that minute (and its hour and day, where rolled up) from raw rows.
//!
//! A row is therefore rolled up exactly once whichever way it comes: a row at or after
//! `invalidated_before` is in the raw rows when the follower reaches its minute, and a row before
//! it is logged. The follower moves `invalidated_before` while holding `LOCK` exclusively and every
//! processor holds it shared from before it reads the edge until it commits, so no row can slip
//! between an edge it read and a minute the follower already rolled up. A redelivery inserts no
//! row, so it logs nothing. Every write of the follower replaces a bucket with what its parts
//! hold, so any step can be repeated. Queries combine each rollup before a device's `edges` with
//! finer pieces and raw rows after them, so their answers stay exact while the follower is behind.
//!
//! Rows stored before migration 014 are rolled up by `backfill_step`, device by device, and a
//! query uses a rollup for a device only once the backfill has passed it.
//!
//! First and last values are taken without a sort: `min(first_last_key(ts, bucket, value))[2]`
//! over the rows of a bucket (`max` for the last), the key being `[s, value]` with `s` the
//! sample's seconds from the bucket's start as a float8 (migration 018 defines it, once, as an SQL
//! function the planner inlines), exact to the microsecond for any bucket under 136 years (a
//! device has one sample per metric and instant). PostgreSQL 15 sorts every group on its own for `array_agg(value ORDER BY ts)`:
//! about a third of a minute's aggregate and of a month-long hourly query (docs/ARCHITECTURE.md,
//! "Rollups").

use std::time::Duration;

use gito_runtime::Backoff;
use serde::Serialize;
use sqlx::{Connection as _, PgConnection, PgPool};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::status::{self, Health};

/// Held shared by every merge (`processor::store`), from before it reads `invalidated_before`
/// until it commits, and exclusively by the follower for the instant it moves that edge.
pub const LOCK: i64 = 0x6769_746f_726f_6c6c; // "gitoroll"

/// Held by a follower step and a backfill step: one of them at a time, among all replicas.
pub const FOLLOWER: i64 = 0x6769_746f_666f_6c6c; // "gitofoll"

/// Held, after `FOLLOWER`, by the steps that write rollup rows (a backfill step, the follower's
/// rollup transaction), and taken by every statement that deletes devices before it locks one
/// (migration 019's trigger): a deletion locks the device and then its rollup rows, a writer its
/// rollup rows and then their devices (a foreign key), so without turns the two deadlock. Not
/// `FOLLOWER` itself: the follower's first transaction holds that while it waits for the merges in
/// flight, and a merge may be waiting for a deleting transaction's locks.
pub const WRITER: i64 = 0x6769_746f_7772_6974; // "gitowrit"

/// Devices rolled up per backfill step (one transaction).
pub const DEVICES_PER_STEP: i64 = 20;

/// The longest span of raw rows one follower step rolls up (one statement).
pub const SPAN: time::Duration = time::Duration::minutes(5);

/// The most hours and days one follower step rolls up (a follower far behind catches up in
/// several steps; a running one rolls one hour an hour and one day a day).
const HOURS_SPAN: time::Duration = time::Duration::hours(24);
const DAYS_SPAN: time::Duration = time::Duration::days(7);
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// Logged minutes one follower step recomputes at most.
pub const RECOMPUTE_PER_STEP: i64 = 10_000;

/// How often an idle follower looks for work.
pub const POLL: Duration = Duration::from_secs(1);

/// Where a telemetry query's answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum Source {
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "1d")]
    Day,
}

impl Source {
    /// Coarsest first.
    pub const ROLLUPS: [Source; 3] = [Source::Day, Source::Hour, Source::Minute];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Raw => "raw",
            Source::Minute => "1m",
            Source::Hour => "1h",
            Source::Day => "1d",
        }
    }

    /// A rollup's bucket width in seconds (`None` for raw).
    pub fn secs(self) -> Option<i64> {
        match self {
            Source::Raw => None,
            Source::Minute => Some(60),
            Source::Hour => Some(3600),
            Source::Day => Some(86_400),
        }
    }

    /// The next finer source: hours under days, minutes under hours, raw rows under minutes.
    pub fn finer(self) -> Source {
        match self {
            Source::Day => Source::Hour,
            Source::Hour => Source::Minute,
            Source::Minute | Source::Raw => Source::Raw,
        }
    }

    /// The coarsest rollup that answers buckets of `bucket_secs` over `[from, to)` exactly: its
    /// width divides the bucket width (buckets share the origin 2000-01-01T00:00:00Z, so each
    /// query bucket is a union of rollup buckets) and the bounds lie on its bucket edges (so the
    /// range cuts no rollup bucket). Raw when none does.
    pub fn for_buckets(
        bucket_secs: i64,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Source {
        let on_edge = |t: Option<OffsetDateTime>, width: i64| {
            t.is_none_or(|t| {
                t.nanosecond() == 0 && (t.unix_timestamp() - ORIGIN).rem_euclid(width) == 0
            })
        };
        Source::ROLLUPS
            .into_iter()
            .find(|s| {
                let width = s.secs().expect("a rollup");
                bucket_secs % width == 0 && on_edge(from, width) && on_edge(to, width)
            })
            .unwrap_or(Source::Raw)
    }
}

/// 2000-01-01T00:00:00Z, the origin of every bucket (`date_bin`'s), in Unix seconds.
const ORIGIN: i64 = 946_684_800;

/// Where each rollup of a device stops answering: before `day`, days; from there to `hour`,
/// hours; from there to `minute`, minutes; raw rows from `minute` on. Each is aligned to its
/// width, and `day <= hour <= minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edges {
    pub day: OffsetDateTime,
    pub hour: OffsetDateTime,
    pub minute: OffsetDateTime,
}

impl Edges {
    /// Where `source` stops answering (`None` for raw rows, which answer everything).
    pub fn of(self, source: Source) -> Option<OffsetDateTime> {
        match source {
            Source::Day => Some(self.day),
            Source::Hour => Some(self.hour),
            Source::Minute => Some(self.minute),
            Source::Raw => None,
        }
    }
}

/// The edges of `device_id`, if it is `tenant_id`'s: where the follower stands, or earlier when
/// one of the device's minutes waits to be recomputed (its hour and day then wait too). `None`
/// when the device is not the tenant's or its rollups cannot serve at all yet (the backfill has
/// not passed it). The device check rides along so that a query served by a rollup costs one
/// round trip less (`http::telemetry`).
pub async fn edges(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    device_id: Uuid,
) -> Result<Option<Edges>, sqlx::Error> {
    let row = sqlx::query!(
        r#"WITH m AS (
             SELECT s.hours_before, s.days_before,
                    LEAST(s.materialized_before,
                          (SELECT min(bucket) FROM telemetry_rollup_invalidations WHERE device_id = $1)) AS minute
             FROM telemetry_rollup_state s, telemetry_rollup_backfill b
             WHERE (b.done OR $1 <= b.after_device)
               AND EXISTS (SELECT 1 FROM devices WHERE tenant_id = $2 AND id = $1)
           ), h AS (
             SELECT minute, days_before,
                    LEAST(hours_before, date_bin('1 hour', minute, TIMESTAMPTZ '2000-01-01 00:00:00+00')) AS hour
             FROM m
           )
           SELECT minute AS "minute!", hour AS "hour!",
                  LEAST(days_before, date_bin('1 day', hour, TIMESTAMPTZ '2000-01-01 00:00:00+00')) AS "day!"
           FROM h"#,
        device_id,
        tenant_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| Edges {
        day: r.day,
        hour: r.hour,
        minute: r.minute,
    }))
}

/// What one backfill step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Rolled up this many devices; more may follow.
    Devices(usize),
    /// Every device is rolled up (now or before).
    Done,
}

/// Rolls up the next `devices` devices (in id order) from their raw rows before
/// `materialized_before` (the follower's part is after it), replacing whatever their rollups
/// held (an hour or day not complete yet is written partly, and rolled up again by the follower
/// when it is), and moves the persisted position past them; marks the backfill done when no device is
/// left. Takes turns with the follower (`FOLLOWER`) and survives restarts (the position commits
/// with the rollups). Processors never wait for it.
#[tracing::instrument(skip_all)]
pub async fn backfill_step(pool: &PgPool, devices: i64) -> Result<Step, sqlx::Error> {
    let mut tx = pool.begin().await?;
    take_turn_to_write(&mut tx).await?;
    let state = sqlx::query!(
        "SELECT b.done, b.after_device, s.materialized_before
         FROM telemetry_rollup_backfill b, telemetry_rollup_state s FOR UPDATE OF b"
    )
    .fetch_optional(&mut *tx)
    .await?;
    let (after, before) = match state {
        Some(s) if !s.done => (s.after_device, s.materialized_before),
        _ => return Ok(Step::Done),
    };
    let ids: Vec<Uuid> = sqlx::query_scalar!(
        "SELECT id FROM devices WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2",
        after,
        devices
    )
    .fetch_all(&mut *tx)
    .await?;
    let Some(last) = ids.last().copied() else {
        sqlx::query!("UPDATE telemetry_rollup_backfill SET done = true")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(Step::Done);
    };
    sqlx::query!(
        "DELETE FROM telemetry_rollup_1m WHERE device_id = ANY($1)",
        &ids
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM telemetry_rollup_1h WHERE device_id = ANY($1)",
        &ids
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM telemetry_rollup_1d WHERE device_id = ANY($1)",
        &ids
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO telemetry_rollup_1m (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         SELECT device_id, metric, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                count(*), min(value), max(value), sum(value),
                (min(first_last_key(ts, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), value)))[2], min(ts),
                (max(first_last_key(ts, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), value)))[2], max(ts)
         FROM telemetry WHERE device_id = ANY($1) AND ts < $2 AND value IS NOT NULL
         GROUP BY 1, 2, 3",
        &ids,
        before
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO telemetry_rollup_1h (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         SELECT device_id, metric, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                sum(count), min(min), max(max), sum(sum),
                (min(first_last_key(first_ts, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), first)))[2], min(first_ts),
                (max(first_last_key(last_ts, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), last)))[2], max(last_ts)
         FROM telemetry_rollup_1m WHERE device_id = ANY($1)
         GROUP BY 1, 2, 3",
        &ids
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO telemetry_rollup_1d (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         SELECT device_id, metric, date_bin('1 day', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                sum(count), min(min), max(max), sum(sum),
                (min(first_last_key(first_ts, date_bin('1 day', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), first)))[2], min(first_ts),
                (max(first_last_key(last_ts, date_bin('1 day', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), last)))[2], max(last_ts)
         FROM telemetry_rollup_1h WHERE device_id = ANY($1)
         GROUP BY 1, 2, 3",
        &ids
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE telemetry_rollup_backfill SET after_device = $1",
        last
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Step::Devices(ids.len()))
}

/// What one follower step did; all zero when it found nothing to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// `materialized_before` after the step (`None` for the one-time cleanup step): every minute
    /// before it is rolled up.
    pub edge: Option<OffsetDateTime>,
    /// Minutes of raw rows rolled up (the span `materialized_before` moved).
    pub minutes: i64,
    /// Hours and days rolled up from their minutes and hours.
    pub hours: i64,
    pub days: i64,
    /// Logged minutes recomputed.
    pub recomputed: u64,
    /// Whether this step removed the rollup rows written before 015 (once).
    pub cleaned: bool,
}

impl Progress {
    pub fn is_idle(&self) -> bool {
        self.minutes == 0
            && self.hours == 0
            && self.days == 0
            && self.recomputed == 0
            && !self.cleaned
    }
}

/// Waits for this transaction's turn to write rollup rows: among the follower and backfill steps
/// of every replica (`FOLLOWER`), then with the deletions of devices (`WRITER`).
pub async fn take_turn_to_write(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    for lock in [FOLLOWER, WRITER] {
        sqlx::query!("SELECT pg_advisory_xact_lock($1)", lock)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// One follower step: moves `invalidated_before` up to the minute of `until` (never back), rolls
/// up at most `SPAN` of raw rows from `materialized_before` on, then the hours and days that are
/// complete behind it (at most `HOURS_SPAN` and `DAYS_SPAN`), and recomputes at most
/// `RECOMPUTE_PER_STEP` logged minutes before it. Safe with many replicas (`FOLLOWER`) and across
/// crashes at any point: the edges commit with the rollups they describe, and a recompute is
/// idempotent.
#[tracing::instrument(skip_all)]
pub async fn follow_step(pool: &PgPool, until: OffsetDateTime) -> Result<Progress, sqlx::Error> {
    let mut progress = Progress::default();
    // 1. The invalidation edge, alone in a short transaction: the exclusive LOCK waits for the
    //    merges in flight (they read the edge before), and merges wait for this commit.
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", FOLLOWER)
        .execute(&mut *tx)
        .await?;
    let behind = sqlx::query_scalar!(
        r#"SELECT invalidated_before < date_bin('1 minute', $1, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS "behind!"
           FROM telemetry_rollup_state"#,
        until
    )
    .fetch_one(&mut *tx)
    .await?;
    if behind {
        sqlx::query!("SELECT pg_advisory_xact_lock($1)", LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query!(
            "UPDATE telemetry_rollup_state
             SET invalidated_before = date_bin('1 minute', $1, TIMESTAMPTZ '2000-01-01 00:00:00+00')",
            until
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;

    // 2. Roll up and recompute, in a snapshot taken after every merge that read the old edge
    //    committed; sorting a span's rows in memory (the default 4 MB spills them to disk).
    let mut tx = pool.begin().await?;
    take_turn_to_write(&mut tx).await?;
    sqlx::query_scalar!(r#"SELECT set_config('work_mem', '64MB', true) AS "set!""#)
        .fetch_one(&mut *tx)
        .await?;
    let state = sqlx::query!(
        "SELECT invalidated_before, materialized_before, hours_before, days_before, cleanup_from
         FROM telemetry_rollup_state"
    )
    .fetch_one(&mut *tx)
    .await?;
    if let Some(from) = state.cleanup_from {
        clean_up(&mut tx, from).await?;
        tx.commit().await?;
        progress.cleaned = true;
        return Ok(progress);
    }
    let (start, edge) = (state.materialized_before, state.invalidated_before);
    let mut minutes = start;
    if start < edge {
        let from = first_rows(&mut tx, start, edge).await?;
        minutes = edge.min(from + SPAN);
        materialize(&mut tx, from, minutes).await?;
        progress.minutes = (minutes - start).whole_minutes();
    }
    // Complete hours (before the minute edge), then complete days (before the hour edge).
    let hours = state
        .hours_before
        .max(start_of(minutes, HOUR).min(state.hours_before + HOURS_SPAN));
    if hours > state.hours_before {
        roll_hours(&mut tx, state.hours_before, hours).await?;
        progress.hours = (hours - state.hours_before).whole_hours();
    }
    let days = state
        .days_before
        .max(start_of(hours, DAY).min(state.days_before + DAYS_SPAN));
    if days > state.days_before {
        roll_days(&mut tx, state.days_before, days).await?;
        progress.days = (days - state.days_before).whole_days();
    }
    progress.recomputed = recompute(&mut tx).await?;
    tx.commit().await?;
    progress.edge = Some(minutes);
    Ok(progress)
}

/// Runs follower steps until one finds nothing to do, `until` being the edge to reach; returns
/// what they did together. For tests, benchmarks and the follower's own catch-up.
pub async fn catch_up(pool: &PgPool, until: OffsetDateTime) -> Result<Progress, sqlx::Error> {
    let mut total = Progress::default();
    loop {
        let step = follow_step(pool, until).await?;
        total.edge = step.edge.or(total.edge);
        if step.is_idle() {
            return Ok(total);
        }
        total.minutes += step.minutes;
        total.hours += step.hours;
        total.days += step.days;
        total.recomputed += step.recomputed;
        total.cleaned |= step.cleaned;
    }
}

/// Removes the rollup rows from `from` on (written by processors before 015; `from` is the start
/// of a day, so no hour or day straddles it) and clears the mark. One scan of each rollup table,
/// once, in the background.
async fn clean_up(conn: &mut PgConnection, from: OffsetDateTime) -> Result<(), sqlx::Error> {
    sqlx::query!("DELETE FROM telemetry_rollup_1m WHERE bucket >= $1", from)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM telemetry_rollup_1h WHERE bucket >= $1", from)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM telemetry_rollup_1d WHERE bucket >= $1", from)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("UPDATE telemetry_rollup_state SET cleanup_from = NULL")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Where rows start in `[from, edge)`, to a `SPAN`: spans with no row are skipped four times
/// wider each time, so that a follower far behind (a gap of days) crosses the empty part in a few
/// probes of the `ts` index; `edge` when no span has rows.
async fn first_rows(
    conn: &mut PgConnection,
    mut from: OffsetDateTime,
    edge: OffsetDateTime,
) -> Result<OffsetDateTime, sqlx::Error> {
    let mut span = SPAN;
    loop {
        let to = edge.min(from + span);
        let rows = sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM telemetry WHERE ts >= $1 AND ts < $2) AS "rows!""#,
            from,
            to
        )
        .fetch_one(&mut *conn)
        .await?;
        if rows || to >= edge {
            return Ok(if rows { from } else { edge });
        }
        from = to;
        span *= 4;
    }
}

/// Rolls up the raw rows of `[from, to)` into their minutes (whole minutes no step rolled up
/// before; those between `materialized_before` and `from` hold no row) and moves
/// `materialized_before` to `to`.
///
/// Those minutes hold no rollup row, so a plain `INSERT` writes them: `ON CONFLICT DO UPDATE`
/// probes the key before each row and cost 40 % more per row (bench/RESULTS.md, "The follower's
/// minutes by a plain INSERT"). A minute that holds a row anyway (written by hand, or by a
/// processor before 015 past `cleanup_from`) fails it with a unique violation: the savepoint is
/// rolled back, the span's rows deleted and the span rolled up again, instead of the follower
/// stopping for good.
async fn materialize(
    conn: &mut PgConnection,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let mut first_try = conn.begin().await?;
    match roll_minutes(&mut first_try, from, to).await {
        Ok(()) => return first_try.commit().await,
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            first_try.rollback().await?;
            tracing::warn!(%from, %to, "minutes ahead of the rollup follower held rows; replacing them");
        }
        Err(e) => return Err(e),
    }
    sqlx::query!(
        "DELETE FROM telemetry_rollup_1m WHERE bucket >= $1 AND bucket < $2",
        from,
        to
    )
    .execute(&mut *conn)
    .await?;
    roll_minutes(conn, from, to).await
}

/// `materialize`'s statement: the minutes of `[from, to)` from raw rows, and the edge, at once.
async fn roll_minutes(
    conn: &mut PgConnection,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH minute AS (
           INSERT INTO telemetry_rollup_1m (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
           SELECT device_id, metric, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                  count(*), min(value), max(value), sum(value),
                  (min(first_last_key(ts, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), value)))[2], min(ts),
                  (max(first_last_key(ts, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), value)))[2], max(ts)
           FROM telemetry WHERE ts >= $1 AND ts < $2 AND value IS NOT NULL
           GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
         )
         UPDATE telemetry_rollup_state SET materialized_before = $2",
        from,
        to
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Rolls up the complete hours of `[from, to)` from their minutes (read by bucket, 016's index)
/// and moves `hours_before` to `to`.
async fn roll_hours(
    conn: &mut PgConnection,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH hour AS (
           INSERT INTO telemetry_rollup_1h AS r (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
           SELECT device_id, metric, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                  sum(count), min(min), max(max), sum(sum),
                  (min(first_last_key(first_ts, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), first)))[2], min(first_ts),
                  (max(first_last_key(last_ts, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), last)))[2], max(last_ts)
           FROM telemetry_rollup_1m WHERE bucket >= $1 AND bucket < $2
           GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
           ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
               count = EXCLUDED.count, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
               first = EXCLUDED.first, first_ts = EXCLUDED.first_ts, last = EXCLUDED.last, last_ts = EXCLUDED.last_ts
         )
         UPDATE telemetry_rollup_state SET hours_before = $2",
        from,
        to
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Rolls up the complete days of `[from, to)` from their hours and moves `days_before` to `to`.
async fn roll_days(
    conn: &mut PgConnection,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH day AS (
           INSERT INTO telemetry_rollup_1d AS r (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
           SELECT device_id, metric, date_bin('1 day', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                  sum(count), min(min), max(max), sum(sum),
                  (min(first_last_key(first_ts, date_bin('1 day', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), first)))[2], min(first_ts),
                  (max(first_last_key(last_ts, date_bin('1 day', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), last)))[2], max(last_ts)
           FROM telemetry_rollup_1h WHERE bucket >= $1 AND bucket < $2
           GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
           ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
               count = EXCLUDED.count, min = EXCLUDED.min, max = EXCLUDED.max, sum = EXCLUDED.sum,
               first = EXCLUDED.first, first_ts = EXCLUDED.first_ts, last = EXCLUDED.last, last_ts = EXCLUDED.last_ts
         )
         UPDATE telemetry_rollup_state SET days_before = $2",
        from,
        to
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The start of the bucket of `secs` (from the common origin) that holds `t`.
fn start_of(t: OffsetDateTime, secs: i64) -> OffsetDateTime {
    let into = (t.unix_timestamp() - ORIGIN).rem_euclid(secs);
    let start = t - time::Duration::seconds(into);
    start.replace_nanosecond(0).unwrap_or(start)
}

/// Takes up to `RECOMPUTE_PER_STEP` logged minutes before `materialized_before` (a minute after it
/// is still ahead of the follower, which will roll it up whole) and recomputes each from raw rows,
/// then their hours from minutes and their days from hours, where those were rolled up already
/// (the others will be, whole). Returns how many were taken.
async fn recompute(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let taken = sqlx::query!(
        r#"DELETE FROM telemetry_rollup_invalidations
           WHERE ctid = ANY(ARRAY(
               SELECT i.ctid FROM telemetry_rollup_invalidations i, telemetry_rollup_state s
               WHERE i.bucket < s.materialized_before LIMIT $1))
           RETURNING device_id, metric, bucket"#,
        RECOMPUTE_PER_STEP
    )
    .fetch_all(&mut *conn)
    .await?;
    if taken.is_empty() {
        return Ok(0);
    }
    let count = taken.len() as u64;
    let (mut devices, mut metrics, mut buckets) = (Vec::new(), Vec::new(), Vec::new());
    for t in taken {
        devices.push(t.device_id);
        metrics.push(t.metric);
        buckets.push(t.bucket);
    }
    sqlx::query!(
        "DELETE FROM telemetry_rollup_1m r
         USING UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS k(device_id, metric, bucket)
         WHERE r.device_id = k.device_id AND r.metric = k.metric AND r.bucket = k.bucket",
        &devices,
        &metrics,
        &buckets
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO telemetry_rollup_1m (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         SELECT t.device_id, t.metric, k.bucket, count(*), min(t.value), max(t.value), sum(t.value),
                (min(first_last_key(t.ts, k.bucket, t.value)))[2], min(t.ts),
                (max(first_last_key(t.ts, k.bucket, t.value)))[2], max(t.ts)
         FROM (SELECT DISTINCT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[])) AS k(device_id, metric, bucket)
         JOIN telemetry t ON t.device_id = k.device_id AND t.metric = k.metric
                         AND t.ts >= k.bucket AND t.ts < k.bucket + interval '1 minute'
         WHERE t.value IS NOT NULL
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        &devices,
        &metrics,
        &buckets
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "DELETE FROM telemetry_rollup_1h r
         USING UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS k(device_id, metric, bucket)
         WHERE r.device_id = k.device_id AND r.metric = k.metric
           AND r.bucket = date_bin('1 hour', k.bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00')
           AND r.bucket < (SELECT hours_before FROM telemetry_rollup_state)",
        &devices,
        &metrics,
        &buckets
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO telemetry_rollup_1h (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         SELECT r.device_id, r.metric, k.hour, sum(r.count), min(r.min), max(r.max), sum(r.sum),
                (min(first_last_key(r.first_ts, k.hour, r.first)))[2], min(r.first_ts),
                (max(first_last_key(r.last_ts, k.hour, r.last)))[2], max(r.last_ts)
         FROM (SELECT DISTINCT device_id, metric, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour
               FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS u(device_id, metric, bucket)) k
         JOIN telemetry_rollup_1m r ON r.device_id = k.device_id AND r.metric = k.metric
                                   AND r.bucket >= k.hour AND r.bucket < k.hour + interval '1 hour'
         WHERE k.hour < (SELECT hours_before FROM telemetry_rollup_state)
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        &devices,
        &metrics,
        &buckets
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "DELETE FROM telemetry_rollup_1d r
         USING UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS k(device_id, metric, bucket)
         WHERE r.device_id = k.device_id AND r.metric = k.metric
           AND r.bucket = date_bin('1 day', k.bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00')
           AND r.bucket < (SELECT days_before FROM telemetry_rollup_state)",
        &devices,
        &metrics,
        &buckets
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO telemetry_rollup_1d (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         SELECT r.device_id, r.metric, k.day, sum(r.count), min(r.min), max(r.max), sum(r.sum),
                (min(first_last_key(r.first_ts, k.day, r.first)))[2], min(r.first_ts),
                (max(first_last_key(r.last_ts, k.day, r.last)))[2], max(r.last_ts)
         FROM (SELECT DISTINCT device_id, metric, date_bin('1 day', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS day
               FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS u(device_id, metric, bucket)) k
         JOIN telemetry_rollup_1h r ON r.device_id = k.device_id AND r.metric = k.metric
                                   AND r.bucket >= k.day AND r.bucket < k.day + interval '1 day'
         WHERE k.day < (SELECT days_before FROM telemetry_rollup_state)
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        &devices,
        &metrics,
        &buckets
    )
    .execute(&mut *conn)
    .await?;
    Ok(count)
}

/// The rollup task of every `gito-api serve` (supervised): the backfill of rows stored before
/// 014, then the follower, `lag` behind now, until `stop`. Failures are logged, reported as
/// `rollups` degraded in `/status`, and retried with backoff: the database may be away for a
/// while. Each follower step exports how far behind now its minute edge is
/// (`gito_rollup_behind_seconds`) and what it rolled up.
pub async fn run(
    pool: PgPool,
    lag: Duration,
    health: Health,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut rolled = 0;
    let mut backfilled = false;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let outcome = if backfilled {
            follow_step(&pool, OffsetDateTime::now_utc() - lag)
                .await
                .map(|progress| {
                    record(&progress);
                    progress.is_idle()
                })
        } else {
            backfill_step(&pool, DEVICES_PER_STEP)
                .await
                .map(|step| match step {
                    Step::Done => {
                        if rolled > 0 {
                            tracing::info!(devices = rolled, "rollup backfill done");
                        }
                        backfilled = true;
                        false
                    }
                    Step::Devices(n) => {
                        if rolled == 0 {
                            tracing::info!("rollup backfill of rows stored before 014 started");
                        }
                        rolled += n;
                        false
                    }
                })
        };
        let pause = match outcome {
            Ok(idle) => {
                health.up(status::ROLLUPS);
                backoff.reset();
                if idle { POLL } else { Duration::ZERO }
            }
            Err(e) => {
                tracing::warn!(error = %e, "rollup step failed; retrying");
                health.degraded(status::ROLLUPS, &e);
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Exports what a follower step did and where its minute edge stands.
fn record(progress: &Progress) {
    if let Some(edge) = progress.edge {
        let behind = (OffsetDateTime::now_utc() - edge).as_seconds_f64().max(0.0);
        metrics::gauge!("gito_rollup_behind_seconds").set(behind);
    }
    metrics::counter!("gito_rollup_minutes_total").increment(progress.minutes.max(0) as u64);
    metrics::counter!("gito_rollup_late_minutes_total").increment(progress.recomputed);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-24T00:00:00Z plus `secs`.
    fn at(secs: f64) -> Option<OffsetDateTime> {
        let nanos = (1_795_478_400.0 + secs) * 1e9;
        Some(OffsetDateTime::from_unix_timestamp_nanos(nanos as i128).expect("a time"))
    }

    #[test]
    fn the_coarsest_rollup_that_divides_the_bucket_and_the_bounds_answers() {
        let any = |b| Source::for_buckets(b, None, None);
        assert_eq!(any(86_400), Source::Day);
        assert_eq!(any(7 * 86_400), Source::Day);
        assert_eq!(any(3600), Source::Hour);
        assert_eq!(any(6 * 3600), Source::Hour);
        assert_eq!(any(900), Source::Minute);
        assert_eq!(any(90), Source::Raw, "90 s is no multiple of a minute");
        assert_eq!(any(7), Source::Raw);
        assert_eq!(
            Source::for_buckets(86_400, at(0.0), at(86_400.0)),
            Source::Day
        );
        assert_eq!(
            Source::for_buckets(86_400, at(3600.0), None),
            Source::Hour,
            "a from inside a day cuts the daily bucket, not the hourly ones"
        );
        assert_eq!(Source::for_buckets(3600, at(60.0), None), Source::Minute);
        assert_eq!(Source::for_buckets(3600, None, at(1.0)), Source::Raw);
        assert_eq!(Source::for_buckets(60, at(0.5), None), Source::Raw);
    }
}
