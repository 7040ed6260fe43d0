//! Tracing set up once per process: `RUST_LOG` filters, `GITO_LOG_FORMAT` picks pretty or JSON.
//! Logs go to stderr so that command output on stdout stays clean for scripts; colour only for a
//! person at a terminal (`docker logs gito-api | grep` reads plain text).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// The log format flag every gito binary takes, `--log-format` / `GITO_LOG_FORMAT`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(
        long,
        env = "GITO_LOG_FORMAT",
        global = true,
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
}

/// `default_filter` applies when `RUST_LOG` is unset, e.g. `info,sqlx=warn`.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
