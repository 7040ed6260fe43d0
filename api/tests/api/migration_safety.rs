//! Bounded waits, conflicts between branches, no-transaction migrations and their repair,
//! against real PostgreSQL.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use gito_api::migrate::repair::{Action, repair};
use gito_api::migrate::{self, Catalog, MigrateError, RunOptions};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

use crate::helpers::{TestDb, gito_api};

fn write(dir: &Path, file: &str, sql: &str) {
    std::fs::write(dir.join(file), sql).expect("write migration");
}

fn shipped() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations")
}

fn copy_shipped(to: &Path) {
    for entry in std::fs::read_dir(shipped()).expect("migrations/") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A session that holds `lock` on `table` in an open transaction, named `holder`.
async fn hold_lock(db: &TestDb, table: &str, holder: &str) -> (PgConnection, i32) {
    let mut conn = PgConnectOptions::from_str(&db.url)
        .expect("url")
        .application_name(holder)
        .connect()
        .await
        .expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; LOCK TABLE {table} IN ACCESS SHARE MODE"
    )))
    .execute(&mut conn)
    .await
    .expect("lock");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pid");
    (conn, pid)
}

#[tokio::test]
async fn two_008_migrations_stop_boot_with_one_line_naming_both_files_and_renumber_fixes_it() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    copy_shipped(dir.path());
    write(
        dir.path(),
        "008_alert_snoozes.up.sql",
        "CREATE TABLE alert_snoozes (id uuid);",
    );
    write(
        dir.path(),
        "008_alert_snoozes.down.sql",
        "DROP TABLE alert_snoozes;",
    );
    let out = gito_api(&db.url, &["serve"])
        .env("GITO_MIGRATIONS_RUNTIME_DIR", dir.path())
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().last().unwrap_or_default(),
        "gito-api: migrating on boot: two migrations share version 008: \
         migrations/008_alert_snoozes.up.sql and migrations/008_dead_letters.up.sql (two branches merged): \
         renumber whichever no database has applied yet, `gito-api migrate renumber 008_alert_snoozes` \
         or `gito-api migrate renumber 008_dead_letters` (it becomes the next free number)",
        "{stderr}"
    );

    let out = gito_api("", &["migrate", "renumber", "008_alert_snoozes", "--dir"])
        .arg(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .await
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = Catalog::embedded().head().expect("head").version;
    let renamed = format!("{:03}_alert_snoozes", head + 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{renamed}.up.sql")), "{stdout}");
    let catalog = Catalog::from_dir(dir.path()).await.expect("loads again");
    assert_eq!(
        catalog.head().map(|m| m.name.as_str()),
        Some(renamed.as_str())
    );
    assert!(dir.path().join(format!("{renamed}.down.sql")).exists());
}

#[tokio::test]
async fn a_gap_is_refused_naming_the_files_on_both_sides() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "001_a.up.sql", "SELECT 1;");
    write(dir.path(), "003_c.up.sql", "SELECT 1;");
    let error = Catalog::from_dir(dir.path()).await.expect_err("gap");
    assert_eq!(
        error.to_string(),
        "migrations skip version 002: migrations/001_a.up.sql is followed by migrations/003_c.up.sql: \
         renumber it with `gito-api migrate renumber 003_c 002`, or restore the missing migration"
    );
}

