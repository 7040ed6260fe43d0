//! The real `gito-api` binary: migrating on boot, replicas starting together, refusing to start,
//! and the operators' `migrate` commands with their output and exit codes.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;

use crate::helpers::{ApiProcess, TestDb, gito_api, head_migration, migration_count, run_gito_api};

const BOOT_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn serve_logs_one_upgrade_per_migration_on_an_empty_database_and_none_on_the_next_start() {
    let db = TestDb::empty().await;
    let mut first = ApiProcess::start(gito_api(&db.url, &["serve"]));
    first.wait_ready(BOOT_DEADLINE).await;
    assert_eq!(
        first.count("Running upgrade"),
        migration_count(),
        "{:#?}",
        first.log_lines()
    );
    assert_eq!(
        first.count("Running upgrade 004_devices_and_telemetry -> 005_nullable_device_hierarchy"),
        1
    );
    first.child.kill().await.expect("kill");

    // No subcommand means serve.
    let mut second = ApiProcess::start(gito_api(&db.url, &[]));
    second.wait_ready(BOOT_DEADLINE).await;
    assert_eq!(
        second.count("Running upgrade"),
        0,
        "{:#?}",
        second.log_lines()
    );
    second.child.kill().await.expect("kill");

    let (ok, stdout, _) = run_gito_api(&db.url, &["migrate", "current"]).await;
    assert!(ok);
    assert_eq!(stdout.trim(), format!("{} (head)", head_migration()));
}

#[tokio::test]
async fn eight_replicas_started_together_all_become_ready_and_each_migration_runs_once() {
    let db = TestDb::empty().await;
    let mut replicas: Vec<ApiProcess> = (0..8)
        .map(|_| ApiProcess::start(gito_api(&db.url, &["serve"])))
        .collect();
    join_all(
        replicas
            .iter_mut()
            .map(|r| r.wait_ready(Duration::from_secs(60))),
    )
    .await;
    let upgrades: usize = replicas.iter().map(|r| r.count("Running upgrade")).sum();
    assert_eq!(
        upgrades,
        migration_count(),
        "each migration logged by exactly one replica"
    );
    let mut conn = db.connect().await;
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM gito_schema_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .expect("versions");
    let all: Vec<(i64,)> = (1..=migration_count() as i64).map(|v| (v,)).collect();
    assert_eq!(rows, all);
    // The migration lock's key only: the connectivity sweepers and the background drift check
    // (GITO_MIGRATION_DRIFT=warn) take advisory locks of their own.
    let advisory: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND d.datname = current_database()
           AND l.objsubid = 1 AND ((l.classid::int8 << 32) | l.objid::int8) = $1",
    )
    .bind(gito_api::migrate::LOCK_KEY)
    .fetch_one(&mut conn)
    .await
    .expect("locks");
    assert_eq!(
        advisory, 0,
        "no replica holds the migration lock after boot"
    );
}

#[tokio::test]
async fn boot_refuses_a_modified_migration_with_one_line_naming_version_and_file() {
    let db = TestDb::empty().await;
    assert!(run_gito_api(&db.url, &["migrate", "up"]).await.0);
    let mut conn = db.connect().await;
    sqlx::query("UPDATE gito_schema_migrations SET checksum = sha384('edited') WHERE version = 2")
        .execute(&mut conn)
        .await
        .expect("tamper");
    let (ok, _, stderr) = run_gito_api(&db.url, &["serve"]).await;
    assert!(!ok, "must not start");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("gito-api: migrating on boot: migration 002_device_hierarchy (migrations/002_device_hierarchy.up.sql) was modified"), "{stderr}");
}

#[tokio::test]
async fn boot_refuses_a_database_newer_than_the_code() {
    let db = TestDb::empty().await;
    assert!(run_gito_api(&db.url, &["migrate", "up"]).await.0);
    let mut conn = db.connect().await;
    sqlx::query("INSERT INTO gito_schema_migrations (version, name, checksum, execution_ms) VALUES (99, '099_newer', '\\x00', 1)")
        .execute(&mut conn)
        .await
        .expect("insert");
    let (ok, _, stderr) = run_gito_api(&db.url, &["serve"]).await;
    assert!(!ok, "must not start");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("099_newer") && last.contains("database newer than code"),
        "{stderr}"
    );
    let (ok, stdout, _) = run_gito_api(&db.url, &["migrate", "current"]).await;
    assert!(ok);
    assert!(
        stdout.starts_with("099_newer (unknown to this gito-api"),
        "{stdout}"
    );
}

#[tokio::test]
async fn migrate_on_boot_false_skips_migrations_and_ready_says_503() {
    let db = TestDb::empty().await;
    let mut command = gito_api(&db.url, &["serve"]);
    command.env("GITO_MIGRATE_ON_BOOT", "false");
    let process = ApiProcess::start(command);
    let addr = tokio::time::timeout(BOOT_DEADLINE, async {
        loop {
            if let Some(addr) = process.listening_addr() {
                return addr;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("listening");
    let client = reqwest::Client::new();
    let health = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    let ready = client
        .get(format!("http://{addr}/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(process.count("Running upgrade"), 0);
}

#[tokio::test]
async fn migrate_commands_print_what_operators_expect() {
    let db = TestDb::empty().await;
    let run = |args: &'static [&'static str]| run_gito_api(&db.url, args);

    let (ok, stdout, _) = run(&["migrate", "current"]).await;
    assert!(ok);
    assert_eq!(
        stdout.trim(),
        format!("base ({} pending)", migration_count())
    );

    let (ok, stdout, stderr) = run(&["migrate", "up", "--to", "003"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "applied 3 migration(s); now at 003_device_types ({} pending)",
            migration_count() - 3
        )
    );
    assert_eq!(stderr.matches("Running upgrade").count(), 3, "{stderr}");

    let (ok, stdout, _) = run(&["migrate", "history"]).await;
    assert!(ok);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), migration_count(), "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{} (head)", head_migration()))
            && lines[0].ends_with("pending"),
        "{stdout}"
    );
    assert!(
        lines[migration_count() - 3].starts_with("003_device_types")
            && lines[migration_count() - 3].contains("applied 20"),
        "{stdout}"
    );

    let (ok, stdout, _) = run(&["migrate", "down"]).await;
    assert!(ok);
    assert_eq!(
        stdout.trim(),
        format!(
            "reverted 1 migration(s); now at 002_device_hierarchy ({} pending)",
            migration_count() - 2
        )
    );

    let head: &'static [&'static str] = Box::leak(Box::new(["migrate", "stamp", head_migration()]));
    let (ok, stdout, stderr) = run(head).await;
    assert!(ok);
    assert_eq!(stdout.trim(), format!("stamped {}", head_migration()));
    assert!(
        stderr.contains("without running any SQL"),
        "stamp warns: {stderr}"
    );
    let (_, stdout, _) = run(&["migrate", "history"]).await;
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.ends_with("(stamped)")),
        "{stdout}"
    );

    for args in [
        &["migrate", "stamp", "999"][..],
        &["migrate", "up", "--to", "nope"],
        &["migrate", "down", "--to", "042"],
    ] {
        let (ok, stdout, stderr) = run_gito_api(&db.url, args).await;
        assert!(!ok, "{args:?} must fail");
        assert!(stdout.is_empty());
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("unknown migration version"), "{stderr}");
    }
}
