//! The migration runner against real databases: up, down, stamp, and every refusal.

use std::path::Path;

use gito_api::migrate::{self, Catalog, DownTarget, MigrateError, commands::current_line};
use sqlx::PgConnection;

use crate::helpers::{TestDb, head_migration, migration_count};

const NULLABLE: &str = "005_nullable_device_hierarchy";

/// Everything about the schema that a migration can change, as comparable text.
async fn schema_dump(conn: &mut PgConnection) -> Vec<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT format('column %s.%s %s null=%s default=%s', table_name, column_name, data_type, is_nullable, column_default)
           FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'gito_schema_migrations'
         UNION ALL
         SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid))
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace
         UNION ALL
         SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'public'
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .expect("schema dump");
    rows.into_iter()
        .map(|(line,)| line)
        .filter(|l| !l.contains("gito_schema_migrations"))
        .collect()
}

async fn current(db: &TestDb) -> String {
    let catalog = Catalog::embedded();
    current_line(
        &migrate::status(&db.url, catalog).await.expect("status"),
        catalog,
    )
}

#[tokio::test]
async fn empty_database_migrates_to_head_and_a_second_run_applies_nothing() {
    let db = TestDb::empty().await;
    assert_eq!(
        current(&db).await,
        format!("base ({} pending)", migration_count())
    );
    let applied = migrate::up(&db.url, Catalog::embedded(), None)
        .await
        .expect("up");
    let names: Vec<&str> = applied.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names.len(), migration_count());
    assert_eq!(names.last(), Some(&head_migration()));
    assert_eq!(
        names[..9],
        [
            "001_tenants",
            "002_device_hierarchy",
            "003_device_types",
            "004_devices_and_telemetry",
            NULLABLE,
            "006_telemetry_ingest_and_alerts",
            "007_api_tokens",
            "008_dead_letters",
            "009_device_notify",
        ]
    );
    assert_eq!(current(&db).await, format!("{} (head)", head_migration()));
    assert!(
        migrate::up(&db.url, Catalog::embedded(), None)
            .await
            .expect("up again")
            .is_empty()
    );
}

#[tokio::test]
async fn head_to_base_to_head_leaves_an_identical_schema() {
    let db = TestDb::empty().await;
    let catalog = Catalog::embedded();
    migrate::up(&db.url, catalog, None).await.expect("up");
    let mut conn = db.connect().await;
    let at_head = schema_dump(&mut conn).await;
    assert!(
        at_head.iter().any(|l| l.contains("devices_device_type_fk")),
        "dump sees constraints"
    );

    let reverted = migrate::down(&db.url, catalog, DownTarget::To(None))
        .await
        .expect("down to base");
    assert_eq!(reverted.len(), migration_count());
    assert_eq!(
        schema_dump(&mut conn).await,
        Vec::<String>::new(),
        "base is empty"
    );
    assert_eq!(
        current(&db).await,
        format!("base ({} pending)", migration_count())
    );

    migrate::up(&db.url, catalog, None).await.expect("up again");
    assert_eq!(schema_dump(&mut conn).await, at_head);
}

#[tokio::test]
async fn downgrading_005_with_unclassified_devices_fails_naming_column_and_count_and_changes_nothing()
 {
    let db = TestDb::empty().await;
    let catalog = Catalog::embedded();
    migrate::up(&db.url, catalog, None).await.expect("up");
    let mut conn = db.connect().await;
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('00000000-0000-7000-8000-000000000001', 't');
         INSERT INTO devices (id, tenant_id, name) VALUES
           (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 'a'),
           (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 'b'),
           (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 'c');",
    )
    .execute(&mut conn)
    .await
    .expect("seed devices");
    migrate::down(&db.url, catalog, DownTarget::To(Some(5)))
        .await
        .expect("head to 006 revert");
    let before = schema_dump(&mut conn).await;

    let error = migrate::down(&db.url, catalog, DownTarget::Steps(1))
        .await
        .expect_err("must refuse");
    let message = error.to_string();
    assert!(matches!(error, MigrateError::Failed { .. }), "{message}");
    assert!(message.contains(NULLABLE), "{message}");
    assert!(
        message.contains("migrations/005_nullable_device_hierarchy.down.sql"),
        "{message}"
    );
    assert!(
        message.contains("devices.organization_id: 3 row(s) hold NULL"),
        "{message}"
    );

    assert_eq!(schema_dump(&mut conn).await, before, "schema unchanged");
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(devices, 3, "nothing deleted");
    assert_eq!(
        current(&db).await,
        format!("{NULLABLE} ({} pending)", migration_count() - 5)
    );
}

