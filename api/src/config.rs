//! Typed configuration: every flag is also an environment variable, and secrets never print.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};
use gito_runtime::logging::LogArgs;
use gito_runtime::mqtt::MqttUrl;
use gito_runtime::{ExposeSecret as _, SecretString};
use sqlx::postgres::PgConnectOptions;

use crate::auth::AdminToken;
use crate::migrate::{DriftMode, MigrateArgs, RunOptions};

#[derive(Debug, Parser)]
#[command(
    name = "gito-api",
    version,
    about = "gito tenant API, migrations and telemetry processor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Cli {
    /// Parses the process arguments; without a subcommand, `gito-api [OPTIONS]` means
    /// `gito-api serve [OPTIONS]`.
    pub fn parse_args() -> Cli {
        Cli::parse_from(with_default_command(std::env::args_os().collect()))
    }
}

fn with_default_command(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let first = args.get(1).and_then(|a| a.to_str());
    let names_a_command = first.is_some_and(|a| !a.starts_with('-'))
        || matches!(first, Some("-h" | "--help" | "-V" | "--version"));
    if !names_a_command {
        args.insert(1.min(args.len()), "serve".into());
    }
    args
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the schema (unless GITO_MIGRATE_ON_BOOT=false), then serve HTTP (the default).
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://gito:secret@localhost:5432/gito GITO_ADMIN_TOKEN=$(openssl rand -hex 32) gito-api serve"
    )]
    Serve(ServeConfig),
    /// Run only the telemetry processor (for scaling it out apart from the API).
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://gito:secret@localhost:5432/gito GITO_MQTT_URL=mqtt://gito-api:secret@localhost:1883 gito-api processor"
    )]
    Processor {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        mqtt: MqttConfig,
        #[command(flatten)]
        storage: StorageConfig,
    },
    /// Create a tenant with a given id unless it exists (bootstrap for deployments).
    #[command(
        after_help = "Example:\n  gito-api tenant ensure --id 01939d2a-0000-7000-8000-000000000001 --name plant"
    )]
    Tenant {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Tenant API tokens from the command line (bootstrap for deployments).
    #[command(after_help = "Example:\n  gito-api token generate")]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Inspect and move the schema version.
    #[command(
        after_help = "Example:\n  DATABASE_URL=postgres://gito:secret@localhost:5432/gito gito-api migrate current"
    )]
    Migrate {
        /// PostgreSQL URL, e.g. postgres://gito:secret@localhost:5432/gito (every command but `new`).
        #[arg(
            long = "database-url",
            env = "DATABASE_URL",
            hide_env_values = true,
            global = true
        )]
        database_url: Option<DatabaseUrl>,
        /// How long `up`, `down` and `stamp` wait for another process's migration lock before
        /// giving up (exit 1) with a line naming the holder, e.g. `30s`, `5m`.
        #[arg(long = "advisory-lock-wait", env = "GITO_MIGRATION_ADVISORY_LOCK_WAIT", default_value = "5m", value_parser = parse_duration, global = true)]
        lock_wait: Duration,
        #[command(flatten)]
        migration: MigrationConfig,
        #[command(flatten)]
        args: MigrateArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// `gito-api tenant ensure --id UUID --name NAME`: idempotent; prints the tenant id.
    #[command(
        after_help = "Example:\n  gito-api tenant ensure --id 01939d2a-0000-7000-8000-000000000001 --name plant"
    )]
    Ensure {
        #[arg(long, env = "GITO_TENANT_ID")]
        id: uuid::Uuid,
        #[arg(long, env = "GITO_TENANT_NAME", default_value = "default")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new random tenant token (`gito_<key>_<secret>`); stores nothing.
    #[command(after_help = "Example:\n  gito-api token generate")]
    Generate,
    /// Register the token in GITO_BRIDGE_API_TOKEN for a tenant unless it is registered;
    /// refuses if that token belongs to another tenant.
    #[command(
        after_help = "Example:\n  GITO_BRIDGE_API_TOKEN=$(gito-api token generate) gito-api token ensure --tenant-id 01939d2a-0000-7000-8000-000000000001"
    )]
    Ensure {
        #[command(flatten)]
        database: DatabaseConfig,
        #[arg(long, env = "GITO_TENANT_ID")]
        tenant_id: uuid::Uuid,
        #[arg(long, default_value = "bridge")]
        name: String,
        /// The token, as `gito-api token generate` prints it.
        #[arg(long, env = "GITO_BRIDGE_API_TOKEN", hide_env_values = true)]
        token: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, e.g. postgres://gito:secret@localhost:5432/gito
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub url: DatabaseUrl,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,
    /// The admin token: may do everything, including creating tenants and their tokens.
    /// Required; at least 32 characters (`openssl rand -hex 32`).
    #[arg(long, env = "GITO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: AdminToken,
    /// Address to listen on.
    #[arg(long, env = "GITO_API_ADDR", default_value = "0.0.0.0:8000")]
    pub addr: SocketAddr,
    /// Apply pending migrations before binding the port.
    #[arg(long, env = "GITO_MIGRATE_ON_BOOT", default_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub migrate_on_boot: bool,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "GITO_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a request may take before it is answered with 503.
    #[arg(long, env = "GITO_REQUEST_TIMEOUT_SECS", default_value = "30", value_parser = parse_secs)]
    pub request_timeout: Duration,
    /// Connections in the database pool.
    #[arg(long, env = "GITO_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
    /// How long migrating on boot waits for another process's migration lock before giving up
    /// (exit 1) with a line naming the holder, e.g. `30s`, `5m`.
    #[arg(long = "advisory-lock-wait", env = "GITO_MIGRATION_ADVISORY_LOCK_WAIT", default_value = "5m", value_parser = parse_duration)]
    pub migration_lock_wait: Duration,
    #[command(flatten)]
    pub migration: MigrationConfig,
    /// After migrating, compare the schema with what the migrations produce
    /// (`gito-api migrate check`): `warn` logs each difference, `refuse` exits 1 on drift,
    /// `off` skips it.
    #[arg(
        long = "migration-drift",
        env = "GITO_MIGRATION_DRIFT",
        default_value = "warn",
        value_enum
    )]
    pub migration_drift: DriftMode,
    /// How long one message to a WebSocket client may take to go out before the client, which
    /// is not reading, is dropped, e.g. `10s`.
    #[arg(long, env = "GITO_WS_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ws_send_timeout: Duration,
    /// Run the telemetry processor in this process (`off`: run `gito-api processor` elsewhere).
    #[arg(long, env = "GITO_PROCESSOR", default_value = "on", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub processor: bool,
    /// Serve live WebSocket updates, fanned out from the broker.
    #[arg(long, env = "GITO_LIVE", default_value = "on", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub live: bool,
    /// A device that sent nothing for this long is offline (unless its device type sets its own
    /// `offline_after_secs`), e.g. `10m`.
    #[arg(long, env = "GITO_DEVICE_OFFLINE_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub device_offline_after: Duration,
    #[command(flatten)]
    pub mqtt: MqttConfig,
    #[command(flatten)]
    pub storage: StorageConfig,
}

