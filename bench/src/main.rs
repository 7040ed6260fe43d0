//! `gito-bench`: gito's benchmarks, each printed beside a reference measured in the same run on
//! the same machine (see bench/README.md). Uses the release binaries next to it.

mod api;
mod boot;
mod bridge;
mod discover;
mod load;
mod mqtt;
mod processor;
mod procs;
mod restart;
mod scale;
mod stack;
mod storage;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gito-bench")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// gito-bridge beside Mosquitto's own bridge.
    Bridge {
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 100)]
        devices: u64,
    },
    /// The whole pipeline in steady state at each fleet size, beside Mosquitto's bridge alone.
    Scale {
        #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000, 100_000])]
        devices: Vec<u64>,
        /// Seconds at full rate (then half as long at 80 % for latency).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// N never-seen devices publish once: time until all stored.
    Discover {
        #[arg(long, default_value_t = 100_000)]
        devices: u64,
    },
    /// SIGTERM and restart the bridge under load with N known devices: time back to 90 % rate.
    Restart {
        #[arg(long, default_value_t = 100_000)]
        devices: u64,
        /// Seconds at full rate before the restart.
        #[arg(long, default_value_t = 6)]
        steady: u64,
    },
    /// Process start to /ready beside `alembic upgrade head`.
    Boot {
        #[arg(long, default_value_t = 9)]
        runs: usize,
    },
    /// API requests per second beside pgbench.
    Api {
        #[arg(long, default_value_t = 100_000)]
        devices: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Every bench into a markdown file, one table each.
    All {
        /// Small sizes, to check the benches still run (scripts/test.sh).
        #[arg(long)]
        smoke: bool,
        /// Also the pipeline at 1,000,000 devices (adds about half an hour with today's bridge).
        #[arg(long)]
        million: bool,
        #[arg(long, default_value = "bench/RESULTS.md")]
        out: std::path::PathBuf,
    },
    /// Issue #18: ingest into partitions + rollups beside the unpartitioned insert, a 30-day
    /// hourly query from the rollup beside raw rows, dropping a day.
    Storage {
        #[arg(long, default_value_t = 1000)]
        devices: u64,
        #[arg(long, default_value_t = 10)]
        metrics: u64,
        /// Samples per device and metric, spread over 32 days.
        #[arg(long, default_value_t = 10_000)]
        samples: u64,
        #[arg(long, default_value_t = 200)]
        queries: usize,
    },
    /// The processor beside a plain COPY of the same rows.
    Processor {
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        devices: usize,
    },
}

/// One line of a results table: what, its figure, the reference and their ratio, and the
/// target of issue #15 or #18 it answers (met or missed).
pub struct Row {
    pub what: String,
    pub value: String,
    pub reference: String,
    pub ratio: Option<f64>,
    pub target: String,
}

impl Row {
    pub fn new(what: impl Into<String>, value: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            value: value.into(),
            reference: String::new(),
            ratio: None,
            target: String::new(),
        }
    }

    pub fn against(mut self, reference: impl Into<String>, ratio: f64) -> Row {
        self.reference = reference.into();
        self.ratio = Some(ratio);
        self
    }

    /// A reference to read the figure by, without a ratio.
    pub fn beside(mut self, reference: impl Into<String>) -> Row {
        self.reference = reference.into();
        self
    }

    pub fn target(mut self, target: &str, met: bool) -> Row {
        self.target = format!("{target}: {}", if met { "met" } else { "**missed**" });
        self
    }
}

fn table(rows: &[Row]) -> String {
    let mut out =
        String::from("| bench | value | reference | ratio | target |\n|---|---|---|---|---|\n");
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what, r.value, r.reference, ratio, r.target
        ));
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = match Cli::parse().command {
        Bench::Bridge { messages, devices } => bridge::run(messages, devices).await?.rows(),
        Bench::Processor { messages, devices } => processor::run(messages, devices).await?.rows(),
        Bench::Scale { devices, seconds } => {
            let mosquitto = bridge::mosquitto_bridge(FULL.bridge.0, FULL.bridge.1).await?;
            scale::run(&devices, seconds, mosquitto).await?.rows()
        }
        Bench::Discover { devices } => discover::rows(&discover::run(devices).await?),
        Bench::Restart { devices, steady } => restart::run(devices, steady).await?.rows(),
        Bench::Boot { runs } => boot::run(runs).await?.rows(),
        Bench::Api { devices, seconds } => api::run(devices, seconds).await?.rows(),
        Bench::Storage {
            devices,
            metrics,
            samples,
            queries,
        } => storage::run(devices, metrics, samples, queries)
            .await?
            .rows(),
        Bench::All {
            smoke,
            million,
            out,
        } => return all(smoke, million, &out).await,
    };
    print!("{}", table(&rows));
    Ok(())
}

