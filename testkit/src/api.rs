//! gito-api served in-process on a free port, and the HTTP helpers every suite talks to it with.

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use gito_api::config::{DatabaseConfig, MqttConfig, ServeConfig};
use gito_api::startup::Server;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::TestDb;

/// The admin token of every API the tests start.
pub const ADMIN_TOKEN: &str = "gito-test-admin-token-0123456789abcdef";

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
        migration_lock_wait: Duration::from_secs(300),
        migration: Default::default(),
        // Every in-process test app would replay the migrations once more; drift at boot has
        // its own tests (api/tests/api/drift.rs) against the real binary.
        migration_drift: gito_api::migrate::DriftMode::Off,
        ws_send_timeout: Duration::from_secs(10),
        processor: false,
        live: false,
        device_offline_after: Duration::from_secs(600),
        mqtt: MqttConfig {
            mqtt_url: "mqtt://127.0.0.1:1883".parse().expect("MQTT URL"),
            processor_client_id: format!("gito-processor-test-{}", Uuid::new_v4().simple()),
            batch_size: 500,
            batch_max_rows: 20_000,
            batch_max_bytes: 8 * 1024 * 1024,
            flush_ms: 5,
            processor_workers: 2,
        },
        storage: Default::default(),
    }
}

/// gito-api served in-process; stops when dropped.
pub struct TestApi {
    pub addr: SocketAddr,
    /// Sends the admin token with every request.
    pub client: reqwest::Client,
    /// Sends no token unless told to (`send_as`).
    pub anonymous: reqwest::Client,
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
        config.mqtt.mqtt_url = broker_url.parse().expect("MQTT URL");
        TestApi::start_with(config).await
    }

    pub async fn start_with(config: ServeConfig) -> TestApi {
        let server = Server::build(&config).await.expect("server builds");
        let addr = server.local_addr().expect("bound");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        TestApi {
            addr,
            client: admin_client(),
            anonymous: reqwest::Client::new(),
            shutdown,
            task: Some(task),
        }
    }

    /// The base URL with `path` appended (`url("")` is the base).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops serving and waits until the port is closed; returns how `run` ended.
    pub async fn stop(mut self) -> Option<anyhow::Result<()>> {
        self.shutdown.cancel();
        let task = self.task.take()?;
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .ok()
            .map(|joined| joined.expect("the server task does not panic"))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        into_parts(self.client.get(self.url(path)).send().await).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        into_parts(self.client.post(self.url(path)).json(&body).send().await).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        into_parts(self.client.patch(self.url(path)).json(&body).send().await).await
    }

    pub async fn delete(&self, path: &str) -> StatusCode {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("request sent")
            .status()
    }

    /// Sends a raw body with the given content type.
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let request = self
            .client
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body);
        into_parts(request.send().await).await
    }

    /// Sends with `token` as the bearer token, or with no `Authorization` header at all.
    pub async fn send_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.anonymous.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        into_parts(request.send().await).await
    }

    /// GET with `token` as the bearer token.
    pub async fn get_as(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.send_as(Some(token), reqwest::Method::GET, path, None)
            .await
    }

    /// Creates a token for `tenant` (as the admin) and returns its secret.
    pub async fn token_for(&self, tenant: Uuid) -> String {
        create_tenant_token(&self.url(""), tenant).await
    }

    /// Creates a tenant and returns its id.
    pub async fn tenant(&self, name: &str) -> Uuid {
        create_tenant(&self.url(""), name).await
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The API on a fresh, migrated database of its own, and a pool on that database.
pub struct TestApp {
    pub api: TestApi,
    pub pool: PgPool,
    pub db_url: String,
    /// Last, so the database is dropped after the API and the pool let go of it.
    pub db: TestDb,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        let db = TestDb::migrated().await;
        let api = TestApi::start(&db.url, "127.0.0.1:0".parse().expect("address")).await;
        let pool = PgPool::connect(&db.url).await.expect("test pool");
        TestApp {
            api,
            pool,
            db_url: db.url.clone(),
            db,
        }
    }
}

impl Deref for TestApp {
    type Target = TestApi;

    fn deref(&self) -> &TestApi {
        &self.api
    }
}

async fn into_parts(response: reqwest::Result<reqwest::Response>) -> (StatusCode, Value) {
    let response = response.expect("request sent");
    let status = response.status();
    let text = response.text().await.expect("body read");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{status}: body is not JSON: {text:?}"))
    };
    (status, body)
}

pub fn id_of(body: &Value) -> Uuid {
    body["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {body}"))
}

/// Asserts the error shape and returns its code.
#[track_caller]
pub fn error_code(body: &Value) -> &str {
    let code = body["error"]["code"].as_str();
    assert!(
        body["error"]["message"].is_string(),
        "not an error body: {body}"
    );
    code.unwrap_or_else(|| panic!("not an error body: {body}"))
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
    let created: Value = admin_client()
        .post(format!("{api_url}/tenants"))
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("create tenant")
        .json()
        .await
        .expect("tenant JSON");
    id_of(&created)
}

/// Creates a token for `tenant_id` through the API (as the admin); returns its secret.
pub async fn create_tenant_token(api_url: &str, tenant_id: Uuid) -> String {
    let created: Value = admin_client()
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