/// How long telemetry is kept and how it is laid out (docs/ARCHITECTURE.md, "Storage").
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Days of telemetry kept for a tenant whose `retention_days` is not set; unset: forever.
    #[arg(long, env = "GITO_TELEMETRY_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: Option<u32>,
    /// How many telemetry partitions the maintainer keeps created ahead of now.
    #[arg(long, env = "GITO_TELEMETRY_PARTITIONS_AHEAD", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub partitions_ahead: u32,
    /// The time span of one telemetry partition, from `1h` to `30d` (e.g. `1d`, `6h`); partitions
    /// start at UTC multiples of it.
    #[arg(long, env = "GITO_TELEMETRY_PARTITION_INTERVAL", default_value = "1d", value_parser = parse_partition_interval)]
    pub partition_interval: Duration,
    /// How far behind now the rollup follower keeps its edges (`30s`, `1m`, `5m`): a sample older
    /// than this when it is stored is recomputed rather than rolled up in its turn.
    #[arg(long, env = "GITO_ROLLUP_LAG", default_value = "1m", value_parser = parse_duration)]
    pub rollup_lag: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            retention_days: None,
            partitions_ahead: 7,
            partition_interval: Duration::from_secs(86_400),
            rollup_lag: Duration::from_secs(60),
        }
    }
}

/// A partition width: whole hours (`6h`) or days (`1d`), from one hour to 30 days, dividing a
/// day or made of whole days so that partitions line up with UTC days.
pub fn parse_partition_interval(s: &str) -> Result<Duration, String> {
    let expected =
        || format!("expected a partition interval from 1h to 30d such as 1d or 6h, got {s:?}");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(expected)?;
    let (number, unit) = s.split_at(split);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let hours = match unit {
        "h" => number,
        "d" => number.saturating_mul(24),
        _ => return Err(expected()),
    };
    if !(1..=30 * 24).contains(&hours) {
        return Err(expected());
    }
    if hours < 24 && 24 % hours != 0 || hours >= 24 && hours % 24 != 0 {
        return Err(format!(
            "{s:?} must divide a day (1h, 2h, 3h, 4h, 6h, 8h, 12h) or be whole days"
        ));
    }
    Ok(Duration::from_secs(hours * 3600))
}