/// Sizes of `all`: the full run, or a smoke run that only proves every bench still works.
struct Sizes {
    bridge: (u64, u64),
    processor: (u64, usize),
    scale: &'static [u64],
    scale_seconds: u64,
    discover: u64,
    restart: (u64, u64),
    boot_runs: usize,
    api: (u64, u64),
    /// Devices, metrics, samples per device and metric, queries.
    storage: (u64, u64, u64, usize),
}

const FULL: Sizes = Sizes {
    bridge: (100_000, 100),
    processor: (200_000, 1000),
    scale: &[1_000, 10_000, 100_000],
    scale_seconds: 10,
    discover: 100_000,
    restart: (100_000, 6),
    boot_runs: 9,
    api: (100_000, 10),
    storage: (1000, 10, 10_000, 200),
};

const SMOKE: Sizes = Sizes {
    bridge: (2000, 10),
    processor: (2000, 10),
    scale: &[20, 50],
    scale_seconds: 1,
    discover: 200,
    restart: (50, 1),
    boot_runs: 1,
    api: (1000, 1),
    storage: (10, 2, 200, 8),
};

async fn all(smoke: bool, million: bool, out: &std::path::Path) -> anyhow::Result<()> {
    let sizes = if smoke { SMOKE } else { FULL };
    let started = std::time::Instant::now();
    let done = |what: &str| eprintln!("{what} done at {:.0} s", started.elapsed().as_secs_f64());
    let mut sections: Vec<(&str, Vec<Row>)> = Vec::new();
    let mut fleet_sizes = sizes.scale.to_vec();
    if million {
        fleet_sizes.push(1_000_000);
    }
    // Mosquitto's bridge alone: the reference of the bridge leg and of the pipeline.
    let (n, devices) = sizes.bridge;
    let mosquitto = bridge::mosquitto_bridge(n, devices).await?;
    let bridge = bridge::gito_side(n, devices, mosquitto.per_sec).await?;
    done("bridge");
    let scale = scale::run(&fleet_sizes, sizes.scale_seconds, mosquitto).await?;
    sections.push(("Scale: the pipeline at each fleet size", scale.rows()));
    done("scale");
    let discover = discover::run(sizes.discover).await?;
    sections.push(("Discovery of never-seen devices", discover::rows(&discover)));
    done("discover");
    let restart = restart::run(sizes.restart.0, sizes.restart.1).await?;
    sections.push(("Bridge restart with known devices", restart.rows()));
    done("restart");
    sections.push(("Bridge leg", bridge.rows()));
    let processor = processor::run(sizes.processor.0, sizes.processor.1).await?;
    sections.push(("Processor", processor.rows()));
    done("processor");
    sections.push(("Boot", boot::run(sizes.boot_runs).await?.rows()));
    done("boot");
    sections.push(("API", api::run(sizes.api.0, sizes.api.1).await?.rows()));
    done("api");
    let (devices, metrics, samples, queries) = sizes.storage;
    let storage = storage::run(devices, metrics, samples, queries).await?;
    sections.push((
        "Storage: partitions, rollups, retention (#18)",
        storage.rows(),
    ));
    done("storage");
    let mut text = format!(
        "# gito benchmark results

Generated by `{}` on {} with {} cores ({}). Every ratio is against a reference measured in the same run on the same machine; targets are issues #15's and #18's.
",
        if smoke { "gito-bench all --smoke" } else { "scripts/bench.sh" },
        time::OffsetDateTime::now_utc().date(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if smoke { "smoke sizes: these figures mean nothing" } else { "full sizes" },
    );
    for (title, rows) in &sections {
        text.push_str(&format!("\n## {title}\n\n{}", table(rows)));
    }
    std::fs::write(out, &text)?;
    print!("{text}");
    Ok(())
}
