//! `gito-api migrate check` and drift at boot: hand edits to a migrated database are each
//! reported with the SQL that undoes them; a clean database checks clean.

use std::time::Duration;

use gito_api::migrate::check::{Report, check};
use gito_api::migrate::{Catalog, RunOptions};

use crate::helpers::{ApiProcess, TestDb, gito_api};
use gito_testkit::wait_for;

async fn drifted(sql: &str) -> (TestDb, Report) {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .expect("hand edit");
    let report = check(&db.url, Catalog::embedded(), &RunOptions::default())
        .await
        .expect("check runs");
    (db, report)
}

#[tokio::test]
async fn a_hand_added_column_is_reported_with_the_sql_that_drops_it() {
    let (_db, report) = drifted("ALTER TABLE devices ADD COLUMN foo text").await;
    assert_eq!(
        report.lines,
        [
            "column devices.foo: in database, not in migrations → ALTER TABLE devices DROP COLUMN foo;"
        ]
    );
    assert_eq!(report.keep, ["ALTER TABLE devices ADD COLUMN foo text;"]);
}

#[tokio::test]
async fn a_dropped_index_is_reported_with_the_sql_that_recreates_it() {
    let (_db, report) = drifted("DROP INDEX telemetry_device_id_ts_idx").await;
    assert_eq!(
        report.lines,
        [
            "index telemetry_device_id_ts_idx on telemetry: in migrations, not in database → \
          CREATE INDEX telemetry_device_id_ts_idx ON public.telemetry USING btree (device_id, ts DESC);"
        ]
    );
}

#[tokio::test]
async fn a_changed_default_is_reported_with_the_sql_that_restores_it() {
    let (_db, report) =
        drifted("ALTER TABLE devices ALTER COLUMN status SET DEFAULT 'inactive'").await;
    assert_eq!(
        report.lines,
        [
            "column devices.status: default 'inactive'::text, should be 'active'::text → \
          ALTER TABLE devices ALTER COLUMN status SET DEFAULT 'active'::text;"
        ]
    );
}

#[tokio::test]
async fn an_extra_trigger_is_reported_with_the_sql_that_drops_it() {
    let (_db, report) = drifted(
        "CREATE TRIGGER audit BEFORE UPDATE ON tenants FOR EACH ROW EXECUTE FUNCTION devices_notify()",
    )
    .await;
    assert_eq!(
        report.lines,
        [
            "trigger audit on tenants: in database, not in migrations → DROP TRIGGER audit ON tenants;"
        ]
    );
}

#[tokio::test]
async fn a_relaxed_not_null_and_a_changed_type_and_function_are_reported() {
    let (_db, report) = drifted(
        "ALTER TABLE tenants ALTER COLUMN name DROP NOT NULL;
         ALTER TABLE telemetry ALTER COLUMN metric TYPE varchar(300);
         CREATE OR REPLACE FUNCTION devices_notify() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;",
    )
    .await;
    let text = report.lines.join("\n");
    assert!(text.contains("column tenants.name: nullable, should be NOT NULL → ALTER TABLE tenants ALTER COLUMN name SET NOT NULL;"), "{text}");
    assert!(text.contains("column telemetry.metric: type character varying(300) here, text wanted → ALTER TABLE telemetry ALTER COLUMN metric TYPE text;"), "{text}");
    assert!(text.contains("function devices_notify(): body differs → CREATE OR REPLACE FUNCTION public.devices_notify()"), "{text}");
    assert_eq!(report.lines.len(), 3, "{text}");
}

#[tokio::test]
async fn check_exits_0_in_sync_1_on_drift_and_2_when_it_cannot_check() {
    let db = TestDb::migrated().await;
    let out = gito_api(&db.url, &["migrate", "check"])
        .output()
        .await
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout.trim(),
        "in sync: the database matches what migrations up to 009_device_notify produce".replace(
            "009_device_notify",
            &Catalog::embedded().head().expect("head").name
        )
    );

    let mut conn = db.connect().await;
    sqlx::raw_sql("ALTER TABLE devices ADD COLUMN foo text")
        .execute(&mut conn)
        .await
        .expect("hand edit");
    let out = gito_api(&db.url, &["migrate", "check"])
        .output()
        .await
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("drift: 1 difference(s)"), "{stdout}");
    assert!(stdout.contains("\ncolumn devices.foo: in database, not in migrations → ALTER TABLE devices DROP COLUMN foo;\n"), "{stdout}");

    let gone = format!("{}_gone", db.url);
    let out = gito_api(&gone, &["migrate", "check"])
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("gito-api: could not check: "), "{stderr}");
    let scratch: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'gito\\_check\\_' || current_database() || '\\_%'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count");
    assert_eq!(
        scratch, 0,
        "the scratch databases of both checks were dropped"
    );
}

