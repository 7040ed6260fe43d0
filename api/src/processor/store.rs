//! The storing path, shared by batches and by replayed dead letters: checked messages become rows
//! (binary `COPY` when they are all new, an idempotent merge otherwise, `Insert`) and the minutes
//! of late rows are logged for the rollup follower (a redelivered envelope logs nothing), samples
//! older than their tenant's retention are counted and dropped, `last_seen_at` moves once per
//! device, and alert rules are evaluated, all in the caller's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gito_wire::{Envelope, LiveEvent, MetricValue};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::alerts::{self, Sample};
use super::devices::DeviceInfo;

/// One message that passed every check: a valid envelope of an existing device of the topic's
/// tenant.
#[derive(Debug, Clone, Copy)]
pub struct Checked<'a> {
    pub device_id: Uuid,
    pub envelope: &'a Envelope,
    pub device: &'a DeviceInfo,
}

impl Checked<'_> {
    pub fn rows(&self) -> usize {
        self.envelope.metrics.len()
    }
}

/// What storing some messages did.
#[derive(Debug, Default)]
pub struct Stored {
    /// Rows within retention (new or stored before).
    pub rows: u64,
    /// Rows older than their tenant's retention: not stored.
    pub expired: u64,
    /// Rows that were new (the others were stored before: a redelivery, a replay).
    pub inserted: u64,
    pub flagged: u64,
    /// Alert changes (and, on the live path, connectivity changes) to announce after commit.
    pub events: Vec<LiveEvent>,
}

#[derive(Debug, Default)]
pub struct Rows {
    pub device_id: Vec<Uuid>,
    pub ts: Vec<OffsetDateTime>,
    pub metric: Vec<String>,
    pub value: Vec<Option<f64>>,
    pub value_json: Vec<Option<serde_json::Value>>,
    pub flagged: Vec<bool>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.device_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.device_id.is_empty()
    }
}

/// How rows get into `telemetry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// Binary `COPY`, for rows expected to be new: a quarter less of PostgreSQL's time than the
    /// merge (bench/RESULTS.md). A row stored before (a redelivery) fails the whole statement with
    /// a unique violation (`is_stored_before`): the caller rolls back and stores the same rows
    /// again with `Merge`.
    Copy,
    /// `INSERT ... ON CONFLICT DO NOTHING`: a row stored before is skipped and not counted.
    Merge,
}

/// `Insert::Copy` met a row stored before (or the same row twice): store again with `Merge`.
pub fn is_stored_before(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| matches!(e.kind(), sqlx::error::ErrorKind::UniqueViolation))
}