/// The bounds every migration runs within, and where the migrations come from.
#[derive(Debug, Clone, Args)]
pub struct MigrationConfig {
    /// How long one migration statement may wait for a table lock (PostgreSQL `lock_timeout`)
    /// before the migration fails naming the sessions that held it, e.g. `10s`; `0`: forever.
    /// A migration's `-- gito: lock_timeout=...` header overrides it.
    #[arg(long = "migration-lock-timeout", env = "GITO_MIGRATION_LOCK_TIMEOUT", default_value = "10s", value_parser = parse_timeout, global = true)]
    pub lock_timeout: Duration,
    /// How long one migration statement may run (PostgreSQL `statement_timeout`), e.g. `10m`;
    /// `0`: forever. A migration's `-- gito: statement_timeout=...` header overrides it.
    #[arg(long = "migration-statement-timeout", env = "GITO_MIGRATION_STATEMENT_TIMEOUT", default_value = "10m", value_parser = parse_timeout, global = true)]
    pub statement_timeout: Duration,
    /// Read the migrations from this directory at run time instead of those compiled into the
    /// binary (development and tests).
    #[arg(
        long = "migrations-runtime-dir",
        env = "GITO_MIGRATIONS_RUNTIME_DIR",
        global = true
    )]
    pub runtime_dir: Option<std::path::PathBuf>,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        let defaults = RunOptions::default();
        MigrationConfig {
            lock_timeout: defaults.lock_timeout,
            statement_timeout: defaults.statement_timeout,
            runtime_dir: None,
        }
    }
}

impl MigrationConfig {
    pub fn options(&self, lock_wait: Duration) -> RunOptions {
        RunOptions {
            lock_wait,
            lock_timeout: self.lock_timeout,
            statement_timeout: self.statement_timeout,
        }
    }
}

/// A duration as for [`parse_duration`], or `0` / `off` for none.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    if s == "0" || s == "off" {
        Ok(Duration::ZERO)
    } else {
        parse_duration(s)
    }
}

#[derive(Debug, Clone, Args)]
pub struct MqttConfig {
    /// The local broker: mqtt://[user:password@]host:port
    #[arg(
        long = "mqtt-url",
        env = "GITO_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883",
        hide_env_values = true
    )]
    pub mqtt_url: MqttUrl,
    /// The processor's MQTT session id; unique per processor, stable across its restarts.
    #[arg(long, env = "GITO_PROCESSOR_CLIENT_ID", default_value_t = default_client_id())]
    pub processor_client_id: String,
    /// Messages written per transaction at most.
    #[arg(long, env = "GITO_PROCESSOR_BATCH_SIZE", default_value_t = 2000)]
    pub batch_size: usize,
    /// Rows (metrics) written per transaction at most; an envelope with more is written alone.
    #[arg(long, env = "GITO_PROCESSOR_BATCH_MAX_ROWS", default_value_t = 20_000)]
    pub batch_max_rows: usize,
    /// Bytes of topics and payloads per transaction at most; a larger message is written alone.
    #[arg(long, env = "GITO_PROCESSOR_BATCH_MAX_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub batch_max_bytes: usize,
    /// Milliseconds a batch waits to fill up.
    #[arg(long, env = "GITO_PROCESSOR_FLUSH_MS", default_value_t = 5)]
    pub flush_ms: u64,
    /// Batches stored at once: each device's messages go to one of this many workers, each
    /// storing one batch at a time.
    #[arg(long, env = "GITO_PROCESSOR_WORKERS", default_value_t = 1)]
    pub processor_workers: usize,
}

impl MqttConfig {
    pub fn processor(&self, storage: &StorageConfig) -> crate::processor::ProcessorConfig {
        crate::processor::ProcessorConfig {
            retention_days: storage.retention_days,
            mqtt: self.mqtt_url.options(&self.processor_client_id),
            batch_size: self.batch_size.max(1),
            max_rows: self.batch_max_rows.max(1),
            max_bytes: self.batch_max_bytes.max(1),
            flush_after: Duration::from_millis(self.flush_ms),
            workers: self.processor_workers.max(1),
        }
    }
}

/// `gito-processor-<hostname>`: distinct per container, the same across its restarts.
fn default_client_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    format!("gito-processor-{host}")
}

