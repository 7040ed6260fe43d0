//! `gito-bench`: gito's benchmarks, each printed beside a reference measured in the same run on
//! the same machine (see bench/README.md). Uses the release binaries next to it.

mod bridge;
mod mqtt;
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
    };
    print!("{}", table(&rows));
    Ok(())
}
