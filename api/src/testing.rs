//! Test support shared by gito's test suites (feature `testing`): a fresh database per test, the
//! API served in-process, and real Mosquitto brokers on free ports. Nothing here is mocked.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{DatabaseConfig, ServeConfig};
use crate::startup::Server;

/// The admin token of every API the tests start.
pub const ADMIN_TOKEN: &str = "gito-test-admin-token-0123456789abcdef";

/// The server tests create their databases on; any database of it will do.
pub fn server_url() -> String {
    std::env::var("GITO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of its own for one test. `scripts/test.sh` drops leftovers (`gito_test_*`).
pub struct TestDb {
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let server = server_url();
        let name = format!("gito_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&server)
            .await
            .expect("connect to test PostgreSQL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let (base, _) = server.rsplit_once('/').expect("database URL has a path");
        TestDb {
            url: format!("{base}/{name}"),
        }
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

pub fn serve_config(db_url: &str, addr: SocketAddr) -> ServeConfig {
    ServeConfig {
        database: DatabaseConfig {
            url: db_url.parse().expect("postgres URL"),
        },
        admin_token: ADMIN_TOKEN.parse().expect("a valid admin token"),
        addr,
        migrate_on_boot: true,
        max_body_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(10),
        db_max_connections: 4,
        processor: false,
        live: false,
        mqtt: crate::config::MqttConfig {
            mqtt_url: "mqtt://127.0.0.1:1883".to_owned(),
            processor_client_id: format!("gito-processor-test-{}", Uuid::new_v4().simple()),
            batch_size: 500,
            flush_ms: 5,
        },
    }
}

/// gito-api served in-process; stops when dropped.
pub struct TestApi {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApi {
    /// Migrates `db_url` and serves on `addr` (port 0: any free port), without MQTT.
    pub async fn start(db_url: &str, addr: SocketAddr) -> TestApi {
        TestApi::start_with(serve_config(db_url, addr)).await
    }

    /// Serves with the processor and the live fan-out on `broker_url`.
    pub async fn start_processing(db_url: &str, broker_url: &str) -> TestApi {
        let mut config = serve_config(db_url, "127.0.0.1:0".parse().expect("address"));
        config.processor = true;
        config.live = true;
        config.mqtt.mqtt_url = broker_url.to_owned();
        TestApi::start_with(config).await
    }

    pub async fn start_with(config: ServeConfig) -> TestApi {
        let server = Server::build(&config).await.expect("server builds");
        let addr = server.local_addr().expect("bound");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestApi {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits until the port is closed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP client that sends `Authorization: Bearer <token>` with every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value: reqwest::header::HeaderValue = format!("Bearer {token}")
        .parse()
        .expect("a token is a valid header value");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("HTTP client")
}

/// An HTTP client with the admin token of the APIs the tests start.
pub fn admin_client() -> reqwest::Client {
    client_with_token(ADMIN_TOKEN)
}

/// Creates a tenant through the API (as the admin); returns its id.
pub async fn create_tenant(api_url: &str, name: &str) -> Uuid {
    let tenant: serde_json::Value = admin_client()
        .post(format!("{api_url}/tenants"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .expect("create tenant")
        .json()
        .await
        .expect("tenant JSON");
    tenant["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("tenant id")
}

/// Creates a token for `tenant_id` through the API (as the admin); returns its secret.
pub async fn create_tenant_token(api_url: &str, tenant_id: Uuid) -> String {
    let created: serde_json::Value = admin_client()
        .post(format!("{api_url}/tenants/{tenant_id}/tokens"))
        .json(&serde_json::json!({ "name": "test" }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("create token")
        .json()
        .await
        .expect("token JSON");
    created["token"].as_str().expect("token secret").to_owned()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A real `mosquitto` on a free port, with persistence in a directory of its own.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Appended to the generated configuration (e.g. a `connection` bridge section).
    extra_config: String,
}

impl Broker {
    pub async fn start() -> Broker {
        Broker::start_with("").await
    }

    pub async fn start_with(extra_config: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        // Run as root, mosquitto switches to its own user, which must be able to write here.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
        }
        let mut broker = Broker {
            port: free_port(),
            dir,
            child: None,
            extra_config: extra_config.to_owned(),
        };
        broker.launch().await;

        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    async fn launch(&mut self) {
        let dir = self.dir.path().display();
        // Unlimited queues: these brokers stand in for ones configured not to drop, so that a
        // lost message in a test is the bridge's fault and nobody else's.
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {dir}/\n\
             autosave_interval 1\nmax_queued_messages 0\nmax_queued_bytes 0\nlog_dest file {dir}/mosquitto.log\n",
            port = self.port
        ) + &self.extra_config;

        std::fs::write(self.config_path(), config).expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto runs (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_for(
            Duration::from_secs(10),
            "mosquitto accepting connections",
            || async { tokio::net::TcpStream::connect(&addr).await.is_ok() },
        )
        .await;
    }

    /// Stops the broker the way an orchestrator does (SIGTERM: it saves its persistence file).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

/// Polls `check` until it holds; panics with `what` at the deadline.
pub async fn wait_for<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let result = tokio::time::timeout(deadline, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "timed out after {deadline:?} waiting for {what}"
    );
}

/// Publishes `messages` at QoS 1 as fast as the broker takes them; returns once every one was
/// acknowledged by the broker.
pub async fn publish_all(broker_url: &str, messages: Vec<(String, Vec<u8>)>) {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let id = format!("test-publisher-{}", Uuid::new_v4().simple());
    let mut options = crate::processor::mqtt_options(broker_url, &id).expect("broker URL");
    options.set_inflight(500);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let total = messages.len();
    let driver = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher lost the broker: {e}"),
            }
        }
    });
    for (topic, payload) in messages {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(120), driver)
        .await
        .expect("every publish acknowledged in time")
        .expect("publisher task");
    let _ = client.disconnect().await;
}