/// Stores `messages` in `conn` (a transaction the caller commits). `default_retention_days`
/// applies to tenants without their own `retention_days` (`None`: forever).
pub async fn store(
    conn: &mut PgConnection,
    messages: &[Checked<'_>],
    default_retention_days: Option<u32>,
    how: Insert,
) -> Result<Stored, sqlx::Error> {
    let tenants: Vec<Uuid> = messages
        .iter()
        .map(|m| m.device.tenant_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let oldest = oldest_kept(&mut *conn, &tenants, default_retention_days).await?;
    let mut expired = 0;
    let mut rows = Rows::default();
    // In id order, as `touch` locks them: two processors never wait for each other in a cycle.
    let mut newest: BTreeMap<Uuid, OffsetDateTime> = BTreeMap::new();
    let mut samples = Vec::new();
    for message in messages {
        let Checked {
            device_id,
            envelope,
            device,
        } = *message;
        if oldest
            .get(&device.tenant_id)
            .is_some_and(|oldest| envelope.ts < *oldest)
        {
            expired += envelope.metrics.len() as u64;
            continue;
        }
        let seen = newest.entry(device_id).or_insert(envelope.ts);
        *seen = (*seen).max(envelope.ts);
        for (metric, value) in &envelope.metrics {
            let number = value.numeric();
            rows.device_id.push(device_id);
            rows.ts.push(envelope.ts);
            rows.metric.push(metric.clone());
            rows.flagged.push(device.is_unexpected(metric, number));
            match value {
                MetricValue::Number(n) => {
                    rows.value.push(Some(*n));
                    rows.value_json.push(None);
                }
                MetricValue::Bool(b) => {
                    rows.value.push(number);
                    rows.value_json.push(Some((*b).into()));
                }
                MetricValue::Text(s) => {
                    rows.value.push(None);
                    rows.value_json.push(Some(s.clone().into()));
                }
            }
            if let Some(value) = number {
                samples.push(Sample {
                    device_id,
                    device,
                    ts: envelope.ts,
                    metric,
                    value,
                });
            }
        }
    }
    if rows.is_empty() {
        return Ok(Stored {
            expired,
            ..Stored::default()
        });
    }
    let inserted = insert(&mut *conn, &rows, how).await?;
    let (devices, times): (Vec<Uuid>, Vec<OffsetDateTime>) = newest.into_iter().unzip();
    touch(&mut *conn, &devices, &times).await?;
    let rules = alerts::rules_for(&mut *conn, &tenants).await?;
    let events = if rules.is_empty() {
        Vec::new()
    } else {
        alerts::evaluate(&mut *conn, &rules, &samples)
            .await?
            .into_iter()
            .map(LiveEvent::Alert)
            .collect()
    };
    Ok(Stored {
        rows: rows.len() as u64,
        expired,
        inserted,
        flagged: rows.flagged.iter().filter(|f| **f).count() as u64,
        events,
    })
}

/// The oldest event time each of `tenants` still keeps (absent: kept forever): its own
/// `retention_days`, else `default_days`, back from now.
async fn oldest_kept(
    conn: &mut PgConnection,
    tenants: &[Uuid],
    default_days: Option<u32>,
) -> Result<HashMap<Uuid, OffsetDateTime>, sqlx::Error> {
    let default_days = default_days.map(|d| i32::try_from(d).unwrap_or(i32::MAX));
    let rows = sqlx::query!(
        r#"SELECT id AS "id!", now() - make_interval(days => COALESCE(retention_days, $2)) AS "oldest!"
           FROM tenants WHERE id = ANY($1) AND COALESCE(retention_days, $2) IS NOT NULL"#,
        tenants,
        default_days
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.oldest)).collect())
}

/// Inserts the rows `how` says; returns how many were new. Of the new numeric rows older than
/// `invalidated_before` (late for the rollup follower, `crate::rollups`), each (device, metric,
/// minute) is logged once for the follower to recompute; a row stored before (a redelivery) is
/// not new, so it logs nothing. Rows are written in key order, so that concurrent processors lock
/// in the same order. The shared `rollups::LOCK`, taken first and held until the caller commits,
/// keeps the follower from moving the edge between its read and the commit.
pub async fn insert(conn: &mut PgConnection, rows: &Rows, how: Insert) -> Result<u64, sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock_shared($1)",
        crate::rollups::LOCK
    )
    .execute(&mut *conn)
    .await?;
    match how {
        Insert::Copy => copy(conn, rows).await,
        Insert::Merge => merge(conn, rows).await,
    }
}

/// Every row new: `COPY` them, then log the late ones' minutes. The edge is read in a statement
/// of its own, after the lock: a statement's snapshot is taken when it starts.
async fn copy(conn: &mut PgConnection, rows: &Rows) -> Result<u64, sqlx::Error> {
    let edge = sqlx::query_scalar!("SELECT invalidated_before FROM telemetry_rollup_state")
        .fetch_one(&mut *conn)
        .await?;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by(|&a, &b| {
        (rows.device_id[a], &rows.metric[a], rows.ts[a]).cmp(&(
            rows.device_id[b],
            &rows.metric[b],
            rows.ts[b],
        ))
    });
    let mut copy = conn
        .copy_in_raw(
            "COPY telemetry (device_id, ts, metric, value, value_json, flagged) FROM STDIN (FORMAT binary)",
        )
        .await?;
    copy.send(binary_copy(rows, &order)).await?;
    let copied = copy.finish().await?;
    let late: Vec<usize> = order
        .into_iter()
        .filter(|&i| rows.value[i].is_some() && rows.ts[i] < edge)
        .collect();
    if !late.is_empty() {
        let device_ids: Vec<Uuid> = late.iter().map(|&i| rows.device_id[i]).collect();
        let metrics: Vec<&str> = late.iter().map(|&i| rows.metric[i].as_str()).collect();
        let times: Vec<OffsetDateTime> = late.iter().map(|&i| rows.ts[i]).collect();
        sqlx::query!(
            "INSERT INTO telemetry_rollup_invalidations (device_id, metric, bucket)
             SELECT DISTINCT device_id, metric, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')
             FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS u(device_id, metric, ts)",
            &device_ids,
            &metrics as &[&str],
            &times
        )
        .execute(&mut *conn)
        .await?;
    }
    Ok(copied)
}

