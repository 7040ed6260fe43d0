//! Discovery: N devices the API has never seen publish one message each; the time from the first
//! publish until all N messages are stored, and devices per second. Every new path costs the
//! bridge a device creation before its message may pass, so this is the cold start of a fleet.
//!
//! Run twice: as shipped, where `GITO_BRIDGE_MAX_NEW_DEVICES_PER_MINUTE` (60,000: that many at
//! once, then 1,000/s) is what bounds a fleet of 100,000 (about 40 s by design), and without the
//! budget, which measures what the pipeline itself can discover.

use std::time::{Duration, Instant};

use gito_testkit::publish_all;

use crate::Row;
use crate::bridge::topic;
use crate::procs::Usage;
use crate::scale::usage_line;
use crate::stack::Fleet;

pub struct DiscoverResult {
    /// The creation budget the bridge ran with (`None`: the default).
    pub budget: Option<u64>,
    pub devices: u64,
    pub stored: u64,
    pub secs: f64,
    pub usage: Vec<Usage>,
}

/// How long discovery may take before the bench reports what it got.
const DEADLINE: Duration = Duration::from_secs(900);

/// Discovery as shipped, then without a creation budget.
pub async fn run(devices: u64) -> anyhow::Result<Vec<DiscoverResult>> {
    Ok(vec![
        once(devices, None).await?,
        once(devices, Some(0)).await?,
    ])
}

async fn once(devices: u64, budget: Option<u64>) -> anyhow::Result<DiscoverResult> {
    let env = budget
        .map(|b| ("GITO_BRIDGE_MAX_NEW_DEVICES_PER_MINUTE", b.to_string()))
        .into_iter()
        .collect();
    let fleet = Fleet::start_with_bridge_env(env).await?;
    let meter = fleet.meter();
    let before = meter.snapshot();
    let base = fleet.stored().await?;
    let messages: Vec<(String, Vec<u8>)> =
        (0..devices).map(|d| (topic(d), b"1".to_vec())).collect();
    let started = Instant::now();
    publish_all(&fleet.external.url(), messages).await;
    let mut stored = 0;
    while started.elapsed() < DEADLINE {
        stored = fleet.stored().await? - base;
        if stored >= devices {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let usage = meter.snapshot().since(&before);
    fleet.stop().await;
    Ok(DiscoverResult {
        budget,
        devices,
        stored,
        secs,
        usage,
    })
}

/// The rows of every run.
pub fn rows(results: &[DiscoverResult]) -> Vec<Row> {
    results.iter().flat_map(DiscoverResult::rows).collect()
}

impl DiscoverResult {
    pub fn rows(&self) -> Vec<Row> {
        let per_sec = self.stored as f64 / self.secs;
        let value = if self.stored < self.devices {
            format!(
                "only {} of {} stored after {:.0} s: {per_sec:.0} devices/s",
                self.stored, self.devices, self.secs
            )
        } else {
            format!("{:.1} s: {per_sec:.0} devices/s", self.secs)
        };
        let title = format!(
            "discovery: {} never-seen devices publish once, until all stored",
            self.devices
        );
        let first = match self.budget {
            None => Row::new(
                format!("{title} (creation budget as shipped: 60000/min)"),
                value,
            ),
            Some(budget) => Row::new(
                format!("{title} (GITO_BRIDGE_MAX_NEW_DEVICES_PER_MINUTE={budget})"),
                value,
            )
            .target(
                "≥ 10k devices/s",
                self.stored == self.devices && per_sec >= 10_000.0,
            ),
        };
        vec![
            first,
            Row::new(
                "  CPU per 1000 devices / peak RSS",
                usage_line(&self.usage, self.devices),
            ),
        ]
    }
}
