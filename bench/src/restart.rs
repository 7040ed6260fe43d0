//! A bridge restart with N known devices: the pipeline runs at full rate, gito-bridge gets
//! SIGTERM and is started again on the same spool directory; how long until the stored rate is
//! back to 90 % of what it was, from the rate curve sampled throughout, and whether anything got
//! lost. A restart that forgets every device is a cold start in disguise.

use std::time::{Duration, Instant};

use crate::Row;
use crate::load::Load;
use crate::procs::Usage;
use crate::scale::usage_line;
use crate::stack::Fleet;

pub struct RestartResult {
    pub devices: u64,
    pub rate_before: f64,
    /// SIGTERM → the stored rate (over `WINDOW`) back to 90 %; `None`: not within the deadline.
    pub recovered_secs: Option<f64>,
    /// SIGTERM → the new process subscribed.
    pub restart_secs: f64,
    /// Rows/s per half second from SIGTERM on.
    pub curve: Vec<f64>,
    pub published: u64,
    pub lost: u64,
    pub usage: Vec<Usage>,
}

/// The stored rate is measured over this window (and recovery known to within it).
const WINDOW: Duration = Duration::from_millis(500);
const RECOVERY_DEADLINE: Duration = Duration::from_secs(300);

/// `steady`: seconds at full rate before the restart.
pub async fn run(devices: u64, steady: u64) -> anyhow::Result<RestartResult> {
    let mut fleet = Fleet::start().await?;
    fleet.create_devices(devices).await?;
    fleet.warm_up(devices).await?;
    let load = Load::start(&fleet, devices, None).await?;
    tokio::time::sleep(Duration::from_secs(steady)).await;
    let rate_before = load.recent_rate(Duration::from_secs(steady.div_ceil(2)));
    let meter = fleet.meter();
    let before = meter.snapshot();

    let killed_at = load.elapsed();
    let killed = Instant::now();
    fleet.restart_bridge().await?;
    let restart_secs = killed.elapsed().as_secs_f64();
    let mut recovered_secs = None;
    while killed.elapsed() < RECOVERY_DEADLINE {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if killed.elapsed() > WINDOW && load.recent_rate(WINDOW) >= 0.9 * rate_before {
            recovered_secs = Some(killed.elapsed().as_secs_f64());
            break;
        }
    }
    // A little of the recovered rate, for the curve.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let curve = load.rate_curve(killed_at, WINDOW);
    let outcome = load.finish(Duration::from_secs(120)).await?;
    // The new bridge's process, from its start.
    let usage = fleet.meter().snapshot().since(&before);
    let rows = fleet.rows().await?;
    fleet.stop().await;
    Ok(RestartResult {
        devices,
        rate_before,
        recovered_secs,
        restart_secs,
        curve,
        published: outcome.published,
        lost: (devices + outcome.published).saturating_sub(rows),
        usage,
    })
}

impl RestartResult {
    pub fn rows(&self) -> Vec<Row> {
        let recovered = match self.recovered_secs {
            Some(s) => format!("{s:.1} s"),
            None => format!("not within {} s", RECOVERY_DEADLINE.as_secs()),
        };
        let curve = self
            .curve
            .iter()
            .map(|r| format!("{:.1}k", r / 1000.0))
            .collect::<Vec<_>>()
            .join(" ");
        vec![
            Row::new(
                format!(
                    "bridge restart with {} known devices: SIGTERM → stored rate back to 90 %",
                    self.devices
                ),
                recovered,
            )
            .beside(format!("rate before {:.0} msg/s", self.rate_before))
            .target("< 5 s", self.recovered_secs.is_some_and(|s| s < 5.0)),
            Row::new(
                "  SIGTERM → new bridge subscribed",
                format!("{:.1} s", self.restart_secs),
            ),
            Row::new("  stored msg/s per 0.5 s from SIGTERM", curve),
            Row::new(
                "  lost / published",
                format!("{} / {}", self.lost, self.devices + self.published),
            ),
            Row::new(
                "  CPU per 1000 msgs / peak RSS (from SIGTERM)",
                usage_line(&self.usage, self.published),
            ),
        ]
    }
}
