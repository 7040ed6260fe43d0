//! The storing path, shared by batches and by replayed dead letters: checked messages become rows
//! in one statement, idempotent (a redelivered envelope adds nothing), `last_seen_at` moves once
//! per device, and alert rules are evaluated, all in the caller's transaction.

use std::collections::{BTreeSet, HashMap};

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
    pub rows: u64,
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

/// Stores `messages` in `conn` (a transaction the caller commits).
pub async fn store(
    conn: &mut PgConnection,
    messages: &[Checked<'_>],
) -> Result<Stored, sqlx::Error> {
    let mut rows = Rows::default();
    let mut newest: HashMap<Uuid, OffsetDateTime> = HashMap::new();
    let mut samples = Vec::new();
    let mut tenants = BTreeSet::new();
    for message in messages {
        let Checked {
            device_id,
            envelope,
            device,
        } = *message;
        tenants.insert(device.tenant_id);
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
        return Ok(Stored::default());
    }
    let inserted = insert(&mut *conn, &rows).await?;
    let (devices, times): (Vec<Uuid>, Vec<OffsetDateTime>) = newest.into_iter().unzip();
    touch(&mut *conn, &devices, &times).await?;
    let tenants: Vec<Uuid> = tenants.into_iter().collect();
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
        inserted,
        flagged: rows.flagged.iter().filter(|f| **f).count() as u64,
        events,
    })
}

/// Inserts the rows; returns how many were new.
pub async fn insert(conn: &mut PgConnection, rows: &Rows) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        "INSERT INTO telemetry (device_id, ts, metric, value, value_json, flagged)
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::float8[], $5::jsonb[], $6::bool[])
         ON CONFLICT (device_id, metric, ts) DO NOTHING",
        &rows.device_id,
        &rows.ts,
        &rows.metric,
        &rows.value as &[Option<f64>],
        &rows.value_json as &[Option<serde_json::Value>],
        &rows.flagged
    )
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Moves each device's `last_seen_at` forward to its newest event time in the batch.
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
