//! The command line: `run` (the default), `simulate` and `check-mapping`, and what they print.
//! `main.rs` only calls `run` and turns its result into the exit code.

use std::process::ExitCode;

use clap::Parser as _;
use gito_runtime::shutdown;

use crate::config::{Cli, Command};
use crate::mapping::{Mapping, Unmapped};

/// Parses the process arguments, sets up logging, runs the subcommand. Errors are printed as
/// one line (the context chain, outermost first) and exit with 1.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    gito_runtime::logging::init(cli.log.log_format, "info,rumqttc=warn");
    let result = match cli.command {
        Some(Command::CheckMapping { mapping, topics }) => {
            check_mapping(mapping.as_deref(), &topics)
        }
        Some(Command::Run(config)) => crate::run(*config, shutdown::on_signal()).await,
        Some(Command::Simulate {
            broker,
            devices,
            rate,
            duration,
        }) => crate::simulate::run(
            &broker,
            devices,
            rate,
            duration.map(std::time::Duration::from_secs),
            shutdown::on_signal(),
        )
        .await
        .map(|acked| println!("published {acked} messages")),
        None => match cli.run {
            Some(config) => crate::run(config, shutdown::on_signal()).await,
            None => Err(anyhow::anyhow!("nothing to run")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gito-bridge: {}", gito_runtime::report(&e));
            ExitCode::FAILURE
        }
    }
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
