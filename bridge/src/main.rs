use std::process::ExitCode;

use clap::Parser;
use gito_bridge::config::{Cli, Command};
use gito_bridge::mapping::{Mapping, Unmapped};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    gito_bridge::logging::init(cli.log_format);
    let result = match cli.command {
        Some(Command::CheckMapping { mapping, topics }) => {
            check_mapping(mapping.as_deref(), &topics)
        }
        Some(Command::Run(config)) => run(*config).await,
        Some(Command::Simulate {
            broker,
            devices,
            rate,
            duration,
        }) => {
            let stop = CancellationToken::new();
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    gito_bridge::shutdown_signal().await;
                    stop.cancel();
                }
            });
            gito_bridge::simulate::run(
                &broker,
                devices,
                rate,
                duration.map(std::time::Duration::from_secs),
                stop,
            )
            .await
            .map(|acked| println!("published {acked} messages"))
        }

        None => match cli.run {
            Some(config) => run(config).await,
            None => Err(anyhow::anyhow!("nothing to run")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gito-bridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: gito_bridge::config::BridgeConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            gito_bridge::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    gito_bridge::run(config, shutdown).await
}

/// A dry run for operators writing mapping rules.
fn check_mapping(file: Option<&std::path::Path>, topics: &[String]) -> anyhow::Result<()> {
    let mapping = file.map(Mapping::load).transpose()?.unwrap_or_default();
    for topic in topics {
        println!("{topic}");
        match mapping.map(topic) {
            Ok((m, rule)) => {
                println!("  device:      {}", m.external_id);
                println!("  name:        {}", m.name);
                println!(
                    "  device_type: {}",
                    m.device_type.as_deref().unwrap_or("(none)")
                );
                println!("  metric:      {}", m.metric);
                println!("  rule:        {rule}");
            }
            Err(Unmapped::NoRule) => println!("  skipped:     no rule matches"),
            Err(Unmapped::InvalidTopic) => {
                println!(
                    "  skipped:     invalid topic (an empty level, or a device path over 1024 characters)"
                )
            }
        }
    }
    Ok(())
}