#[tokio::test]
async fn a_migration_blocked_by_a_held_lock_fails_after_its_lock_timeout_naming_the_blocker() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "001_t.up.sql", "CREATE TABLE t (id int);");
    write(
        dir.path(),
        "002_add_x.up.sql",
        "-- gito: lock_timeout=300ms\nALTER TABLE t ADD COLUMN x int;",
    );
    let catalog = Catalog::from_dir(dir.path()).await.expect("catalog");
    migrate::up(&db.url, &catalog, Some(1)).await.expect("001");
    let (holder, pid) = hold_lock(&db, "t", "report-job").await;

    let error = migrate::up(&db.url, &catalog, None)
        .await
        .expect_err("blocked");
    let message = error.to_string();
    assert!(matches!(error, MigrateError::Failed { .. }), "{message}");
    assert!(
        message.starts_with(
            "migration 002_add_x (migrations/002_add_x.up.sql) failed: canceling statement due to lock timeout: \
             waited lock_timeout 300ms for a lock held by pid "
        ),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "pid {pid} (application_name \"report-job\", user postgres, client 127.0.0.1, since "
        )),
        "{message}"
    );
    assert!(
        message.contains("state \"idle in transaction\""),
        "{message}"
    );
    drop(holder);
    let status = migrate::status(&db.url, &catalog).await.expect("status");
    assert_eq!(status.pending.len(), 1, "002 is not recorded");
}

#[tokio::test]
async fn gito_migration_lock_timeout_bounds_every_migration_of_the_binary() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "001_t.up.sql", "CREATE TABLE t (id int);");
    write(
        dir.path(),
        "002_add_x.up.sql",
        "ALTER TABLE t ADD COLUMN x int;",
    );
    let catalog = Catalog::from_dir(dir.path()).await.expect("catalog");
    migrate::up(&db.url, &catalog, Some(1)).await.expect("001");
    let (_holder, pid) = hold_lock(&db, "t", "stuck-psql").await;
    let out = gito_api(&db.url, &["migrate", "up"])
        .env("GITO_MIGRATIONS_RUNTIME_DIR", dir.path())
        .env("GITO_MIGRATION_LOCK_TIMEOUT", "200ms")
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("waited lock_timeout 200ms for a lock held by pid "),
        "{stderr}"
    );
    assert!(
        last.contains(&format!("pid {pid} (application_name \"stuck-psql\"")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_statement_past_its_statement_timeout_fails_saying_so() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "001_slow.up.sql",
        "-- gito: statement_timeout=100ms\nSELECT pg_sleep(30);",
    );
    let catalog = Catalog::from_dir(dir.path()).await.expect("catalog");
    let error = migrate::up(&db.url, &catalog, None)
        .await
        .expect_err("timeout");
    assert!(
        error.to_string().contains(
            "failed: canceling statement due to statement timeout: ran longer than statement_timeout 100ms"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_no_transaction_migration_runs_create_index_concurrently_and_is_recorded_as_such() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "001_t.up.sql", "CREATE TABLE t (id int);");
    write(
        dir.path(),
        "002_t_idx.up.sql",
        "-- gito: no-transaction\nCREATE INDEX CONCURRENTLY t_id_idx ON t (id);\nCREATE INDEX CONCURRENTLY t_id2_idx ON t (id);",
    );
    write(
        dir.path(),
        "002_t_idx.down.sql",
        "-- gito: no-transaction\nDROP INDEX CONCURRENTLY t_id_idx;\nDROP INDEX CONCURRENTLY t_id2_idx;",
    );
    let catalog = Catalog::from_dir(dir.path()).await.expect("catalog");
    assert!(catalog.get(2).expect("002").no_transaction());
    migrate::up(&db.url, &catalog, None).await.expect("up");
    let mut conn = db.connect().await;
    let rows: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT version, no_transaction FROM gito_schema_migrations ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .expect("rows");
    assert_eq!(rows, [(1, false), (2, true)]);
    let valid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
         WHERE i.relname IN ('t_id_idx', 't_id2_idx') AND x.indisvalid",
    )
    .fetch_one(&mut conn)
    .await
    .expect("indexes");
    assert_eq!(valid, 2);

    migrate::down(&db.url, &catalog, migrate::DownTarget::Steps(1))
        .await
        .expect("a no-transaction down runs DROP INDEX CONCURRENTLY");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname IN ('t_id_idx', 't_id2_idx')",
    )
    .fetch_one(&mut conn)
    .await
    .expect("indexes");
    assert_eq!(left, 0);
    let current = migrate::status(&db.url, &catalog).await.expect("status");
    assert_eq!(current.current().map(|a| a.version), Some(1));
}

