//! The processor: rows per second it stores from a backlog on the broker, with one worker (the
//! default) and with two, beside a plain `COPY` of the same rows into the same table in the same
//! run.

use std::time::{Duration, Instant};

use gito_testkit::{Broker, TestDb, publish_all};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::procs::{Process, Stats, per_1000};
use crate::stack;

pub struct ProcessorResult {
    pub rows: u64,
    pub devices: usize,
    /// One run per `GITO_PROCESSOR_WORKERS` in `WORKERS`.
    pub runs: Vec<Run>,
    pub copy_rows_per_sec: f64,
}

pub struct Run {
    pub workers: usize,
    pub rows_per_sec: f64,
    pub cpu_per_1000: f64,
    pub peak_rss_mib: f64,
}

/// The default (one batch in PostgreSQL at a time), and two at a time.
const WORKERS: [usize; 2] = [1, 2];

pub async fn run(messages: u64, devices: usize) -> anyhow::Result<ProcessorResult> {
    let db = TestDb::migrated().await;
    let broker = Broker::start_with("max_inflight_messages 1000\n").await;
    let api = stack::start_api(
        &db.url,
        &[
            ("GITO_PROCESSOR", "off".into()),
            ("GITO_LIVE", "off".into()),
        ],
    )
    .await?;
    let stack::Tenant { id: tenant, token } = stack::create_tenant(&api.url).await?;
    let ids = create_devices(&api.url, tenant, &token, devices).await?;
    api.process.stop().await;

    // The processor's session must exist for the broker to keep the backlog for it.
    let env = [
        ("DATABASE_URL", db.url.clone()),
        ("GITO_MQTT_URL", broker.url()),
        ("GITO_PROCESSOR_CLIENT_ID", "bench-processor".to_owned()),
    ];
    let first = Process::spawn_args("gito-api", &["processor"], &env)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.stop().await;
    let batch = envelopes(tenant, &ids, messages);
    let mut conn = PgConnection::connect(&db.url).await?;
    let mut runs = Vec::new();
    for workers in WORKERS {
        publish_all(&broker.url(), batch.clone()).await;
        let mut env = env.to_vec();
        env.push(("GITO_PROCESSOR_WORKERS", workers.to_string()));
        runs.push(stored_by(&mut conn, &env, &batch, workers).await?);
        // The next run finds what this one did: no rows, devices never heard of.
        sqlx::query("TRUNCATE telemetry").execute(&mut conn).await?;
        sqlx::query("DELETE FROM device_connectivity")
            .execute(&mut conn)
            .await?;
        sqlx::query("UPDATE devices SET last_seen_at = NULL")
            .execute(&mut conn)
            .await?;
    }
    let copy_started = Instant::now();
    copy(&mut conn, &batch).await?;
    let copy_elapsed = copy_started.elapsed();
    Ok(ProcessorResult {
        rows: messages,
        devices,
        runs,
        copy_rows_per_sec: messages as f64 / copy_elapsed.as_secs_f64(),
    })
}

/// Starts a processor on the backlog of `batch` and measures it until every row is stored.
async fn stored_by(
    conn: &mut PgConnection,
    env: &[(&str, String)],
    batch: &[(String, Vec<u8>)],
    workers: usize,
) -> anyhow::Result<Run> {
    let messages = batch.len() as u64;
    let started = Instant::now();
    let processor = Process::spawn_args("gito-api", &["processor"], env)?;
    // Done when the last message's row is in (one index lookup, cheap to ask every 10 ms) and
    // then the count is complete; `count(*)` every 50 ms instead cost PostgreSQL 1.8-2 s per run,
    // taken from the processor being measured (a statement log, 2026-12-04).
    let (last_device, last_ts) = last_row(batch)?;
    let mut last_seen = false;
    loop {
        if !last_seen {
            last_seen = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM telemetry WHERE device_id = $1 AND ts = $2)",
            )
            .bind(last_device)
            .bind(last_ts)
            .fetch_one(&mut *conn)
            .await?;
        }
        let rows: i64 = if last_seen {
            sqlx::query_scalar("SELECT count(*) FROM telemetry")
                .fetch_one(&mut *conn)
                .await?
        } else {
            0
        };
        if rows as u64 >= messages {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "processor stored {rows} of {messages}"
        );
        tokio::time::sleep(Duration::from_millis(if last_seen { 50 } else { 10 })).await;
    }
    let elapsed = started.elapsed();
    let stats: Stats = processor.stats();
    processor.stop().await;
    Ok(Run {
        workers,
        rows_per_sec: messages as f64 / elapsed.as_secs_f64(),
        cpu_per_1000: per_1000(stats.cpu_secs, messages),
        peak_rss_mib: stats.peak_rss_mib,
    })
}

