//! `gito-bench`: gito's benchmarks, each printed beside a reference measured in the same run on
//! the same machine (see bench/README.md). Uses the release binaries next to it.

mod api;
mod boot;
mod bridge;
mod mqtt;
mod pipeline;
mod processor;
mod procs;
mod stack;

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
    /// The whole pipeline, into PostgreSQL.
    Pipeline {
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 10_000)]
        devices: u64,
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
    /// Every bench, the pipeline at 1,000 / 10,000 / 100,000 devices, into a markdown file.
    All {
        /// Small sizes, to check the benches still run (scripts/test.sh).
        #[arg(long)]
        smoke: bool,
        #[arg(long, default_value = "bench/RESULTS.md")]
        out: std::path::PathBuf,
    },
    /// The processor beside a plain COPY of the same rows.
    Processor {
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        #[arg(long, default_value_t = 1000)]
        devices: usize,
    },
}

/// One line of the results table: what, its figure, the reference, and their ratio.
pub struct Row {
    pub what: String,
    pub value: String,
    pub reference: String,
    pub ratio: Option<f64>,
}

impl Row {
    pub fn new(what: impl Into<String>, value: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            value: value.into(),
            reference: String::new(),
            ratio: None,
        }
    }

    pub fn against(mut self, reference: impl Into<String>, ratio: f64) -> Row {
        self.reference = reference.into();
        self.ratio = Some(ratio);
        self
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from("| bench | value | reference | ratio |\n|---|---|---|---|\n");
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.what, r.value, r.reference, ratio
        ));
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = match Cli::parse().command {
        Bench::Bridge { messages, devices } => bridge::run(messages, devices).await?.rows(),
        Bench::Processor { messages, devices } => processor::run(messages, devices).await?.rows(),
        Bench::Pipeline { messages, devices } => {
            pipeline::run(messages, devices).await?.rows(None, None)
        }
        Bench::Boot { runs } => boot::run(runs).await?.rows(),
        Bench::Api { devices, seconds } => api::run(devices, seconds).await?.rows(),
        Bench::All { smoke, out } => return all(smoke, &out).await,
    };
    print!("{}", table(&rows));
    Ok(())
}

/// Sizes of `all`: the full run, or a smoke run that only proves every bench still works.
struct Sizes {
    bridge: (u64, u64),
    processor: (u64, usize),
    pipeline: u64,
    scale: &'static [u64],
    boot_runs: usize,
    api: (u64, u64),
}

const FULL: Sizes = Sizes {
    bridge: (100_000, 100),
    processor: (200_000, 1000),
    pipeline: 100_000,
    scale: &[1_000, 10_000, 100_000],
    boot_runs: 9,
    api: (100_000, 10),
};

const SMOKE: Sizes = Sizes {
    bridge: (2000, 10),
    processor: (2000, 10),
    pipeline: 2000,
    scale: &[20, 50],
    boot_runs: 1,
    api: (1000, 1),
};

async fn all(smoke: bool, out: &std::path::Path) -> anyhow::Result<()> {
    let sizes = if smoke { SMOKE } else { FULL };
    let mut rows = Vec::new();
    let bridge = bridge::run(sizes.bridge.0, sizes.bridge.1).await?;
    eprintln!("bridge done");
    let processor = processor::run(sizes.processor.0, sizes.processor.1).await?;
    eprintln!("processor done");
    let mut scale = Vec::new();
    for devices in sizes.scale {
        scale.push(pipeline::run(sizes.pipeline, *devices).await?);
        eprintln!("pipeline at {devices} devices done");
    }
    let middle = &scale[scale.len() / 2];
    rows.extend(middle.rows(
        Some(bridge.mosquitto_per_sec),
        Some(processor.copy_rows_per_sec),
    ));
    rows.extend(bridge.rows());
    rows.extend(processor.rows());
    rows.extend(boot::run(sizes.boot_runs).await?.rows());
    eprintln!("boot done");
    rows.extend(api::run(sizes.api.0, sizes.api.1).await?.rows());
    eprintln!("api done");
    let mut text = format!(
        "# gito benchmark results

Generated by `{}` on {} with {} cores ({}). Every ratio is against a reference measured in the same run on the same machine.

",
        if smoke { "gito-bench all --smoke" } else { "scripts/bench.sh" },
        time::OffsetDateTime::now_utc().date(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if smoke { "smoke sizes: these figures mean nothing" } else { "full sizes" },
    );
    text.push_str(&table(&rows));
    text.push_str("
## Scale: the pipeline at more devices

| devices | msg/s | p50 / p99 ms | lost | bridge RSS | processor RSS |\n|---|---|---|---|---|---|\n");
    for r in &scale {
        text.push_str(&format!(
            "| {} | {:.0} | {:.0} / {:.0} | {} | {:.1} MiB | {:.1} MiB |\n",
            r.devices,
            r.per_sec,
            r.p50_ms,
            r.p99_ms,
            r.lost,
            r.bridge.peak_rss_mib,
            r.processor.peak_rss_mib
        ));
    }
    std::fs::write(out, &text)?;
    print!("{text}");
    Ok(())
}