/// 002's unique index cannot be built while `t.v` holds duplicates: PostgreSQL leaves it INVALID,
/// after the first index was built.
async fn half_applied() -> (TestDb, tempfile::TempDir, Catalog) {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "001_t.up.sql",
        "CREATE TABLE t (id int, v int); INSERT INTO t VALUES (1, 7), (2, 7);",
    );
    write(
        dir.path(),
        "002_t_idx.up.sql",
        "-- gito: no-transaction\n\
         CREATE INDEX CONCURRENTLY t_id_idx ON t (id);\n\
         CREATE UNIQUE INDEX CONCURRENTLY t_v_key ON t (v);\n\
         CREATE INDEX CONCURRENTLY t_v_id_idx ON t (v, id);",
    );
    let catalog = Catalog::from_dir(dir.path()).await.expect("catalog");
    let error = migrate::up(&db.url, &catalog, None)
        .await
        .expect_err("002 fails");
    let message = error.to_string();
    assert!(message.contains("migration 002_t_idx (migrations/002_t_idx.up.sql) failed: could not create unique index \"t_v_key\""), "{message}");
    assert!(message.contains("(statement 2 of 3, line 3; the 1 before it stay applied: see `gito-api migrate repair`)"), "{message}");
    (db, dir, catalog)
}