#[tokio::test]
async fn boot_warns_about_drift_by_default_and_refuses_with_gito_migration_drift_refuse() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    sqlx::raw_sql("ALTER TABLE devices ADD COLUMN foo text")
        .execute(&mut conn)
        .await
        .expect("hand edit");

    let mut api = ApiProcess::start({
        let mut command = gito_api(&db.url, &["serve"]);
        command.env_remove("GITO_MIGRATION_DRIFT"); // the default: warn
        command
    });
    api.wait_ready(Duration::from_secs(30)).await;
    // Checked in the background: readiness does not wait for the replay.
    let warned = |api: &ApiProcess| {
        api.log_lines().iter().any(|l| {
            l.contains("\"level\":\"WARN\"")
                && l.contains("schema drift")
                && l.contains("column devices.foo: in database, not in migrations → ALTER TABLE devices DROP COLUMN foo;")
        })
    };
    wait_for(Duration::from_secs(30), "the drift warning", || async {
        warned(&api)
    })
    .await;
    assert_eq!(
        api.count("Running upgrade"),
        0,
        "the scratch replay logs no upgrades"
    );
    api.child.kill().await.expect("kill");

    let out = gito_api(&db.url, &["serve"])
        .env("GITO_MIGRATION_DRIFT", "refuse")
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("gito-api: schema drift: 1 difference(s) from what the migrations produce, first: column devices.foo: in database, not in migrations → ALTER TABLE devices DROP COLUMN foo;"),
        "{stderr}"
    );
    assert!(last.ends_with("(GITO_MIGRATION_DRIFT=refuse)"), "{stderr}");
}

/// Production users often lack CREATEDB: the check cannot make its scratch database. Boot logs
/// that and starts, even under `refuse` (it refuses drift it saw, not a check it could not run);
/// `migrate check` exits 2 saying why.
#[tokio::test]
async fn without_createdb_boot_warns_that_it_could_not_check_and_starts_and_check_exits_2() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (role, name) = (format!("gito_nocreatedb_{id}"), format!("gito_test_{id}"));
    let admin = TestDb::migrated().await; // any database of the server, to run DDL from
    let mut conn = admin.connect().await;
    for sql in [
        format!("CREATE ROLE {role} LOGIN NOCREATEDB"),
        format!("CREATE DATABASE {name} OWNER {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("role and database");
    }
    // The same server as the role without CREATEDB, whatever user and password the test server's
    // URL names (CI's has a password).
    let mut url = url::Url::parse(&admin.url).expect("url");
    url.set_username(&role).expect("user");
    url.set_password(None).expect("password");
    url.set_path(&name);
    let url = url.to_string();

    let mut api = ApiProcess::start({
        let mut c = gito_api(&url, &["serve"]);
        c.env("GITO_MIGRATION_DRIFT", "refuse");
        c
    });
    api.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(
        api.count("could not check the schema for drift"),
        1,
        "{:#?}",
        api.log_lines()
    );
    api.child.kill().await.expect("kill");
    api.exited(Duration::from_secs(10)).await;

    let out = gito_api(&url, &["migrate", "check"])
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("gito-api: could not check: cannot create the scratch database"),
        "{stderr}"
    );
    assert!(stderr.contains("CREATEDB"), "{stderr}");

    for sql in [
        format!("DROP DATABASE {name} WITH (FORCE)"),
        format!("DROP ROLE {role}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("clean up");
    }
}

#[tokio::test]
async fn a_check_drops_the_scratch_database_a_killed_check_left_behind() {
    let db = TestDb::migrated().await;
    // pid 999999999 never runs (PostgreSQL pids stay below 2^22): its check was killed.
    let abandoned = format!("gito_check_{}_999999999", db.name);
    let mut conn = db.connect().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {abandoned}")))
        .execute(&mut conn)
        .await
        .expect("an abandoned scratch database");
    let report = check(&db.url, Catalog::embedded(), &RunOptions::default())
        .await
        .expect("check runs");
    assert!(report.in_sync());
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&abandoned)
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(left, 0, "{abandoned} was dropped");
}
