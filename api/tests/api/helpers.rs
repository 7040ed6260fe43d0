//! Test fixtures: a fresh database per test, the real server on port 0 (in-process) or the real
//! `gito-api` binary as a child process, and small HTTP helpers.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use gito_testkit::{ADMIN_TOKEN, TestApi, TestApp, TestDb, error_code, id_of};

/// The real `gito-api` binary as a child process, its stderr (JSON logs) collected.
pub struct ApiProcess {
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The task reading stderr: done once the process is gone and every line was read.
    reader: Option<tokio::task::JoinHandle<()>>,
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
        // A process killed while its background drift check runs leaves the scratch database to
        // the next check; tests/api/drift.rs turns the check on where it is the subject.
        .env("GITO_MIGRATION_DRIFT", "off")
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
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("log lock").push(line);
            }
        });
        ApiProcess {
            child,
            logs,
            reader: Some(reader),
        }
    }

    /// Waits (up to `deadline`) for the process to exit and for its last log line to be read.
    pub async fn exited(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let status = tokio::time::timeout(deadline, self.child.wait())
            .await
            .expect("the process exits in time")
            .expect("wait");
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(deadline, reader)
                .await
                .expect("stderr read to its end")
                .expect("the log reader");
        }
        status
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

/// The newest migration this binary embeds, e.g. `011_classification_rules`: tests about the
/// runner count from the catalog, so a new migration does not break them.
pub fn head_migration() -> &'static str {
    &gito_api::migrate::Catalog::embedded()
        .head()
        .expect("at least one migration")
        .name
}

/// How many migrations this binary embeds.
pub fn migration_count() -> usize {
    gito_api::migrate::Catalog::embedded().iter().count()
}
