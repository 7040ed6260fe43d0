//! The storing path, shared by batches and by replayed dead letters: checked messages become rows
//! in one statement that also logs the minutes of late rows for the rollup follower (a redelivered
//! envelope logs nothing), samples older than their tenant's retention are counted and dropped, `last_seen_at` moves once per device, and alert rules are
//! evaluated, all in the caller's transaction.

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

/// Stores `messages` in `conn` (a transaction the caller commits). `default_retention_days`
/// applies to tenants without their own `retention_days` (`None`: forever).
pub async fn store(
    conn: &mut PgConnection,
    messages: &[Checked<'_>],
    default_retention_days: Option<u32>,
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
    let inserted = merge(&mut *conn, &rows).await?;
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

/// Inserts the rows; returns how many were new. Of the new numeric rows older than
/// `invalidated_before` (late for the rollup follower, `crate::rollups`), the same statement logs
/// each (device, metric, minute) once for the follower to recompute; a row stored before (a
/// redelivery) is not returned by the insert, so it logs nothing. Rows are written in key order,
/// so that concurrent processors lock in the same order. The shared `rollups::LOCK`, held until
/// the caller commits, keeps the follower from moving the edge between the read and the commit.
pub async fn merge(conn: &mut PgConnection, rows: &Rows) -> Result<u64, sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock_shared($1)",
        crate::rollups::LOCK
    )
    .execute(&mut *conn)
    .await?;
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
