//! Test fixtures: a fresh database per test, the real server on port 0 (in-process) or the real
//! `gito-api` binary as a child process, and small HTTP helpers.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

pub use gito_api::testing::{ADMIN_TOKEN, TestApi, TestDb, admin_client};

/// The API served in-process on a random port against a fresh, migrated database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db_url: String,
    pub pool: PgPool,
    /// Sends the admin token with every request.
    pub client: reqwest::Client,
    /// Sends no token unless told to (`send_as`).
    pub anonymous: reqwest::Client,
    _api: TestApi,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        let db = TestDb::new().await;
        let api = TestApi::start(&db.url, "127.0.0.1:0".parse().expect("address")).await;
        let pool = PgPool::connect(&db.url).await.expect("test pool");
        TestApp {
            addr: api.addr,
            db_url: db.url.clone(),
            pool,
            client: admin_client(),
            anonymous: reqwest::Client::new(),
            _api: api,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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
        let response = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .expect("request sent");
        response.status()
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

    /// Creates a token for `tenant` (as the admin) and returns its secret.
    pub async fn token_for(&self, tenant: Uuid) -> String {
        gito_api::testing::create_tenant_token(&self.url(""), tenant).await
    }

    /// GET with `token` as the bearer token.
    pub async fn get_as(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.send_as(Some(token), reqwest::Method::GET, path, None)
            .await
    }

    /// Creates a tenant and returns its id.
    pub async fn tenant(&self, name: &str) -> Uuid {
        let (status, body) = self
            .post("/tenants", serde_json::json!({ "name": name }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        id_of(&body)
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

/// The real `gito-api` binary as a child process, its stderr (JSON logs) collected.
pub struct ApiProcess {
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
}

pub fn gito_api(db_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gito-api"));
    command
        .args(args)
        .env_clear()
        .env("DATABASE_URL", db_url)
        .env("GITO_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("GITO_API_ADDR", "127.0.0.1:0")
        .env("GITO_LOG_FORMAT", "json")
        .env("GITO_DB_MAX_CONNECTIONS", "2")
        // About the API and migrations: no broker needed.
        .env("GITO_PROCESSOR", "off")
        .env("GITO_LIVE", "off")
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    command
}

impl ApiProcess {
    pub fn start(mut command: Command) -> ApiProcess {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gito-api starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("log lock").push(line);
            }
        });
        ApiProcess { child, logs }
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the process logs its address and answers `/ready` with 200.
    pub async fn wait_ready(&mut self, deadline: Duration) -> SocketAddr {
        let client = reqwest::Client::new();
        let result = tokio::time::timeout(deadline, async {
            loop {
                if let Some(status) = self.child.try_wait().expect("poll child") {
                    panic!("gito-api exited with {status}: {:#?}", self.log_lines());
                }
                if let Some(addr) = self.listening_addr() {
                    let ready = client.get(format!("http://{addr}/ready")).send().await;
                    if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                        return addr;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        result.unwrap_or_else(|_| panic!("not ready in {deadline:?}: {:#?}", self.log_lines()))
    }

    pub fn listening_addr(&self) -> Option<SocketAddr> {
        self.log_lines().iter().find_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            (v["message"] == "gito-api listening").then(|| v["addr"].as_str()?.parse().ok())?
        })
    }
}

/// Runs `gito-api` to completion and returns (success, stdout, stderr).
pub async fn run_gito_api(db_url: &str, args: &[&str]) -> (bool, String, String) {
    let output = gito_api(db_url, args)
        .output()
        .await
        .expect("gito-api runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