#[tokio::test]
async fn a_partly_applied_migration_is_refused_until_repair_shows_it_and_rolls_it_forward() {
    let (db, _dir, catalog) = half_applied().await;
    let error = migrate::up(&db.url, &catalog, None)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            MigrateError::Partial {
                done: 1,
                total: 3,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("run `gito-api migrate repair`"),
        "{error}"
    );

    let options = RunOptions::default();
    let shown = repair(&db.url, &catalog, Action::Show, &options)
        .await
        .expect("show");
    for expected in [
        "migration 002_t_idx (migrations/002_t_idx.up.sql) is partly applied: 1 of 3 statement(s) ran, then statement 2 failed: ",
        "  statement 1 (line 2) ran: CREATE INDEX CONCURRENTLY t_id_idx ON t (id)\n      index t_id_idx exists and is valid",
        "  statement 2 (line 3) failed: CREATE UNIQUE INDEX CONCURRENTLY t_v_key ON t (v)\n      index t_v_key exists but is INVALID",
        "  statement 3 (line 4) not run: CREATE INDEX CONCURRENTLY t_v_id_idx ON t (v, id)\n      index t_v_id_idx does not exist",
        "gito-api migrate repair --roll-forward   run statement(s) 2..3 now",
    ] {
        assert!(shown.contains(expected), "{expected:?} in:\n{shown}");
    }

    // The operator fixes the data; rolling forward drops the INVALID index and builds the rest.
    let mut conn = db.connect().await;
    sqlx::raw_sql("UPDATE t SET v = 8 WHERE id = 2")
        .execute(&mut conn)
        .await
        .expect("fix data");
    let done = repair(&db.url, &catalog, Action::RollForward, &options)
        .await
        .expect("roll forward");
    assert!(done.contains("dropped INVALID index t_v_key"), "{done}");
    assert!(
        done.ends_with("rolled forward: 002_t_idx applied"),
        "{done}"
    );
    let valid: Vec<(String, bool)> = sqlx::query_as(
        "SELECT i.relname::text, x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
         WHERE i.relname LIKE 't\\_%' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("indexes");
    assert_eq!(
        valid,
        [
            ("t_id_idx".to_owned(), true),
            ("t_v_id_idx".to_owned(), true),
            ("t_v_key".to_owned(), true)
        ]
    );
    assert!(
        migrate::up(&db.url, &catalog, None)
            .await
            .expect("nothing pending")
            .is_empty()
    );
    assert_eq!(
        repair(&db.url, &catalog, Action::Show, &options)
            .await
            .expect("show"),
        "nothing to repair: no migration is partly applied"
    );
}

#[tokio::test]
async fn repair_stamp_records_a_partly_applied_migration_as_applied_without_running_it() {
    let (db, _dir, catalog) = half_applied().await;
    let out = repair(&db.url, &catalog, Action::Stamp, &RunOptions::default())
        .await
        .expect("stamp");
    assert!(
        out.ends_with("stamped 002_t_idx (its remaining statements were not run)"),
        "{out}"
    );
    let mut conn = db.connect().await;
    let row: (bool, bool) = sqlx::query_as(
        "SELECT stamped, no_transaction FROM gito_schema_migrations WHERE version = 2",
    )
    .fetch_one(&mut conn)
    .await
    .expect("row");
    assert_eq!(row, (true, true));
    let built: Option<String> = sqlx::query_scalar("SELECT to_regclass('t_v_id_idx')::text")
        .fetch_one(&mut conn)
        .await
        .expect("regclass");
    assert_eq!(built, None, "stamp ran no SQL");
}

/// A session that locks `b` and then `a` while a migration locks `a` and then `b`: the two wait
/// for each other, and PostgreSQL aborts the migration (the session's own deadlock check is set to
/// come later). Each transactional migration, up or down, runs again and succeeds once the session
/// is done.
#[tokio::test]
async fn a_migration_aborted_as_a_deadlocks_victim_runs_again() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "001_t.up.sql",
        "CREATE TABLE a (id int); CREATE TABLE b (id int);",
    );
    write(
        dir.path(),
        "002_x.up.sql",
        "LOCK TABLE a IN ACCESS EXCLUSIVE MODE; LOCK TABLE b IN ACCESS EXCLUSIVE MODE;
         ALTER TABLE a ADD COLUMN x int;",
    );
    write(
        dir.path(),
        "002_x.down.sql",
        "LOCK TABLE a IN ACCESS EXCLUSIVE MODE; LOCK TABLE b IN ACCESS EXCLUSIVE MODE;
         ALTER TABLE a DROP COLUMN x;",
    );
    let catalog = Catalog::from_dir(dir.path()).await.expect("catalog");
    migrate::up(&db.url, &catalog, Some(1)).await.expect("001");
    let mut observer = PgConnection::connect(&db.url).await.expect("connect");
    let columns = async |conn: &mut PgConnection| -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'a'")
            .fetch_one(conn)
            .await
            .expect("columns")
    };

    for up in [true, false] {
        let mut session = PgConnection::connect(&db.url).await.expect("connect");
        sqlx::raw_sql(
            "BEGIN; SET LOCAL deadlock_timeout = '30s'; LOCK TABLE b IN ACCESS EXCLUSIVE MODE",
        )
        .execute(&mut session)
        .await
        .expect("lock b");
        let (url, catalog) = (db.url.clone(), catalog.clone());
        let migration = tokio::spawn(async move {
            if up {
                migrate::up(&url, &catalog, None).await.map(drop)
            } else {
                migrate::down(&url, &catalog, migrate::DownTarget::Steps(1))
                    .await
                    .map(drop)
            }
        });
        gito_testkit::wait_for(Duration::from_secs(10), "the migration waiting for b", || {
            let url = db.url.clone();
            async move {
                let mut conn = PgConnection::connect(&url).await.expect("connect");
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'b'::regclass AND NOT granted)",
                )
                .fetch_one(&mut conn)
                .await
                .expect("pg_locks")
            }
        })
        .await;
        // Within the migration's deadlock_timeout (1 s): its check finds the cycle, aborting it.
        sqlx::raw_sql("LOCK TABLE a IN ACCESS EXCLUSIVE MODE; COMMIT")
            .execute(&mut session)
            .await
            .expect("the session gets a once the migration gave it up");
        migration
            .await
            .expect("joins")
            .unwrap_or_else(|e| panic!("up: {up}: {e}"));
        assert_eq!(columns(&mut observer).await, if up { 2 } else { 1 });
    }
}
