//! The command line as an operator meets it: each failure said once, in plain words, with what to
//! do; exit 3 only for what waiting can cure (entrypoint.sh retries on it, and on nothing else);
//! `migrate new` without a database; an example in every subcommand's `--help`.

use std::time::{Duration, Instant};

use gito_testkit::{TestDb, free_port, server_url};
use tokio::process::Command;

use crate::helpers::{gito_api, run_gito_api};

/// A database URL on the test server naming a database that does not exist.
fn missing_database() -> (String, String) {
    let name = format!("gito_missing_{}", uuid::Uuid::new_v4().simple());
    let (base, _) = server_url()
        .rsplit_once('/')
        .map(|(b, d)| (b.to_owned(), d.to_owned()))
        .expect("a path");
    (format!("{base}/{name}"), name)
}

async fn output(mut command: Command) -> (Option<i32>, String, String) {
    let out = command.output().await.expect("gito-api runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_missing_database_is_said_once_with_what_to_do() {
    let (url, name) = missing_database();
    let (code, _, stderr) = output(gito_api(&url, &["migrate", "current"])).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "gito-api: database \"{name}\" does not exist — create it (`createdb NAME`), or set DATABASE_URL\n"
        )
    );
    let (code, _, stderr) = output(gito_api(&url, &["serve"])).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr.lines().last(),
        Some(
            format!(
                "gito-api: migrating on boot: database \"{name}\" does not exist — create it (`createdb NAME`), or set DATABASE_URL"
            )
            .as_str()
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unknown_role_points_at_the_credentials() {
    let mut url = reqwest::Url::parse(&server_url()).expect("the test server URL");
    url.set_username("gito_nobody").expect("a user");
    url.set_password(Some("wrong")).expect("a password");
    let (code, _, stderr) = output(gito_api(url.as_str(), &["migrate", "current"])).await;
    assert_eq!(code, Some(1));
    // A server that trusts local connections names the role; one that asks for passwords does not
    // say whether the role exists. Either way the hint is the same.
    let said = [
        r#"role "gito_nobody" does not exist"#,
        r#"password authentication failed for user "gito_nobody""#,
    ]
    .map(|cause| format!("gito-api: {cause} — check the user and password in DATABASE_URL\n"));
    assert!(said.contains(&stderr), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_server_exits_3_with_the_reason() {
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let (code, _, stderr) = output(gito_api(&url, &["migrate", "current"])).await;
    assert_eq!(code, Some(3));
    assert_eq!(
        stderr,
        "gito-api: cannot reach PostgreSQL: Connection refused (os error 111) — is it running, and are the host and port in DATABASE_URL right?\n"
    );
}

#[tokio::test]
async fn migrate_new_needs_no_database_and_the_others_say_how_to_give_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = gito_api("", &["migrate", "new", "scratch", "--dir"]);
    command.arg(dir.path()).env_remove("DATABASE_URL");
    let (code, stdout, stderr) = output(command).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("created "), "{stdout}");
    assert!(dir.path().join("001_scratch.up.sql").exists());

    let mut command = gito_api("", &["migrate", "current"]);
    command.env_remove("DATABASE_URL");
    let (code, _, stderr) = output(command).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "gito-api: no database given: set DATABASE_URL or pass --database-url, e.g. postgres://gito:secret@localhost:5432/gito\n"
    );
    // The flag also works after the subcommand, where operators put it.
    let db = TestDb::migrated().await;
    let mut command = gito_api("", &["migrate", "current", "--database-url", &db.url]);
    command.env_remove("DATABASE_URL");
    let (code, stdout, stderr) = output(command).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.trim().ends_with("(head)"), "{stdout}");
}

#[tokio::test]
async fn every_subcommand_help_shows_an_example() {
    for args in [
        &["serve", "--help"][..],
        &["processor", "--help"],
        &["tenant", "ensure", "--help"],
        &["token", "generate", "--help"],
        &["token", "ensure", "--help"],
        &["migrate", "current", "--help"],
        &["migrate", "history", "--help"],
        &["migrate", "up", "--help"],
        &["migrate", "down", "--help"],
        &["migrate", "stamp", "--help"],
        &["migrate", "new", "--help"],
    ] {
        let (ok, stdout, _) = run_gito_api("", args).await;
        assert!(ok, "{args:?}");
        assert!(stdout.contains("\nExample:\n  "), "{args:?}: {stdout}");
    }
}

fn entrypoint(db_url: &str) -> Command {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_gito-api"))
        .parent()
        .expect("target dir")
        .to_owned();
    let mut command = Command::new("sh");
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../entrypoint.sh"))
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("DATABASE_URL", db_url)
        .env("GITO_DB_WAIT_ATTEMPTS", "3")
        .env("GITO_DB_WAIT_INTERVAL", "0.2")
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn entrypoint_stops_at_once_on_a_missing_database_and_retries_only_an_unreachable_one() {
    let (url, name) = missing_database();
    let started = Instant::now();
    let (code, _, stderr) = output(entrypoint(&url)).await;
    assert_eq!(code, Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        stderr,
        format!(
            "entrypoint: cannot use the database: gito-api: database \"{name}\" does not exist — create it (`createdb NAME`), or set DATABASE_URL\n"
        )
    );

    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let (code, _, stderr) = output(entrypoint(&url)).await;
    assert_eq!(code, Some(1));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with(
            "entrypoint: waiting for PostgreSQL (1/3): gito-api: cannot reach PostgreSQL"
        ),
        "{stderr}"
    );
    assert!(lines[2].starts_with("entrypoint: PostgreSQL not reachable after 3 attempts: gito-api: cannot reach PostgreSQL"), "{stderr}");
}
