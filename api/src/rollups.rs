//! Rollups: per device and metric, the count, min, max, sum, first and last of numeric telemetry
//! per minute, hour and day (`telemetry_rollup_1m`, `_1h`, `_1d`), so that a month of hourly
//! buckets reads hundreds of rows instead of millions. The processor keeps them in the statement
//! that stores the raw rows (`processor::store`), from exactly the rows that statement inserted;
//! rows stored before migration 014 are rolled up by `backfill`, device by device, and a query uses
//! a rollup for a device only once the backfill has passed it (`complete_for`).

use std::time::Duration;

use gito_runtime::Backoff;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

/// Held shared by every merge (`processor::store`) and exclusively by a backfill step, so that a
/// step recomputes its devices' rollups from raw rows with no merge half done beside it.
pub const LOCK: i64 = 0x6769_746f_726f_6c6c; // "gitoroll"

/// Devices rolled up per backfill step (one transaction, `LOCK` held: merges wait meanwhile).
pub const DEVICES_PER_STEP: i64 = 20;

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

/// True when `device_id`'s rollups hold every one of its stored rows: the backfill is done or has
/// passed the device.
pub async fn complete_for(conn: &mut PgConnection, device_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT (done OR device_id <= after_device) IS TRUE AS "complete!"
           FROM telemetry_rollup_backfill, (SELECT $1::uuid AS device_id) d"#,
        device_id
    )
    .fetch_optional(conn)
    .await
    .map(|c| c.unwrap_or(false))
}

/// What one backfill step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Rolled up this many devices; more may follow.
    Devices(usize),
    /// Every device is rolled up (now or before).
    Done,
}

/// Rolls up the next `devices` devices (in id order) from their raw rows, replacing whatever their
/// rollups held, and moves the persisted position past them; marks the backfill done when no
/// device is left. Safe with many processors at once (`LOCK`), and across restarts (the position
/// commits with the rollups).
#[tracing::instrument(skip_all)]
pub async fn backfill_step(pool: &PgPool, devices: i64) -> Result<Step, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", LOCK)
        .execute(&mut *tx)
        .await?;
    let state = sqlx::query!("SELECT done, after_device FROM telemetry_rollup_backfill FOR UPDATE")
        .fetch_optional(&mut *tx)
        .await?;
    let after = match state {
        Some(s) if !s.done => s.after_device,
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
                (array_agg(value ORDER BY ts))[1], min(ts), (array_agg(value ORDER BY ts DESC))[1], max(ts)
         FROM telemetry WHERE device_id = ANY($1) AND value IS NOT NULL
         GROUP BY 1, 2, 3",
        &ids
    )
    .execute(&mut *tx)
    .await?;
    // Hours and days from the minutes: the same numbers, from far fewer rows.
    sqlx::query!(
        "INSERT INTO telemetry_rollup_1h (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         SELECT device_id, metric, date_bin('1 hour', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                sum(count), min(min), max(max), sum(sum),
                (array_agg(first ORDER BY first_ts))[1], min(first_ts),
                (array_agg(last ORDER BY last_ts DESC))[1], max(last_ts)
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
                (array_agg(first ORDER BY first_ts))[1], min(first_ts),
                (array_agg(last ORDER BY last_ts DESC))[1], max(last_ts)
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

/// Runs the backfill to its end (a no-op once done), retrying failures with backoff; returns at
/// `shutdown` too. Started by every processor: the steps take turns (`LOCK`).
pub async fn backfill(pool: PgPool, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut rolled = 0;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        match backfill_step(&pool, DEVICES_PER_STEP).await {
            Ok(Step::Done) => {
                if rolled > 0 {
                    tracing::info!(devices = rolled, "rollup backfill done");
                }
                return;
            }
            Ok(Step::Devices(n)) => {
                if rolled == 0 {
                    tracing::info!("rollup backfill of rows stored before 014 started");
                }
                rolled += n;
                backoff.reset();
                // Let the merges that waited for the step through before the next one.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "rollup backfill step failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
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
