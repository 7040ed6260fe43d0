//! Writing a batch: one statement for all rows, idempotent (a redelivered envelope adds nothing),
//! and `last_seen_at` once per device.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

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