/// A database URL; it may carry a password, so `Debug` never shows it.
#[derive(Debug, Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// See [`connect_options`].
    pub fn connect_options(&self, application_name: &str) -> Result<PgConnectOptions, sqlx::Error> {
        connect_options(self.expose(), application_name)
    }
}

/// How gito-api connects to PostgreSQL: `application_name` says which part of it a connection
/// serves (in `pg_stat_activity`; one given in the URL wins), and the server probes an idle
/// connection after 30 s (then every 10 s, 3 times), so that a gito-api that vanished without
/// closing its connections (host lost, network cut) releases its backends and locks, such as the
/// migration lock, within about a minute. sqlx 0.9 cannot set TCP keepalive on its own end of
/// the socket; the client side is covered by timeouts instead (docs/OPERATIONS.md).
pub fn connect_options(url: &str, application_name: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = if options.get_application_name().is_some() {
        options
    } else {
        options.application_name(application_name)
    };
    Ok(options.options([
        ("tcp_keepalives_idle", "30"),
        ("tcp_keepalives_interval", "10"),
        ("tcp_keepalives_count", "3"),
    ]))
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(DatabaseUrl(SecretString::from(s)))
        } else {
            Err("expected a postgres:// or postgresql:// URL".to_owned())
        }
    }
}

/// A duration such as `300ms`, `30s`, `5m` or `1h` (a bare number is seconds); at least 1 ms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let expected = || format!("expected a duration such as 30s, 5m, 1h or 500ms, got {s:?}");
    let number: u64 = number.parse().map_err(|_| expected())?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(expected()),
    };
    if duration.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(duration)
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: u64 = s
        .parse()
        .map_err(|_| format!("expected whole seconds, got {s:?}"))?;
    if secs == 0 {
        return Err("must be at least 1 second".to_owned());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        with_default_command(list.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.into_string().expect("UTF-8"))
            .collect()
    }

    #[test]
    fn migration_bounds_default_to_the_documented_values_and_0_means_none() {
        let cli = Cli::try_parse_from(["gito-api", "migrate", "current"]).expect("parses");
        let Command::Migrate { migration, .. } = cli.command else {
            panic!("migrate");
        };
        let options = migration.options(Duration::from_secs(1));
        assert_eq!(options.lock_timeout, Duration::from_secs(10));
        assert_eq!(options.statement_timeout, Duration::from_secs(600));
        assert_eq!(
            (options.lock_timeout, options.statement_timeout),
            (
                crate::migrate::DEFAULT_LOCK_TIMEOUT,
                crate::migrate::DEFAULT_STATEMENT_TIMEOUT
            )
        );
        assert_eq!(parse_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_timeout("off"), Ok(Duration::ZERO));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn durations_read_with_their_unit() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "m", "5 minutes", "-1s", "1.5s", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn partition_intervals_are_hours_dividing_a_day_or_whole_days_up_to_30() {
        assert_eq!(
            parse_partition_interval("1d"),
            Ok(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_partition_interval("6h"),
            Ok(Duration::from_secs(6 * 3600))
        );
        assert_eq!(
            parse_partition_interval("48h"),
            Ok(Duration::from_secs(2 * 86_400))
        );
        assert_eq!(
            parse_partition_interval("30d"),
            Ok(Duration::from_secs(30 * 86_400))
        );
        for bad in [
            "", "0h", "1", "5h", "25h", "31d", "1w", "30m", "1.5d", "-1d",
        ] {
            assert!(parse_partition_interval(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connections_say_who_they_are_unless_the_url_does() {
        let named = connect_options("postgres://u@h/db", "gito-api").expect("URL");
        assert_eq!(named.get_application_name(), Some("gito-api"));
        assert!(
            named
                .get_options()
                .is_some_and(|o| o.contains("tcp_keepalives_idle=30"))
        );
        let own =
            connect_options("postgres://u@h/db?application_name=mine", "gito-api").expect("URL");
        assert_eq!(own.get_application_name(), Some("mine"));
    }

    #[test]
    fn without_a_command_gito_api_serves() {
        assert_eq!(args(&["gito-api"]), ["gito-api", "serve"]);
        assert_eq!(
            args(&["gito-api", "--addr", "x"]),
            ["gito-api", "serve", "--addr", "x"]
        );
        assert_eq!(
            args(&["gito-api", "migrate", "up"]),
            ["gito-api", "migrate", "up"]
        );
        assert_eq!(args(&["gito-api", "--help"]), ["gito-api", "--help"]);
    }
}
