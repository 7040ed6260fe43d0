//! `gito-bench`: gito's benchmarks, each printed beside a reference measured in the same run
//! on the same machine (see bench/README.md). Uses the release binaries next to it.

mod bridge;
mod mqtt;
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Bridge { messages, devices } => {
            let r = bridge::run(messages, devices).await?;
            println!("| bench | value | reference | ratio |\n|---|---|---|---|");
            println!(
                "| bridge leg, QoS 1, {} msgs over {} devices | {:.0} msg/s | Mosquitto bridge {:.0} msg/s | {:.2}x |",
                r.messages,
                r.devices,
                r.gito_per_sec,
                r.mosquitto_per_sec,
                r.gito_per_sec / r.mosquitto_per_sec
            );
            println!("| gito-bridge lost | {} | | |", r.gito_lost);
            println!(
                "| gito-bridge CPU per 1000 msgs | {:.3} s | | |",
                r.gito_cpu_per_1000
            );
            println!(
                "| gito-bridge peak RSS | {:.1} MiB | | |",
                r.gito_peak_rss_mib
            );
        }
    }
    Ok(())
}
