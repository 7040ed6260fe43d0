//! The whole pipeline: publisher → external Mosquitto → gito-bridge → local Mosquitto →
//! processor (in gito-api) → PostgreSQL, QoS 1 all the way, over many devices.
//!
//! Throughput is counted in the database. Latency (publish → committed row) comes from two curves
//! sampled in the same run: when the i-th message was handed to the publisher, and when the row
//! count first reached i (sampled every 25 ms). Rows commit in about publish order, so the gap
//! between the curves at i is the i-th message's latency, to within the sampling interval.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gito_testkit::{Broker, TestDb, publish_all};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::{Connection, PgConnection};

use crate::bridge::topic;
use crate::procs::Stats;
use crate::stack;

pub struct PipelineResult {
    pub messages: u64,
    pub devices: u64,
    pub per_sec: f64,
    /// The offered rate of the latency phase.
    pub latency_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub lost: u64,
    pub bridge: Stats,
    pub processor: Stats,
}

pub async fn run(messages: u64, devices: u64) -> anyhow::Result<PipelineResult> {
    let external = Broker::start().await;
    let local =
        Broker::start_with("max_inflight_messages 2000\nmax_queued_messages 1000000\n").await;
    let db = TestDb::migrated().await;
    let api = stack::start_api(
        &db.url,
        &[("GITO_MQTT_URL", local.url()), ("GITO_LIVE", "off".into())],
    )
    .await?;
    let tenant = stack::create_tenant(&api.url).await?;
    let spool = std::env::temp_dir().join(format!(
        "gito-bench-spool-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let bridge = stack::start_bridge(external.port, local.port, &api.url, &tenant, &spool).await?;
    let mut conn = PgConnection::connect(&db.url).await?;

    // Warm-up: every device is created and seen once, outside the timing.
    let warm: Vec<(String, Vec<u8>)> = (0..devices).map(|d| (topic(d), b"1".to_vec())).collect();
    publish_all(&external.url(), warm).await;
    wait_rows(&mut conn, devices as i64, Duration::from_secs(600)).await?;

    let (bridge_before, api_before) = (bridge.stats(), api.process.stats());
    // Throughput: offer everything at once. Latency: offer 80 % of that rate, evenly; at full
    // load it would only measure the queue in front of the slowest stage.
    let throughput = phase(
        &mut conn,
        external.port,
        devices,
        0,
        messages,
        devices,
        None,
    )
    .await?;
    let paced_n = (messages / 2).max(1);
    let paced_rate = throughput.per_sec * 0.8;
    let paced = phase(
        &mut conn,
        external.port,
        devices + messages,
        messages,
        paced_n,
        devices,
        Some(paced_rate),
    )
    .await?;
    let (bridge_after, api_after) = (bridge.stats(), api.process.stats());
    bridge.stop().await;
    api.process.stop().await;
    let _ = std::fs::remove_dir_all(&spool);
    Ok(PipelineResult {
        messages,
        devices,
        per_sec: throughput.per_sec,
        latency_rate: paced_rate,
        p50_ms: paced.p50_ms,
        p99_ms: paced.p99_ms,
        lost: (messages + paced_n).saturating_sub(throughput.stored + paced.stored),
        bridge: Stats {
            cpu_secs: bridge_after.cpu_secs - bridge_before.cpu_secs,
            peak_rss_mib: bridge_after.peak_rss_mib,
        },
        processor: Stats {
            cpu_secs: api_after.cpu_secs - api_before.cpu_secs,
            peak_rss_mib: api_after.peak_rss_mib,
        },
    })
}

struct Phase {
    per_sec: f64,
    stored: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Publishes messages `first..first + n` (at `rate` per second, or as fast as possible) and
/// follows the row count until all are stored.
async fn phase(
    conn: &mut PgConnection,
    port: u16,
    rows_before: u64,
    first: u64,
    n: u64,
    devices: u64,
    rate: Option<f64>,
) -> anyhow::Result<Phase> {
    let published = Arc::new(Vec::from_iter((0..n).map(|_| AtomicU64::new(0))));
    let started = Instant::now();
    let publisher = tokio::spawn(publish_timed(
        port,
        first,
        n,
        devices,
        rate,
        published.clone(),
        started,
    ));
    // The commit curve: (elapsed µs, rows of this phase).
    let mut curve: Vec<(u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry")
            .fetch_one(&mut *conn)
            .await?;
        let stored = (rows as u64).saturating_sub(rows_before);
        curve.push((started.elapsed().as_micros() as u64, stored));
        if stored >= n || Instant::now() > deadline {
            break;
        }
        // count(*) scans the table: sampling faster would load the database being measured.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    publisher.await??;
    let elapsed = Duration::from_micros(curve.last().map_or(0, |c| c.0));
    let stored = curve.last().map_or(0, |c| c.1).min(n);
    let mut latencies: Vec<u64> = (0..stored)
        .map(|i| {
            let sent = published[i as usize].load(Ordering::Relaxed);
            let committed = curve
                .iter()
                .find(|(_, rows)| *rows > i)
                .map_or(u64::MAX, |c| c.0);
            committed.saturating_sub(sent)
        })
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    Ok(Phase {
        per_sec: stored as f64 / elapsed.as_secs_f64(),
        stored,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    })
}

async fn wait_rows(conn: &mut PgConnection, n: i64, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry")
            .fetch_one(&mut *conn)
            .await?;
        if rows >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "only {rows} of {n} rows");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes as fast as the broker takes it, recording when each message was handed over.
async fn publish_timed(
    port: u16,
    first: u64,
    n: u64,
    devices: u64,
    rate: Option<f64>,
    at: Arc<Vec<AtomicU64>>,
    started: Instant,
) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(
        format!("bench-pipeline-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let driver = tokio::spawn(async move {
        while counter.load(Ordering::Relaxed) < n {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("publisher: {e}")),
            }
        }
        Ok(())
    });
    for k in 0..n {
        if let Some(rate) = rate
            && k % 50 == 0
        {
            let due = started + Duration::from_secs_f64(k as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let i = first + k;
        // Distinct event times, so that every message is its own row.
        let payload = format!(
            "{{\"v\": {}, \"ts\": {}}}",
            i % 500,
            1_795_000_000_000u64 + i
        );
        client
            .publish(topic(i % devices), QoS::AtLeastOnce, false, payload)
            .await?;
        at[k as usize].store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
    driver.await??;
    let _ = client.disconnect().await;
    Ok(())
}

impl PipelineResult {
    pub fn rows(&self, mosquitto_bridge: Option<f64>, copy: Option<f64>) -> Vec<crate::Row> {
        use crate::Row;
        let per_1000 = |s: &Stats| format!("{:.3} s", s.cpu_secs / self.messages as f64 * 1000.0);
        let mut rows = vec![Row::new(
            format!(
                "pipeline, QoS 1, {} msgs over {} devices",
                self.messages, self.devices
            ),
            format!("{:.0} msg/s", self.per_sec),
        )];
        if let Some(reference) = mosquitto_bridge {
            rows[0] = Row::new(rows[0].what.clone(), rows[0].value.clone()).against(
                format!("Mosquitto bridge alone {reference:.0} msg/s"),
                self.per_sec / reference,
            );
            if let Some(copy) = copy {
                rows.push(
                    Row::new(
                        "pipeline vs COPY of the same rows",
                        format!("{:.0} msg/s", self.per_sec),
                    )
                    .against(format!("COPY {copy:.0} rows/s"), self.per_sec / copy),
                );
            }
        }
        rows.extend([
            Row::new(
                format!(
                    "pipeline latency publish → committed row at {:.0} msg/s, p50 / p99",
                    self.latency_rate
                ),
                format!("{:.0} ms / {:.0} ms", self.p50_ms, self.p99_ms),
            ),
            Row::new("pipeline lost", self.lost.to_string()),
            Row::new(
                "gito-bridge CPU per 1000 msgs / peak RSS",
                format!(
                    "{} / {:.1} MiB",
                    per_1000(&self.bridge),
                    self.bridge.peak_rss_mib
                ),
            ),
            Row::new(
                "gito-api (processor) CPU per 1000 msgs / peak RSS",
                format!(
                    "{} / {:.1} MiB",
                    per_1000(&self.processor),
                    self.processor.peak_rss_mib
                ),
            ),
        ]);
        rows
    }
}
