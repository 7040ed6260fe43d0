//! Typed configuration from the environment (every variable is also a flag); secrets never print.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use gito_runtime::SecretString;
use gito_runtime::logging::LogArgs;
use gito_runtime::mqtt::MqttUrl;
use url::Url;
use uuid::Uuid;

#[derive(Debug, Parser)]
#[command(
    name = "gito-bridge",
    version,
    about = "Bridges an external MQTT broker into gito"
)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `run`'s options, so that plain `gito-bridge` runs the bridge.
    #[command(flatten)]
    pub run: Option<BridgeConfig>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge (the default).
    #[command(
        after_help = "Example:\n  GITO_EXTERNAL_MQTT_URL=mqtt://plant-broker:1883 GITO_TENANT_ID=01939d2a-0000-7000-8000-000000000001 GITO_API_TOKEN=gito_... gito-bridge run"
    )]
    Run(Box<BridgeConfig>),
    /// Publish simulated plant telemetry to a broker (for demos, tests and benchmarks).
    #[command(
        after_help = "Example:\n  gito-bridge simulate --broker mqtt://127.0.0.1:11884 --devices 30 --rate 20"
    )]
    Simulate {
        /// The broker to publish to, e.g. mqtt://127.0.0.1:1884
        #[arg(long, env = "GITO_SIMULATOR_BROKER", hide_env_values = true)]
        broker: MqttUrl,
        #[arg(long, env = "GITO_SIMULATOR_DEVICES", default_value_t = 50)]
        devices: usize,
        /// Messages per second.
        #[arg(long, env = "GITO_SIMULATOR_RATE", default_value_t = 20)]
        rate: u64,
        /// Seconds to run (until stopped when absent).
        #[arg(long, env = "GITO_SIMULATOR_DURATION")]
        duration: Option<u64>,
    },
    /// Print what each topic maps to with the mapping file (or the default mapping).
    #[command(
        after_help = "Example:\n  gito-bridge check-mapping --mapping mapping.toml SDE11/JAX/UTILITIES/BOILER/OPT_G/CHIMNEY_TEMP"
    )]
    CheckMapping {
        #[arg(long, env = "GITO_BRIDGE_MAPPING")]
        mapping: Option<PathBuf>,
        #[arg(required = true)]
        topics: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BridgeConfig {
    /// The broker devices publish to: mqtt:// or mqtts://, user and password allowed,
    /// `?client_id=` to set the (stable) session id.
    #[arg(long, env = "GITO_EXTERNAL_MQTT_URL", hide_env_values = true)]
    pub external_mqtt_url: MqttUrl,
    /// Comma-separated topic filters to subscribe to on the external broker.
    #[arg(
        long,
        env = "GITO_BRIDGE_TOPICS",
        value_delimiter = ',',
        default_value = "#"
    )]
    pub topics: Vec<String>,
    /// The local broker the processor reads from.
    #[arg(
        long,
        env = "GITO_LOCAL_MQTT_URL",
        default_value = "mqtt://127.0.0.1:1883",
        hide_env_values = true
    )]
    pub local_mqtt_url: MqttUrl,
    /// gito-api's base URL.
    #[arg(long, env = "GITO_API_URL", default_value = "http://127.0.0.1:8000")]
    pub api_url: Url,
    /// The tenant the discovered devices belong to.
    #[arg(long, env = "GITO_TENANT_ID")]
    pub tenant_id: Uuid,
    /// A token of the tenant (or the admin token), sent to the API as `Authorization: Bearer`.
    #[arg(long, env = "GITO_API_TOKEN", hide_env_values = true, value_parser = gito_runtime::parse_secret)]
    pub api_token: SecretString,
    /// TOML file of topic mapping rules (default: device = topic without its last level).
    #[arg(long, env = "GITO_BRIDGE_MAPPING")]
    pub mapping: Option<PathBuf>,
    /// Directory of the on-disk spool used while the API or the local broker is down.
    #[arg(long, env = "GITO_BRIDGE_SPOOL_DIR", default_value = "spool")]
    pub spool_dir: PathBuf,
    /// Bytes the spool may hold; past that the oldest messages are dropped (and counted).
    #[arg(long, env = "GITO_BRIDGE_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// Payloads larger than this are counted and skipped.
    #[arg(long, env = "GITO_BRIDGE_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024)]
    pub max_payload_bytes: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "GITO_BRIDGE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds between the counters' log lines.
    #[arg(long, env = "GITO_BRIDGE_STATS_INTERVAL_SECS", default_value_t = 60)]
    pub stats_interval_secs: u64,
    /// Seconds the bridge keeps what the local broker acknowledged, to replay it if that broker
    /// crashes: must exceed the local broker's `autosave_interval` (5 s as shipped).
    #[arg(long, env = "GITO_BRIDGE_REPLAY_WINDOW_SECS", default_value_t = 15)]
    pub replay_window_secs: u64,
    /// Device paths whose id is cached; past it the least recently used are forgotten (and asked
    /// for again when they next publish).
    #[arg(
        long,
        env = "GITO_BRIDGE_DEVICE_CACHE_MAX",
        default_value_t = 1_000_000
    )]
    pub device_cache_max: usize,
    /// Devices the bridge may create per minute (0: no bound); messages of new paths over it wait
    /// in the waiting lane until the budget refills.
    #[arg(
        long,
        env = "GITO_BRIDGE_MAX_NEW_DEVICES_PER_MINUTE",
        default_value_t = 60_000
    )]
    pub max_new_devices_per_minute: u32,
    /// Memory the replay window may use; past it the oldest entries leave early (logged).
    #[arg(long, env = "GITO_BRIDGE_REPLAY_MAX_BYTES", default_value_t = 64 << 20)]
    pub replay_max_bytes: usize,
}

impl BridgeConfig {
    pub fn stats_interval(&self) -> Duration {
        Duration::from_secs(self.stats_interval_secs.max(1))
    }
}