async fn create_devices(
    api_url: &str,
    tenant: Uuid,
    token: &str,
    n: usize,
) -> anyhow::Result<Vec<Uuid>> {
    let http = gito_testkit::client_with_token(token);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let device: Value = http
            .post(format!("{api_url}/tenants/{tenant}/devices"))
            .json(&json!({ "name": format!("d{i}"), "external_id": format!("SDE11/D{i}") }))
            .send()
            .await?
            .json()
            .await?;
        ids.push(
            device["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no id"))?,
        );
    }
    Ok(ids)
}

/// One metric per envelope, distinct event times from now on (a live stream: none of them late for
/// the rollup follower, which would cost a recompute per minute): every message is one row.
pub fn envelopes(tenant: Uuid, devices: &[Uuid], n: u64) -> Vec<(String, Vec<u8>)> {
    let base = time::OffsetDateTime::now_utc();
    (0..n)
        .map(|i| {
            let device = devices[i as usize % devices.len()];
            let ts = (base + time::Duration::milliseconds(i as i64)).format(&Rfc3339).expect("format");
            let payload = json!({ "ts": ts, "source_topic": "bench", "metrics": { "CHIMNEY_TEMP": (i % 500) as f64 } });
            (format!("{tenant}/devices/{device}/telemetry"), payload.to_string().into_bytes())
        })
        .collect()
}

/// The device and event time of the last message of `batch`.
fn last_row(batch: &[(String, Vec<u8>)]) -> anyhow::Result<(Uuid, time::OffsetDateTime)> {
    let (topic, payload) = batch.last().ok_or_else(|| anyhow::anyhow!("no messages"))?;
    let device = topic.split('/').nth(2).unwrap_or_default().parse()?;
    let body: Value = serde_json::from_slice(payload)?;
    let ts = time::OffsetDateTime::parse(body["ts"].as_str().unwrap_or_default(), &Rfc3339)?;
    Ok((device, ts))
}

/// The same rows with `COPY ... FROM STDIN`.
async fn copy(conn: &mut PgConnection, batch: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let mut csv = String::with_capacity(batch.len() * 80);
    for (topic, payload) in batch {
        let device = topic.split('/').nth(2).unwrap_or_default();
        let body: Value = serde_json::from_slice(payload)?;
        let ts = body["ts"].as_str().unwrap_or_default();
        let value = body["metrics"]["CHIMNEY_TEMP"].as_f64().unwrap_or_default();
        csv.push_str(&format!("{device},{ts},CHIMNEY_TEMP,{value},false\n"));
    }
    let mut copy = conn
        .copy_in_raw(
            "COPY telemetry (device_id, ts, metric, value, flagged) FROM STDIN (FORMAT csv)",
        )
        .await?;
    copy.send(csv.into_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

impl ProcessorResult {
    pub fn rows(&self) -> Vec<crate::Row> {
        use crate::Row;
        let mut rows = Vec::new();
        for run in &self.runs {
            let ratio = run.rows_per_sec / self.copy_rows_per_sec;
            let default = if run.workers == 1 {
                ", the default"
            } else {
                ""
            };
            rows.push(
                Row::new(
                    format!(
                        "processor, {} rows over {} devices, GITO_PROCESSOR_WORKERS={}{default}",
                        self.rows, self.devices, run.workers
                    ),
                    format!("{:.0} rows/s", run.rows_per_sec),
                )
                .against(format!("COPY {:.0} rows/s", self.copy_rows_per_sec), ratio)
                .target("≥ 0.8× COPY", ratio >= 0.8),
            );
            rows.push(Row::new(
                "  processor CPU per 1000 msgs / peak RSS",
                format!("{:.3} s / {:.1} MiB", run.cpu_per_1000, run.peak_rss_mib),
            ));
        }
        rows
    }
}
