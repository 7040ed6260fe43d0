//! Every migration round-trips: for each N, up to N, down to N-1, up to N again, the schema
//! (`pg_dump --schema-only`, normalized) identical each time; and replaying the plain files with
//! `psql -f` produces the schema gito's runner produces. Reads the directory, so a migration
//! merged later is covered without touching this file.

use std::path::Path;

use gito_api::migrate::{self, Catalog, DownTarget};

use crate::helpers::TestDb;

/// The schema as text, without what differs between two dumps of one schema (comments, SET
/// lines, psql's per-dump `\restrict` key) and without gito's bookkeeping tables.
async fn schema(db: &TestDb) -> String {
    let out = tokio::process::Command::new("pg_dump")
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--exclude-table=gito_schema_migrations*",
            &db.url,
        ])
        .output()
        .await
        .expect("pg_dump (PostgreSQL client tools) is installed, as scripts/test.sh requires");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 dump")
        .lines()
        .filter(|l| {
            !(l.is_empty()
                || l.starts_with("--")
                || l.starts_with("SET ")
                || l.starts_with("SELECT pg_catalog.set_config")
                || l.starts_with("\\restrict")
                || l.starts_with("\\unrestrict"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn every_migration_goes_up_down_and_up_again_to_an_identical_schema() {
    let catalog = Catalog::embedded();
    let db = TestDb::empty().await;
    let mut below = schema(&db).await;
    for m in catalog.iter() {
        migrate::up(&db.url, catalog, Some(m.version))
            .await
            .expect("up to N");
        let at = schema(&db).await;
        assert_ne!(at, below, "{} changes the schema", m.name);
        let reverted = migrate::down(&db.url, catalog, DownTarget::Steps(1))
            .await
            .unwrap_or_else(|e| panic!("down from {}: {e}", m.name));
        assert_eq!(reverted.len(), 1);
        assert_eq!(
            schema(&db).await,
            below,
            "{} down restores the schema below it",
            m.name
        );
        migrate::up(&db.url, catalog, Some(m.version))
            .await
            .expect("up to N again");
        assert_eq!(
            schema(&db).await,
            at,
            "{} up again gives the same schema",
            m.name
        );
        below = at;
    }
}

#[tokio::test]
async fn replaying_the_files_with_psql_gives_the_schema_gito_gives() {
    let gito = TestDb::empty().await;
    migrate::up(&gito.url, Catalog::embedded(), None)
        .await
        .expect("up");
    let plain = TestDb::empty().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut ups: Vec<_> = std::fs::read_dir(&dir)
        .expect("migrations/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".up.sql"))
        .collect();
    ups.sort();
    assert_eq!(ups.len(), Catalog::embedded().iter().count());
    for file in ups {
        let out = tokio::process::Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &plain.url, "-f"])
            .arg(&file)
            .output()
            .await
            .expect("psql is installed, as scripts/test.sh requires");
        assert!(
            out.status.success(),
            "psql -f {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(schema(&plain).await, schema(&gito).await);
}
