//! Load on a running `Fleet` and what it makes of it: one QoS 1 publisher on the external broker,
//! at a fixed rate or as fast as the pipeline stores (with a bounded backlog, so that a slow
//! pipeline is measured rather than a broker's queue filling up), and the curve of rows stored,
//! sampled every 25 ms.
//!
//! Latency (publish → committed row) comes from the two curves: when the i-th message was handed
//! to the publisher, and when the stored count first reached i. Rows commit in about publish
//! order, so the gap at i is the i-th message's latency, to within the sampling interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use crate::bridge::topic;
use crate::stack::{EventTimes, Fleet, stored_rows};

/// How often the stored count is read (reading it costs gito-api a `/metrics` render).
const SAMPLE: Duration = Duration::from_millis(25);

/// At full speed, how far the publisher may run ahead of the stored count: two seconds of the
/// current stored rate, and at least this many messages.
const MIN_BACKLOG: u64 = 2000;

pub struct Load {
    started: Instant,
    /// Tells the publisher to stop.
    stop: Arc<AtomicBool>,
    /// Tells the sampler to stop.
    done: Arc<AtomicBool>,
    /// (µs since start, rows stored since start).
    curve: Arc<Mutex<Vec<(u64, u64)>>>,
    /// When each message was handed to the client, µs since start.
    publisher: JoinHandle<anyhow::Result<Vec<u64>>>,
    sampler: JoinHandle<anyhow::Result<()>>,
}

/// A finished load.
pub struct Outcome {
    pub published: u64,
    /// Rows/s stored over the publishing window, its first fifth (the ramp-up) left out.
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Load {
    /// Starts publishing to devices `0..devices` in turn: at `rate` messages/s, or (`None`) as
    /// fast as the pipeline stores them.
    pub async fn start(fleet: &Fleet, devices: u64, rate: Option<f64>) -> anyhow::Result<Load> {
        let http = reqwest::Client::new();
        let metrics = fleet.metrics_url();
        let base = stored_rows(&http, &metrics).await?;
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let curve = Arc::new(Mutex::new(vec![(0, 0)]));
        let allowed = Arc::new(AtomicU64::new(MIN_BACKLOG));
        let sampler = tokio::spawn(sample(
            http,
            metrics,
            base,
            started,
            curve.clone(),
            allowed.clone(),
            done.clone(),
        ));
        let publisher = tokio::spawn(publish(
            fleet.external.port,
            devices,
            rate,
            fleet.clock.take().await,
            allowed,
            stop.clone(),
            started,
        ));
        Ok(Load {
            started,
            stop,
            done,
            curve,
            publisher,
            sampler,
        })
    }

    /// Rows per second stored over the last `window`.
    pub fn recent_rate(&self, window: Duration) -> f64 {
        let curve = self.curve.lock().expect("curve");
        rate_before(&curve, curve.last().map_or(0, |c| c.0), window)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Rows per second stored in each `bucket` from `from` (since start) on.
    pub fn rate_curve(&self, from: Duration, bucket: Duration) -> Vec<f64> {
        let curve = self.curve.lock().expect("curve");
        let end = curve.last().map_or(0, |c| c.0);
        let (from, step) = (from.as_micros() as u64, bucket.as_micros() as u64);
        (1..)
            .map(|k| from + k * step)
            .take_while(|t| *t <= end)
            .map(|t| rate_before(&curve, t, bucket))
            .collect()
    }

    /// Stops publishing and waits (up to `drain`) until every published message is stored.
    pub async fn finish(self, drain: Duration) -> anyhow::Result<Outcome> {
        let published_until = self.started.elapsed().as_micros() as u64;
        self.stop.store(true, Ordering::Relaxed);
        let Load {
            curve,
            publisher,
            sampler,
            done,
            ..
        } = self;
        let published = publisher.await??;
        let n = published.len() as u64;
        let until = Instant::now() + drain;
        while last_stored(&curve) < n && Instant::now() < until {
            tokio::time::sleep(SAMPLE).await;
        }
        done.store(true, Ordering::Relaxed);
        sampler.await??;
        let curve = curve.lock().expect("curve").clone();
        let stored = curve.last().map_or(0, |c| c.1).min(n);
        let mut latencies: Vec<u64> = (0..stored)
            .map(|i| {
                let committed = curve
                    .iter()
                    .find(|(_, rows)| *rows > i)
                    .map_or(u64::MAX, |c| c.0);
                committed.saturating_sub(published[i as usize])
            })
            .collect();
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(f64::NAN, |us| *us as f64 / 1000.0)
        };
        let ramp_up = published_until / 5;
        let window = Duration::from_micros(published_until - ramp_up);
        Ok(Outcome {
            published: n,
            per_sec: rate_before(&curve, published_until, window),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
        })
    }
}

fn last_stored(curve: &Mutex<Vec<(u64, u64)>>) -> u64 {
    curve.lock().expect("curve").last().map_or(0, |c| c.1)
}

/// Rows per second over the `window` that ends at `t` µs, from the first samples at or after
/// each end.
fn rate_before(curve: &[(u64, u64)], t: u64, window: Duration) -> f64 {
    let at = |t: u64| {
        curve
            .iter()
            .find(|(at, _)| *at >= t)
            .or(curve.last())
            .map_or((0, 0), |c| *c)
    };
    let (t1, rows1) = at(t);
    let (t0, rows0) = at(t.saturating_sub(window.as_micros() as u64));
    if t1 <= t0 {
        return 0.0;
    }
    (rows1 - rows0) as f64 / Duration::from_micros(t1 - t0).as_secs_f64()
}

async fn sample(
    http: reqwest::Client,
    metrics: String,
    base: u64,
    started: Instant,
    curve: Arc<Mutex<Vec<(u64, u64)>>>,
    allowed: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    while !done.load(Ordering::Relaxed) {
        tokio::time::sleep(SAMPLE).await;
        let stored = stored_rows(&http, &metrics).await?.saturating_sub(base);
        let now = started.elapsed().as_micros() as u64;
        let mut curve = curve.lock().expect("curve");
        curve.push((now, stored));
        let backlog = (2.0 * rate_before(&curve, now, Duration::from_secs(1))) as u64;
        allowed.store(stored + backlog.max(MIN_BACKLOG), Ordering::Relaxed);
    }
    Ok(())
}

/// Publishes until `stop`, recording when each message was handed to the client; returns once
/// the broker acknowledged every one.
async fn publish(
    port: u16,
    devices: u64,
    rate: Option<f64>,
    mut clock: EventTimes,
    allowed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> anyhow::Result<Vec<u64>> {
    let mut options = MqttOptions::new(
        format!("bench-load-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    options.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(options, 10_000);
    let total = Arc::new(AtomicU64::new(u64::MAX));
    let expected = total.clone();
    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < expected.load(Ordering::Relaxed) {
            // Polled with a timeout: the total is only known once the last ack may be in.
            match tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => return Err(anyhow::anyhow!("publisher: {e}")),
            }
        }
        Ok(())
    });
    let mut at = Vec::new();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match rate {
            Some(rate) if k.is_multiple_of(50) => {
                let due = started + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            Some(_) => {}
            None => {
                while k >= allowed.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        let device = k % devices;
        let payload = format!("{{\"v\": {}, \"ts\": {}}}", k % 500, clock.next(device));
        client
            .publish(topic(device), QoS::AtLeastOnce, false, payload)
            .await?;
        at.push(started.elapsed().as_micros() as u64);
        k += 1;
    }
    total.store(k, Ordering::Relaxed);
    driver.await??;
    let _ = client.disconnect().await;
    Ok(at)
}