#[tokio::test]
async fn down_by_steps_and_to_a_version_then_up_to_a_version() {
    let db = TestDb::empty().await;
    let catalog = Catalog::embedded();
    migrate::up(&db.url, catalog, None).await.expect("up");
    let reverted = migrate::down(&db.url, catalog, DownTarget::Steps(2))
        .await
        .expect("down 2");
    assert_eq!(
        reverted.iter().map(|m| m.version).collect::<Vec<_>>(),
        [migration_count() as i64, migration_count() as i64 - 1]
    );
    let third_newest = &catalog.iter().rev().nth(2).expect("three migrations").name;
    assert_eq!(current(&db).await, format!("{third_newest} (2 pending)"));
    migrate::down(&db.url, catalog, DownTarget::To(Some(1)))
        .await
        .expect("down to 001");
    assert_eq!(
        current(&db).await,
        format!("001_tenants ({} pending)", migration_count() - 1)
    );
    migrate::up(&db.url, catalog, Some(4))
        .await
        .expect("up to 004");
    assert_eq!(
        current(&db).await,
        format!(
            "004_devices_and_telemetry ({} pending)",
            migration_count() - 4
        )
    );
}

#[tokio::test]
async fn stamp_records_versions_without_running_them() {
    let db = TestDb::empty().await;
    let catalog = Catalog::embedded();
    migrate::stamp(&db.url, catalog, Some(3))
        .await
        .expect("stamp 003");
    assert_eq!(
        current(&db).await,
        format!("003_device_types ({} pending)", migration_count() - 3)
    );
    let mut conn = db.connect().await;
    let tenants: Option<String> = sqlx::query_scalar("SELECT to_regclass('tenants')::text")
        .fetch_one(&mut conn)
        .await
        .expect("regclass");
    assert_eq!(tenants, None, "stamp ran no SQL");
    migrate::stamp(&db.url, catalog, None)
        .await
        .expect("stamp base");
    assert_eq!(
        current(&db).await,
        format!("base ({} pending)", migration_count())
    );
}

#[tokio::test]
async fn a_modified_applied_migration_is_refused_by_name_and_file() {
    let db = TestDb::empty().await;
    migrate::up(&db.url, Catalog::embedded(), None)
        .await
        .expect("up");
    let mut conn = db.connect().await;
    // What a different file would have hashed to.
    sqlx::query("UPDATE gito_schema_migrations SET checksum = sha384('edited') WHERE version = 3")
        .execute(&mut conn)
        .await
        .expect("tamper");
    let error = migrate::up(&db.url, Catalog::embedded(), None)
        .await
        .expect_err("must refuse");
    assert!(matches!(error, MigrateError::Modified { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("003_device_types (migrations/003_device_types.up.sql) was modified"),
        "{error}"
    );
}

#[tokio::test]
async fn a_database_newer_than_the_code_is_refused() {
    let db = TestDb::empty().await;
    migrate::up(&db.url, Catalog::embedded(), None)
        .await
        .expect("up");
    let mut conn = db.connect().await;
    sqlx::query("INSERT INTO gito_schema_migrations (version, name, checksum, execution_ms) VALUES (99, '099_from_the_future', '\\x00', 1)")
        .execute(&mut conn)
        .await
        .expect("insert");
    let error = migrate::up(&db.url, Catalog::embedded(), None)
        .await
        .expect_err("must refuse");
    assert!(
        matches!(error, MigrateError::UnknownApplied { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("099_from_the_future"), "{error}");
    assert!(
        error.to_string().contains("database newer than code"),
        "{error}"
    );
}

fn write(dir: &Path, file: &str, sql: &str) {
    std::fs::write(dir.join(file), sql).expect("write migration");
}

#[tokio::test]
async fn a_pending_migration_older_than_the_newest_applied_is_refused() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "001_a.up.sql", "CREATE TABLE a (id int);");
    write(dir.path(), "001_a.down.sql", "DROP TABLE a;");
    write(dir.path(), "002_b.up.sql", "CREATE TABLE b (id int);");
    write(dir.path(), "002_b.down.sql", "DROP TABLE b;");
    write(dir.path(), "003_c.up.sql", "CREATE TABLE c (id int);");
    write(dir.path(), "003_c.down.sql", "DROP TABLE c;");
    let merged = Catalog::from_dir(dir.path()).await.expect("catalog");
    migrate::up(&db.url, &merged, None).await.expect("up");
    // A catalog has no gaps (refused on load), so this arises when a database skipped one: here
    // 002 unrecorded and undone by hand, as on a staging database that ran a branch's 003 first.
    let mut conn = db.connect().await;
    sqlx::raw_sql("DELETE FROM gito_schema_migrations WHERE version = 2; DROP TABLE b;")
        .execute(&mut conn)
        .await
        .expect("skip 002");
    let error = migrate::up(&db.url, &merged, None)
        .await
        .expect_err("must refuse");
    assert!(matches!(error, MigrateError::OutOfOrder { .. }), "{error}");
    assert!(error.to_string().contains("002_b (migrations/002_b.up.sql) is pending but older than the newest applied migration 003_c"), "{error}");
}

#[tokio::test]
async fn a_failing_migration_rolls_back_and_names_its_file() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "001_ok.up.sql", "CREATE TABLE ok (id int);");
    write(
        dir.path(),
        "002_broken.up.sql",
        "CREATE TABLE half (id int);\nCREATE TABLE ok (id int);",
    );
    let catalog = Catalog::from_dir(dir.path()).await.expect("catalog");
    let error = migrate::up(&db.url, &catalog, None)
        .await
        .expect_err("002 fails");
    assert!(
        error.to_string().contains(
            "002_broken (migrations/002_broken.up.sql) failed: relation \"ok\" already exists"
        ),
        "{error}"
    );
    let status = migrate::status(&db.url, &catalog).await.expect("status");
    assert_eq!(current_line(&status, &catalog), "001_ok (1 pending)");
    let mut conn = db.connect().await;
    let half: Option<String> = sqlx::query_scalar("SELECT to_regclass('half')::text")
        .fetch_one(&mut conn)
        .await
        .expect("regclass");
    assert_eq!(
        half, None,
        "the failed migration's first statement was rolled back"
    );
}

