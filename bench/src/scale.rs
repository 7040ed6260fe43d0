//! The whole pipeline (publisher → external Mosquitto → gito-bridge → local Mosquitto →
//! processor → PostgreSQL, QoS 1) at growing fleet sizes, each in steady state: the devices are
//! created first (batch endpoint), every device publishes once (warm-up: every cache on the way
//! knows it), then the measured phases: as fast as the pipeline stores, then 80 % of that rate
//! for latency. The reference is Mosquitto's own bridge alone, and the smallest fleet.

use std::time::{Duration, Instant};

use crate::Row;
use crate::bridge::Reference;
use crate::load::Load;
use crate::procs::{Usage, per_1000};
use crate::stack::Fleet;

pub struct Point {
    pub devices: u64,
    /// Creating the devices through the batch endpoint.
    pub create_secs: f64,
    /// Every device publishing once, until stored.
    pub warm_secs: f64,
    pub per_sec: f64,
    /// The offered rate of the latency phase.
    pub latency_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub published: u64,
    pub lost: u64,
    /// Every process, over both measured phases.
    pub usage: Vec<Usage>,
}

pub struct ScaleResult {
    pub seconds: u64,
    pub points: Vec<Point>,
    /// Mosquitto's bridge alone (100 devices).
    pub mosquitto: Reference,
}

/// `mosquitto`: Mosquitto's bridge alone, measured in the same run (`bridge::mosquitto_bridge`).
pub async fn run(
    devices: &[u64],
    seconds: u64,
    mosquitto: Reference,
) -> anyhow::Result<ScaleResult> {
    let mut points = Vec::new();
    for &n in devices {
        points.push(point(n, seconds).await?);
        eprintln!("scale: {n} devices done");
    }
    Ok(ScaleResult {
        seconds,
        points,
        mosquitto,
    })
}

async fn point(devices: u64, seconds: u64) -> anyhow::Result<Point> {
    let fleet = Fleet::start().await?;
    let started = Instant::now();
    fleet.create_devices(devices).await?;
    let create_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    fleet.warm_up(devices).await?;
    let warm_secs = started.elapsed().as_secs_f64();

    let meter = fleet.meter();
    let before = meter.snapshot();
    let drain = Duration::from_secs(120);
    let max = Load::start(&fleet, devices, None).await?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let max = max.finish(drain).await?;
    // At full load latency would only measure the queue in front of the slowest stage.
    let latency_rate = max.per_sec * 0.8;
    let paced = Load::start(&fleet, devices, Some(latency_rate)).await?;
    tokio::time::sleep(Duration::from_secs(seconds.div_ceil(2))).await;
    let paced = paced.finish(drain).await?;
    let usage = meter.snapshot().since(&before);
    let published = max.published + paced.published;
    let rows = fleet.rows().await?;
    fleet.stop().await;
    Ok(Point {
        devices,
        create_secs,
        warm_secs,
        per_sec: max.per_sec,
        latency_rate,
        p50_ms: paced.p50_ms,
        p99_ms: paced.p99_ms,
        published,
        lost: (devices + published).saturating_sub(rows),
        usage,
    })
}

/// CPU seconds per 1000 messages and peak RSS of every process, on one line.
pub fn usage_line(usage: &[Usage], messages: u64) -> String {
    usage
        .iter()
        .map(|u| {
            format!(
                "{} {:.3} s / {:.0} MiB",
                u.part,
                per_1000(u.cpu_secs, messages),
                u.peak_rss_mib
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl ScaleResult {
    pub fn rows(&self) -> Vec<Row> {
        let smallest = self.points.iter().min_by_key(|p| p.devices);
        let mut rows = Vec::new();
        for p in &self.points {
            let what = format!(
                "pipeline at {} devices, QoS 1, {} s at full rate",
                p.devices, self.seconds
            );
            let value = format!("{:.0} msg/s", p.per_sec);
            let mut row = Row::new(what, value);
            match smallest {
                Some(s) if s.devices < p.devices => {
                    let ratio = p.per_sec / s.per_sec;
                    row = row.against(
                        format!("{} devices {:.0} msg/s", s.devices, s.per_sec),
                        ratio,
                    );
                    if p.devices >= 1_000_000 {
                        row = row.target("≥ 0.5× of 1k (at 1M)", ratio >= 0.5);
                    } else if p.devices >= 100_000 {
                        row = row.target("≥ 0.8× of 1k (at 100k)", ratio >= 0.8);
                    }
                }
                _ => {}
            }
            rows.push(row);
            if p.devices == 10_000 || self.points.len() == 1 {
                let ratio = p.per_sec / self.mosquitto.per_sec;
                rows.push(
                    Row::new(
                        format!(
                            "pipeline at {} devices vs Mosquitto's bridge alone",
                            p.devices
                        ),
                        format!("{:.0} msg/s", p.per_sec),
                    )
                    .against(
                        format!("Mosquitto bridge {:.0} msg/s", self.mosquitto.per_sec),
                        ratio,
                    )
                    .target("≥ 0.95× (at 10k)", ratio >= 0.95),
                );
                // Both runs share the same cores: where each is bound by them, the ratio above
                // cannot exceed the reference's CPU per message over the pipeline's.
                let cpu = |of: fn(&Usage) -> bool| {
                    let secs = p.usage.iter().filter(|u| of(u)).map(|u| u.cpu_secs).sum();
                    per_1000(secs, p.published)
                };
                rows.push(Row::new(
                    "  CPU per 1000 msgs: Mosquitto's bridge alone (both brokers) / this pipeline (all five processes; PostgreSQL alone)",
                    format!(
                        "{:.3} s / {:.3} s; {:.3} s",
                        self.mosquitto.cpu_per_1000,
                        cpu(|_| true),
                        cpu(|u| u.part == "postgres")
                    ),
                ));
            }
            rows.push(
                Row::new(
                    format!(
                        "  latency publish → committed row at {:.0} msg/s (80 %), p50 / p99",
                        p.latency_rate
                    ),
                    format!("{:.0} ms / {:.0} ms", p.p50_ms, p.p99_ms),
                )
                .target("p99 < 250 ms", p.p99_ms < 250.0),
            );
            rows.push(Row::new(
                "  lost / published",
                format!("{} / {}", p.lost, p.devices + p.published),
            ));
            rows.push(Row::new(
                "  setup: create devices (batch) / warm-up (each publishes once)",
                format!("{:.1} s / {:.1} s", p.create_secs, p.warm_secs),
            ));
            let mut usage = Row::new(
                "  CPU per 1000 msgs / peak RSS",
                usage_line(&p.usage, p.published),
            );
            if p.devices >= 1_000_000
                && let Some(bridge) = p.usage.iter().find(|u| u.part == "gito-bridge")
            {
                usage = usage.target("bridge RSS < 128 MiB (at 1M)", bridge.peak_rss_mib < 128.0);
            }
            rows.push(usage);
        }
        rows
    }
}
