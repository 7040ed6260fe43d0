//! Supervision, seen from outside: a task that dies takes the process with it (non-zero exit, a
//! line naming the task), so an orchestrator restarts it instead of trusting a `/ready` that
//! answers 200 while nothing is stored; a SIGTERM still drains and exits 0.

use std::time::Duration;

use gito_testkit::{Broker, TestDb};

use crate::helpers::{ApiProcess, gito_api};

const DEADLINE: Duration = Duration::from_secs(30);

fn processing(db_url: &str, broker_url: &str) -> tokio::process::Command {
    let mut command = gito_api(db_url, &["serve"]);
    command
        .env("GITO_PROCESSOR", "on")
        .env("GITO_LIVE", "on")
        .env("GITO_MQTT_URL", broker_url);
    command
}

#[tokio::test]
async fn a_processor_the_broker_refuses_ends_the_process_with_a_line_naming_it() {
    let db = TestDb::migrated().await;
    // A broker that admits nobody anonymous: the processor's credentials (none) are refused,
    // which no retry can fix, as with a wrong password in GITO_MQTT_URL.
    let broker = Broker::start_with("allow_anonymous false\n").await;
    let mut api = ApiProcess::start(processing(&db.url, &broker.url()));
    let status = tokio::time::timeout(DEADLINE, api.child.wait())
        .await
        .expect("the process exits by itself")
        .expect("wait");
    assert!(!status.success(), "exit status {status}");
    assert_eq!(status.code(), Some(1), "exit status {status}");
    // stderr is read by a task of its own: wait until it has the last line.
    gito_testkit::wait_for(Duration::from_secs(5), "the exit line", || async {
        api.count("gito-api: ") > 0
    })
    .await;
    let logs = api.log_lines();
    let named = logs.iter().any(|line| {
        line.contains("a task ended unexpectedly")
            && line.contains(r#""task":"processor""#)
            && line.contains("refused the processor's credentials")
    });
    assert!(named, "no ERROR line naming the processor: {logs:#?}");
    let last = logs.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.starts_with("gito-api: the processor task failed: the broker refused"),
        "last line: {last}"
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_with_every_task_running() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let mut api = ApiProcess::start(processing(&db.url, &broker.url()));
    api.wait_ready(DEADLINE).await;
    let connected = || api.count("processor connected to the broker") > 0;
    gito_testkit::wait_for(DEADLINE, "the processor connected", || async {
        connected()
    })
    .await;
    let pid = api.child.id().expect("running").to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(sent.success());
    let status = api.exited(DEADLINE).await;
    assert!(
        status.success(),
        "exit status {status}: {:#?}",
        api.log_lines()
    );
    assert_eq!(api.count("processor stopped"), 1, "{:#?}", api.log_lines());
    assert_eq!(api.count("a task"), 0, "{:#?}", api.log_lines());
}