#[tokio::test]
async fn two_migrations_with_one_version_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "001_a.up.sql", "SELECT 1;");
    write(dir.path(), "001_b.up.sql", "SELECT 1;");
    let error = Catalog::from_dir(dir.path()).await.expect_err("duplicate");
    assert!(
        matches!(error, MigrateError::DuplicateVersion { version: 1, .. }),
        "{error}"
    );
    assert!(
        error.to_string().starts_with(
            "two migrations share version 001: migrations/001_a.up.sql and migrations/001_b.up.sql"
        ),
        "{error}"
    );
}

/// Catches two branches adding the same number, a gap, a missing down file, a stray name.
#[test]
fn repository_migrations_are_unique_contiguous_three_digit_and_reversible() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut ups = Vec::new();
    let mut downs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("migrations dir") {
        let file = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("UTF-8 name");
        let (stem, list) = if let Some(stem) = file.strip_suffix(".up.sql") {
            (stem.to_owned(), &mut ups)
        } else if let Some(stem) = file.strip_suffix(".down.sql") {
            (stem.to_owned(), &mut downs)
        } else {
            panic!("unexpected file in migrations/: {file}");
        };
        let (number, name) = stem.split_once('_').expect("NNN_name");
        assert_eq!(number.len(), 3, "{file}: three-digit version");
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{file}"
        );
        list.push((number.parse::<i64>().expect("numeric version"), stem));
    }
    ups.sort();
    downs.sort();
    assert_eq!(ups, downs, "every up has its down");
    let versions: Vec<i64> = ups.iter().map(|(v, _)| *v).collect();
    let expected: Vec<i64> = (1..=versions.len() as i64).collect();
    assert_eq!(
        versions, expected,
        "versions are unique and contiguous from 001"
    );
    let embedded: Vec<String> = Catalog::embedded().iter().map(|m| m.name.clone()).collect();
    assert_eq!(
        embedded,
        ups.into_iter().map(|(_, s)| s).collect::<Vec<_>>(),
        "the binary embeds exactly these"
    );
}

#[tokio::test]
async fn new_migration_writes_the_next_pair() {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations")).expect("dir")
    {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    let (up, down) = migrate::new_migration(dir.path(), "add_alert_rules")
        .await
        .expect("new");
    let next = format!("{:03}_add_alert_rules", migration_count() + 1);
    assert_eq!(
        up.file_name().and_then(|n| n.to_str()),
        Some(format!("{next}.up.sql").as_str())
    );
    assert_eq!(
        down.file_name().and_then(|n| n.to_str()),
        Some(format!("{next}.down.sql").as_str())
    );
    let catalog = Catalog::from_dir(dir.path())
        .await
        .expect("still a valid catalog");
    assert_eq!(catalog.head().map(|m| m.name.as_str()), Some(next.as_str()));
    assert!(matches!(
        migrate::new_migration(dir.path(), "Bad Name").await,
        Err(MigrateError::InvalidName(_))
    ));
}