/// Microseconds from 2000-01-01 UTC (PostgreSQL's epoch) to `ts`, truncated as sqlx encodes a
/// bound `OffsetDateTime`: a row copied and the same row merged later have the same key.
fn pg_micros(ts: OffsetDateTime) -> i64 {
    const PG_EPOCH_UNIX_NANOS: i128 = 946_684_800_000_000_000;
    // Within i64 for every year OffsetDateTime can hold.
    ((ts.unix_timestamp_nanos() - PG_EPOCH_UNIX_NANOS) / 1000) as i64
}

/// `rows` in `order`, in PostgreSQL's binary `COPY` format: a header, then per row its number of
/// fields and each field as its length (-1: NULL) and bytes, then -1.
fn binary_copy(rows: &Rows, order: &[usize]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        // A field is part of a message the batch's byte bound admitted: far below i32::MAX.
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    const NULL: [u8; 4] = (-1i32).to_be_bytes();
    let mut out = Vec::with_capacity(21 + rows.len() * 100);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    out.extend_from_slice(&0i32.to_be_bytes()); // no header extension
    let mut json = Vec::new();
    for &i in order {
        out.extend_from_slice(&6i16.to_be_bytes());
        field(&mut out, rows.device_id[i].as_bytes());
        field(&mut out, &pg_micros(rows.ts[i]).to_be_bytes());
        field(&mut out, rows.metric[i].as_bytes());
        match rows.value[i] {
            Some(value) => field(&mut out, &value.to_be_bytes()),
            None => out.extend_from_slice(&NULL),
        }
        match &rows.value_json[i] {
            Some(value) => {
                // jsonb's binary form: a version byte (1), then the text.
                json.clear();
                json.push(1);
                json.extend_from_slice(value.to_string().as_bytes());
                field(&mut out, &json);
            }
            None => out.extend_from_slice(&NULL),
        }
        field(&mut out, &[u8::from(rows.flagged[i])]);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Some rows may have been stored before: skip those, in one statement that also logs the new
/// late rows' minutes.
async fn merge(conn: &mut PgConnection, rows: &Rows) -> Result<u64, sqlx::Error> {
    let inserted = sqlx::query_scalar!(
        r#"WITH new AS (
             INSERT INTO telemetry (device_id, ts, metric, value, value_json, flagged)
             SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::float8[], $5::jsonb[], $6::bool[])
                 AS u(device_id, ts, metric, value, value_json, flagged)
             ORDER BY device_id, metric, ts
             ON CONFLICT (device_id, metric, ts) DO NOTHING
             RETURNING device_id, metric, ts, value
           ), late AS (
             INSERT INTO telemetry_rollup_invalidations (device_id, metric, bucket)
             SELECT DISTINCT n.device_id, n.metric, date_bin('1 minute', n.ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')
             FROM new n, telemetry_rollup_state s
             WHERE n.value IS NOT NULL AND n.ts < s.invalidated_before
           )
           SELECT count(*) AS "inserted!" FROM new"#,
        &rows.device_id,
        &rows.ts,
        &rows.metric,
        &rows.value as &[Option<f64>],
        &rows.value_json as &[Option<serde_json::Value>],
        &rows.flagged
    )
    .fetch_one(conn)
    .await?;
    Ok(inserted as u64)
}

/// Moves each device's `last_seen_at` forward to its newest event time in the batch (`devices` in
/// id order).
pub async fn touch(
    conn: &mut PgConnection,
    devices: &[Uuid],
    newest: &[OffsetDateTime],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE devices d SET last_seen_at = GREATEST(d.last_seen_at, v.ts)
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS v(id, ts)
         WHERE d.id = v.id AND (d.last_seen_at IS NULL OR d.last_seen_at < v.ts)",
        devices,
        newest
    )
    .execute(conn)
    .await?;
    Ok(())
}
