//! Typed configuration from the environment (every variable is also a flag); secrets never print.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rumqttc::{MqttOptions, Transport};
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge (the default).
    Run(Box<BridgeConfig>),

    /// Print what each topic maps to with the mapping file (or the default mapping).
    /// Publish simulated plant telemetry to a broker (for demos, tests and benchmarks).
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
    CheckMapping {
        #[arg(long, env = "GITO_BRIDGE_MAPPING")]
        mapping: Option<PathBuf>,
        #[arg(required = true)]
        topics: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
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
    #[arg(long, env = "GITO_API_TOKEN", hide_env_values = true)]
    pub api_token: Secret,
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
}

impl BridgeConfig {
    pub fn stats_interval(&self) -> Duration {
        Duration::from_secs(self.stats_interval_secs.max(1))
    }
}

/// A secret from the environment: `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `mqtt://user:password@host:port?client_id=id` (`mqtts://` for TLS).
#[derive(Clone)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub client_id: Option<String>,
}

impl FromStr for MqttUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("scheme must be mqtt or mqtts, not {other}")),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the URL has no host")?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        Ok(MqttUrl {
            tls,
            host: host.to_owned(),
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            username: Some(url.username())
                .filter(|u| !u.is_empty())
                .and_then(decode),
            password: url.password().and_then(decode).map(Secret),
            client_id: url
                .query_pairs()
                .find(|(k, _)| k == "client_id")
                .map(|(_, v)| v.into_owned()),
        })
    }
}

impl fmt::Debug for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        let user = self
            .username
            .as_deref()
            .map(|u| format!("{u}:***@"))
            .unwrap_or_default();
        write!(f, "\"{scheme}://{user}{}:{}\"", self.host, self.port)
    }
}

impl MqttUrl {
    /// rumqttc options; `default_client_id` is used unless the URL names one.
    pub fn options(&self, default_client_id: &str) -> MqttOptions {
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id.to_owned());
        let mut options = MqttOptions::new(client_id, &self.host, self.port);
        if let Some(user) = &self.username {
            let password = self
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            options.set_credentials(user, password);
        }
        if self.tls {
            options.set_transport(Transport::tls_with_default_config());
        }
        options.set_keep_alive(Duration::from_secs(15));
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_parse_and_never_print_their_password() {
        let url: MqttUrl = "mqtts://bridge:s%40cret@broker.example:9999?client_id=plant-7"
            .parse()
            .expect("valid");
        assert!(url.tls);
        assert_eq!((url.host.as_str(), url.port), ("broker.example", 9999));
        assert_eq!(url.username.as_deref(), Some("bridge"));
        assert_eq!(url.password.as_ref().map(Secret::expose), Some("s@cret"));
        assert_eq!(url.client_id.as_deref(), Some("plant-7"));
        let shown = format!("{url:?}");
        assert!(
            !shown.contains("s@cret") && !shown.contains("s%40cret"),
            "{shown}"
        );
        let plain: MqttUrl = "mqtt://localhost".parse().expect("valid");
        assert_eq!((plain.port, plain.tls, plain.username), (1883, false, None));
        assert!("http://x".parse::<MqttUrl>().is_err());
    }
}
