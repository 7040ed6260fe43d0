//! The whole deployment, as processes: an external (plant) broker, gito-bridge, gito's local
//! broker as shipped, `gito-api serve` with the processor, and a migrated database — either a
//! fresh one on the shared test server or a private server the test may restart. Every part can
//! be stopped, killed, frozen and started again on the same port with the same data, which is
//! what each scenario of the matrix does to one of them.
//!
//! The children's output goes to log files in the stack's tempdir; when a test fails they are
//! printed (their tails), and with `GITO_TEST_KEEP=1` the tempdir is kept for a look.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::process::Command;
use uuid::Uuid;

use crate::db::{TestDatabase, create_database};
use crate::mosquitto::{LocalUsers, Mosquitto, world_writable};
use crate::postgres::PrivatePostgres;
use crate::procs::{Proc, binary, tail};
use crate::publisher::Publisher;
use gito_testkit::{free_port, wait_for};

/// The admin token of every gito-api the matrix starts.
pub const ADMIN_TOKEN: &str = "gito-fault-matrix-admin-token-0123456789abcdef";

/// The processor's MQTT session id: stable across restarts, so the broker queues for it.
const PROCESSOR_CLIENT_ID: &str = "gito-processor-fault-matrix";
/// Device path of the probes that check the pipeline end to end; not part of any count.
const PROBE_PREFIX: &str = "FMPROBE";
/// How long a scenario waits for its rows after the fault.
pub const STORE_DEADLINE: Duration = Duration::from_secs(45);
const START_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone)]
pub struct Options {
    /// A PostgreSQL server of the test's own (the scenario restarts it).
    pub private_postgres: bool,
    /// The spool directory (default: one in the tempdir), e.g. on a tiny tmpfs.
    pub spool_dir: Option<PathBuf>,
    /// Extra environment for gito-api and for gito-bridge.
    pub api_env: Vec<(&'static str, String)>,
    pub bridge_env: Vec<(&'static str, String)>,
}

enum Database {
    Shared { _kept: TestDatabase },
    Private(PrivatePostgres),
}

pub struct Stack {
    pub tenant: Uuid,
    /// The tenant token the bridge uses.
    pub token: String,
    pub api_port: u16,
    pub pool: PgPool,
    pub db_url: String,
    pub spool_dir: PathBuf,
    // Dropped in this order: the processes first, the data they use last.
    bridge: Option<Proc>,
    api: Option<Proc>,
    pub local: Mosquitto,
    pub external: Mosquitto,
    bridge_metrics_port: u16,
    users: LocalUsers,
    options: Options,
    logs: PathBuf,
    probes: u64,
    database: Database,
    dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(options: Options) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("gito-fault-matrix-")
            .tempdir()
            .expect("tempdir");
        // The brokers and PostgreSQL run as users of their own and must reach their directories.
        world_writable(dir.path());
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        world_writable(&logs);

        let (database, db_url) = if options.private_postgres {
            let server =
                PrivatePostgres::start(&dir.path().join("postgres"), &logs.join("postgres.log"))
                    .await;
            create_database(&server.url("postgres"), "gito").await;
            let url = server.url("gito");
            gito_api_cli(&url, &["migrate", "up"]).await;
            (Database::Private(server), url)
        } else {
            let db = TestDatabase::create().await;
            let url = db.url.clone();
            gito_api_cli(&url, &["migrate", "up"]).await;
            (Database::Shared { _kept: db }, url)
        };
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect(&with_application_name(&db_url, "fault-matrix"))
            .await
            .expect("connect to the test database");

        // The tenant and the bridge's token, as entrypoint.sh registers them.
        let tenant = Uuid::now_v7();
        let id = tenant.to_string();
        gito_api_cli(
            &db_url,
            &["tenant", "ensure", "--id", &id, "--name", "plant"],
        )
        .await;
        let token = gito_api_cli(&db_url, &["token", "generate"])
            .await
            .trim()
            .to_owned();
        gito_api_cli_env(
            &db_url,
            &["token", "ensure", "--tenant-id", &id],
            &[("GITO_BRIDGE_API_TOKEN", &token)],
        )
        .await;

        let users = LocalUsers {
            tenant,
            api_password: format!("api-{}", Uuid::new_v4().simple()),
            bridge_password: format!("bridge-{}", Uuid::new_v4().simple()),
        };
        let local = Mosquitto::shipped(dir.path(), &logs, users.clone()).await;
        let external = Mosquitto::external(dir.path(), &logs).await;
        let spool_dir = options
            .spool_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("spool"));

        let mut stack = Stack {
            tenant,
            token,
            api_port: free_port(),
            pool,
            db_url,
            spool_dir,
            bridge: None,
            api: None,
            local,
            external,
            bridge_metrics_port: free_port(),
            users,
            options,
            logs,
            probes: 0,
            database,
            dir,
        };
        stack.start_api().await;
        stack.start_bridge().await;
        stack.wait_flowing().await;
        stack
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    // --- gito-api -------------------------------------------------------------------------

    /// Starts `gito-api serve` (processor and live fan-out on) and waits until it answers
    /// `/ready` and its processor connected to the local broker.
    pub async fn start_api(&mut self) {
        assert!(self.api.is_none(), "gito-api is already running");
        let log = self.logs.join("gito-api.log");
        let connected_before = count_in(&log, "processor connected to the broker");
        let mut command = Command::new(binary("gito-api"));
        command
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", &self.db_url)
            .env("GITO_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("GITO_API_ADDR", format!("127.0.0.1:{}", self.api_port))
            .env(
                "GITO_MQTT_URL",
                self.local.url_as("gito-api", &self.users.api_password),
            )
            .env("GITO_PROCESSOR_CLIENT_ID", PROCESSOR_CLIENT_ID)
            .env("GITO_DB_MAX_CONNECTIONS", "4")
            .env("GITO_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,rumqttc=warn,tower_http=warn")
            .envs(self.options.api_env.iter().map(|(k, v)| (*k, v.as_str())));
        self.api = Some(Proc::spawn("gito-api", command, &log));
        let ready = format!("{}/ready", self.api_url());
        let api = self.api.as_mut().expect("just started");
        let client = reqwest::Client::new();
        let started = tokio::time::timeout(START_DEADLINE, async {
            loop {
                if let Some(status) = api.exited() {
                    return Err(status);
                }
                let is_ready = client
                    .get(&ready)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::OK);
                if is_ready
                    && count_in(&log, "processor connected to the broker") > connected_before
                {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match started {
            Ok(Ok(())) => {}
            Ok(Err(status)) => panic!("gito-api exited with {status}:\n{}", tail(&log, 30)),
            Err(_) => panic!(
                "gito-api not ready (or its processor not connected) within {START_DEADLINE:?}:\n{}",
                tail(&log, 30)
            ),
        }
    }

    /// SIGTERM: gito-api drains (the processor commits and acks its batch) and exits.
    pub async fn stop_api(&mut self) {
        let mut api = self.api.take().expect("gito-api is running");
        api.terminate(Duration::from_secs(15)).await;
    }

    /// SIGKILL: the processor dies with its batch uncommitted and unacknowledged.
    pub async fn kill_api(&mut self) {
        let mut api = self.api.take().expect("gito-api is running");
        api.kill().await;
    }

    /// SIGSTOP: the processor reads nothing meanwhile; the local broker holds its messages.
    pub async fn pause_api(&self) {
        self.api
            .as_ref()
            .expect("gito-api is running")
            .pause()
            .await;
    }

    pub async fn resume_api(&self) {
        self.api
            .as_ref()
            .expect("gito-api is running")
            .resume()
            .await;
    }

    /// One counter of gito-api's `/metrics` (admin), e.g. `gito_processor_rows_duplicate_total`.
    pub async fn api_metric(&self, name: &str) -> Option<u64> {
        let page = reqwest::Client::new()
            .get(format!("{}/metrics", self.api_url()))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metric_of(&page, name)
    }

    // --- gito-bridge ----------------------------------------------------------------------

    /// Starts gito-bridge and waits until it is subscribed on the external broker.
    pub async fn start_bridge(&mut self) {
        assert!(self.bridge.is_none(), "gito-bridge is already running");
        let log = self.logs.join("gito-bridge.log");
        let mut command = Command::new(binary("gito-bridge"));
        command
            .env_clear()
            .env("GITO_EXTERNAL_MQTT_URL", self.external.url())
            .env(
                "GITO_LOCAL_MQTT_URL",
                self.local
                    .url_as("gito-bridge", &self.users.bridge_password),
            )
            .env("GITO_API_URL", self.api_url())
            .env("GITO_TENANT_ID", self.tenant.to_string())
            .env("GITO_API_TOKEN", &self.token)
            .env("GITO_BRIDGE_SPOOL_DIR", &self.spool_dir)
            .env(
                "GITO_BRIDGE_METRICS_ADDR",
                format!("127.0.0.1:{}", self.bridge_metrics_port),
            )
            .env("GITO_BRIDGE_STATS_INTERVAL_SECS", "5")
            .env("GITO_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,rumqttc=warn")
            .envs(
                self.options
                    .bridge_env
                    .iter()
                    .map(|(k, v)| (*k, v.as_str())),
            );
        self.bridge = Some(Proc::spawn("gito-bridge", command, &log));
        let metrics = self.metrics_url();
        let bridge = self.bridge.as_mut().expect("just started");
        let started = tokio::time::timeout(START_DEADLINE, async {
            loop {
                if let Some(status) = bridge.exited() {
                    return Err(status);
                }
                if metric_of(&scrape(&metrics).await, "gito_bridge_external_connected") == Some(1) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match started {
            Ok(Ok(())) => {}
            Ok(Err(status)) => panic!("gito-bridge exited with {status}:\n{}", tail(&log, 30)),
            Err(_) => panic!(
                "gito-bridge not subscribed within {START_DEADLINE:?}:\n{}",
                tail(&log, 30)
            ),
        }
    }

    pub async fn kill_bridge(&mut self) {
        let mut bridge = self.bridge.take().expect("gito-bridge is running");
        bridge.kill().await;
    }

    /// SIGSTOP: the bridge keeps its connections open and reads nothing, as a stalled host.
    pub async fn pause_bridge(&self) {
        self.bridge
            .as_ref()
            .expect("gito-bridge is running")
            .pause()
            .await;
    }

    pub async fn resume_bridge(&self) {
        self.bridge
            .as_ref()
            .expect("gito-bridge is running")
            .resume()
            .await;
    }

    pub fn bridge_log(&self) -> String {
        std::fs::read_to_string(self.logs.join("gito-bridge.log")).unwrap_or_default()
    }

    fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.bridge_metrics_port)
    }

    /// The bridge's Prometheus page (empty while it is down).
    pub async fn bridge_metrics(&self) -> String {
        scrape(&self.metrics_url()).await
    }

    /// One counter or gauge of the bridge, e.g. `gito_bridge_republished_total`.
    pub async fn bridge_metric(&self, name: &str) -> Option<u64> {
        metric_of(&self.bridge_metrics().await, name)
    }

    /// Waits until the bridge's counter `name` has risen by `by` from now; how much it rose.
    pub async fn wait_bridge_metric_rise(&self, name: &str, by: u64, deadline: Duration) -> u64 {
        let before = self.bridge_metric(name).await.unwrap_or(0);
        self.wait_bridge_metric(name, before + by, deadline).await;
        self.bridge_metric(name).await.unwrap_or(0) - before
    }

    /// Waits until the bridge's counter `name` reaches `at_least`.
    pub async fn wait_bridge_metric(&self, name: &str, at_least: u64, deadline: Duration) {
        let what = format!("{name} >= {at_least}");
        wait_for(deadline, &what, || async {
            self.bridge_metric(name).await.unwrap_or(0) >= at_least
        })
        .await;
    }

    // --- the brokers ----------------------------------------------------------------------

    pub async fn kill_local_broker(&mut self) {
        self.local.kill().await;
    }

    pub async fn stop_local_broker(&mut self) {
        self.local.stop().await;
    }

    /// On the same port, with the same persistence directory.
    pub async fn start_local_broker(&mut self) {
        self.local.start_again().await;
    }

    /// Waits until the local broker wrote its persistence file after `since` (its autosave), so
    /// that what it holds now (the processor's subscription) survives a crash.
    pub async fn wait_local_broker_saved(&self, since: std::time::SystemTime) {
        let db = self.local.data_dir().join("mosquitto.db");
        wait_for(
            Duration::from_secs(15),
            "the local broker's autosave",
            || async {
                std::fs::metadata(&db)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > since)
            },
        )
        .await;
    }

    // --- PostgreSQL -----------------------------------------------------------------------

    /// Terminates every backend gito-api holds on its database (not the test's own).
    pub async fn terminate_api_connections(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM (
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND application_name <> 'fault-matrix') AS t",
        )
        .fetch_one(&self.pool)
        .await
        .expect("terminate gito-api's backends")
    }

    /// Stops the private PostgreSQL (`fast`: as an orchestrator; `immediate`: as a crash).
    pub async fn stop_postgres(&mut self, mode: &str) {
        match &mut self.database {
            Database::Private(server) => server.stop(mode).await,
            Database::Shared { .. } => panic!("the shared PostgreSQL is never stopped by a test"),
        }
    }

    pub async fn start_postgres(&mut self) {
        match &mut self.database {
            Database::Private(server) => server.start_again().await,
            Database::Shared { .. } => panic!("the shared PostgreSQL is never stopped by a test"),
        }
    }

    /// Publishes probes through the external broker until one is stored: every part is up and
    /// the processor's subscription is in place (the broker drops what nobody subscribed to).
    pub async fn wait_flowing(&mut self) {
        let publisher = Publisher::connect(&self.external.url()).await;
        let started = Instant::now();
        loop {
            self.probes += 1;
            publisher
                .publish(&format!("{PROBE_PREFIX}/p/v"), self.probes.to_string())
                .await;
            let deadline = Instant::now() + Duration::from_millis(500);
            while Instant::now() < deadline {
                if self.stored(PROBE_PREFIX).await > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                started.elapsed() < START_DEADLINE,
                "no probe reached the database within {START_DEADLINE:?}"
            );
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.logs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            eprintln!(
                "----- {} (last 40 lines)\n{}",
                log.display(),
                tail(&log, 40)
            );
        }
        if std::env::var_os("GITO_TEST_KEEP").is_some() {
            let kept = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("a placeholder tempdir"),
            );
            eprintln!("fault-matrix: kept {}", kept.keep().display());
        }
    }
}

async fn scrape(url: &str) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("HTTP client");
    match client.get(url).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `name value` in a Prometheus page.
pub fn metric_of(page: &str, name: &str) -> Option<u64> {
    page.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse::<f64>().ok().map(|v| v as u64))?
    })
}

fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// Runs a `gito-api` subcommand against `db_url`; returns its stdout, panics with its stderr.
pub async fn gito_api_cli(db_url: &str, args: &[&str]) -> String {
    gito_api_cli_env(db_url, args, &[]).await
}

async fn gito_api_cli_env(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(binary("gito-api"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", db_url)
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output()
        .await
        .expect("gito-api runs");
    assert!(
        output.status.success(),
        "gito-api {}: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
