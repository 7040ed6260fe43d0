//! The bridge leg: messages per second from an external broker into the local one through
//! gito-bridge, beside Mosquitto's own bridge (`connection` + `topic # in 1`) between two
//! brokers of the same configuration, in the same run.

use std::time::{Duration, Instant};

use gito_testkit::{Broker, TestDb, publish_all};

use crate::mqtt::Counter;
use crate::procs::{Meter, Source, Stats, per_1000};
use crate::stack;

pub struct BridgeResult {
    pub messages: u64,
    pub devices: u64,
    pub mosquitto_per_sec: f64,
    pub gito_per_sec: f64,
    pub gito_lost: u64,
    pub gito_cpu_per_1000: f64,
    pub gito_peak_rss_mib: f64,
}

/// The device path of device number `device`: the bridge's default mapping makes it the
/// device's `external_id` (the topic without its last level).
pub fn external_id(device: u64) -> String {
    format!("SDE11/JAX/UTILITIES/BOILER/D{device:05}")
}

pub fn topic(device: u64) -> String {
    format!("{}/CHIMNEY_TEMP", external_id(device))
}

fn messages(n: u64, devices: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (topic(i % devices), format!("{}.5", i % 500).into_bytes()))
        .collect()
}

pub async fn run(n: u64, devices: u64) -> anyhow::Result<BridgeResult> {
    let mosquitto = mosquitto_bridge(n, devices).await?;
    gito_side(n, devices, mosquitto.per_sec).await
}

/// Mosquitto's own bridge between two brokers, alone: the reference of every pipeline figure.
#[derive(Debug, Clone, Copy)]
pub struct Reference {
    pub per_sec: f64,
    /// Both brokers' CPU seconds per 1000 messages: what the reference spends of the cores that
    /// the pipeline shares among five processes.
    pub cpu_per_1000: f64,
}

/// gito-bridge's side, beside a Mosquitto figure measured before.
pub async fn gito_side(
    n: u64,
    devices: u64,
    mosquitto_per_sec: f64,
) -> anyhow::Result<BridgeResult> {
    let (gito_per_sec, gito_lost, stats) = gito_bridge(n, devices).await?;
    Ok(BridgeResult {
        messages: n,
        devices,
        mosquitto_per_sec,
        gito_per_sec,
        gito_lost,
        gito_cpu_per_1000: per_1000(stats.cpu_secs, n),
        gito_peak_rss_mib: stats.peak_rss_mib,
    })
}

/// Publishes the timed batch and returns (messages per second, arrived).
async fn timed(
    external: u16,
    counter: &Counter,
    base: u64,
    n: u64,
    devices: u64,
) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    publish_all(
        &format!("mqtt://127.0.0.1:{external}"),
        messages(n, devices),
    )
    .await;
    let arrived = counter.wait_for(base + n, Duration::from_secs(120)).await - base;
    Ok((arrived as f64 / started.elapsed().as_secs_f64(), arrived))
}

/// The local broker's in-flight window as mosquitto/mosquitto.conf ships it (Mosquitto's default
/// of 20 is also what it offers MQTT 5 clients as their receive maximum).
const LOCAL_AS_SHIPPED: &str = "max_inflight_messages 2000\n";

/// Messages/s through Mosquitto's own bridge alone, and what it cost both brokers.
pub async fn mosquitto_bridge(n: u64, devices: u64) -> anyhow::Result<Reference> {
    let external = Broker::start().await;
    let bridge = format!(
        "connection reference\naddress 127.0.0.1:{}\ntopic # in 1\ncleansession false\nremote_clientid mosquitto-bridge\n",
        external.port
    );
    let local = Broker::start_with(&format!("{LOCAL_AS_SHIPPED}{bridge}")).await;
    let counter = Counter::subscribe(local.port, "SDE11/#").await?;
    // The bridge connects on its own schedule: warm up until a round trip works.
    let warm = Instant::now();
    while counter.count() == 0 {
        anyhow::ensure!(
            warm.elapsed() < Duration::from_secs(20),
            "mosquitto bridge never connected"
        );
        publish_all(&external.url(), messages(devices, devices)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let base = counter.wait_for(u64::MAX, Duration::from_millis(500)).await;
    let meter = Meter::new(vec![
        ("mosquitto (external)", Source::Listener(external.port)),
        ("mosquitto (local)", Source::Listener(local.port)),
    ]);
    let before = meter.snapshot();
    let (per_sec, arrived) = timed(external.port, &counter, base, n, devices).await?;
    let cpu_secs: f64 = meter
        .snapshot()
        .since(&before)
        .iter()
        .map(|u| u.cpu_secs)
        .sum();
    anyhow::ensure!(
        arrived == n,
        "mosquitto's bridge delivered {arrived} of {n}"
    );
    Ok(Reference {
        per_sec,
        cpu_per_1000: per_1000(cpu_secs, n),
    })
}

async fn gito_bridge(n: u64, devices: u64) -> anyhow::Result<(f64, u64, Stats)> {
    let external = Broker::start().await;
    let local = Broker::start_with(LOCAL_AS_SHIPPED).await;
    let db = TestDb::migrated().await;
    let api = stack::start_api(&db.url, &[]).await?;
    let tenant = stack::create_tenant(&api.url).await?;
    let spool = tempfile_dir()?;
    let bridge =
        stack::start_bridge(external.port, local.port, &api.url, &tenant, &spool, &[]).await?;
    let counter =
        Counter::subscribe(local.port, &format!("{}/devices/+/telemetry", tenant.id)).await?;
    // Warm-up: every device is created once, outside the timed run.
    publish_all(&external.url(), messages(devices, devices)).await;
    let warmed = counter.wait_for(devices, Duration::from_secs(120)).await;
    anyhow::ensure!(warmed == devices, "warm-up delivered {warmed} of {devices}");
    let before = bridge.stats();
    let (rate, arrived) = timed(external.port, &counter, devices, n, devices).await?;
    let after = bridge.stats();
    bridge.stop().await;
    api.process.stop().await;
    let _ = std::fs::remove_dir_all(&spool);
    Ok((
        rate,
        n.saturating_sub(arrived),
        Stats {
            cpu_secs: after.cpu_secs - before.cpu_secs,
            peak_rss_mib: after.peak_rss_mib,
        },
    ))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "gito-bench-spool-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl BridgeResult {
    pub fn rows(&self) -> Vec<crate::Row> {
        use crate::Row;
        vec![
            Row::new(
                format!(
                    "bridge leg, QoS 1, {} msgs over {} devices",
                    self.messages, self.devices
                ),
                format!("{:.0} msg/s", self.gito_per_sec),
            )
            .against(
                format!("Mosquitto bridge {:.0} msg/s", self.mosquitto_per_sec),
                self.gito_per_sec / self.mosquitto_per_sec,
            ),
            Row::new("gito-bridge lost", self.gito_lost.to_string()),
            Row::new(
                "gito-bridge CPU per 1000 msgs",
                format!("{:.3} s", self.gito_cpu_per_1000),
            ),
            Row::new(
                "gito-bridge peak RSS",
                format!("{:.1} MiB", self.gito_peak_rss_mib),
            ),
        ]
    }
}
