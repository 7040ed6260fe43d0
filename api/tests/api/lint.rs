//! `gito-api migrate lint`: every rule on a fixture migration, the safe forms unflagged,
//! acknowledgements, and the shipped migrations (read from the directory, so every migration
//! merged later is linted too).

use std::path::{Path, PathBuf};

use gito_api::migrate::Catalog;
use gito_api::migrate::lint::{self, Finding, RULES};

use crate::helpers::{TestDb, gito_api};

fn fixtures(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations")
}

fn open(findings: &[Finding]) -> Vec<&'static str> {
    findings
        .iter()
        .filter(|f| f.acknowledged.is_none())
        .map(|f| f.rule)
        .collect()
}

#[test]
fn each_rule_flags_its_fixture_migration_and_nothing_else() {
    for (rule, _, fix) in RULES {
        let file = fixtures("lint").join(format!("{rule}.up.sql"));
        let findings = lint::lint_paths(std::slice::from_ref(&file))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            open(&findings),
            [*rule],
            "{}: {findings:#?}",
            file.display()
        );
        let line = findings[0].to_string();
        assert!(line.contains(&format!(": {rule}: ")), "{line}");
        assert!(line.ends_with(&format!("→ fix: {fix}")), "{line}");
    }
}

#[test]
fn the_safe_form_of_every_hazard_is_not_flagged() {
    let findings =
        lint::lint_paths(&[fixtures("lint-clean").join("001_safe.up.sql")]).expect("lint");
    assert_eq!(findings, [], "{findings:#?}");
}

#[test]
fn an_acknowledgement_with_a_reason_silences_its_rule_on_the_next_statement_only() {
    let findings =
        lint::lint_paths(&[fixtures("lint-clean").join("002_acknowledged.up.sql")]).expect("lint");
    let acknowledged: Vec<(&str, Option<&str>)> = findings
        .iter()
        .map(|f| (f.rule, f.acknowledged.as_deref()))
        .collect();
    assert_eq!(
        acknowledged,
        [
            (
                "create-index-not-concurrently",
                Some("the table is created empty by 001 of this fixture")
            ),
            // `-- gito-lint: allow rename` without a reason acknowledges nothing.
            ("rename", None),
        ],
        "{findings:#?}"
    );
}

#[test]
fn shipped_migrations_pass_lint_or_carry_a_reasoned_acknowledgement() {
    let findings = lint::lint_paths(&[shipped()]).expect("lint migrations/");
    assert_eq!(open(&findings), Vec::<&str>::new(), "{findings:#?}");
    assert!(
        findings
            .iter()
            .all(|f| f.acknowledged.as_ref().is_some_and(|why| why.len() > 20)),
        "{findings:#?}"
    );
}

#[tokio::test]
async fn lint_exits_1_on_an_unacknowledged_finding_0_on_the_shipped_migrations_and_2_on_a_missing_file()
 {
    let run = async |args: &[&str]| {
        let out = gito_api("", args)
            .env_remove("DATABASE_URL")
            .output()
            .await
            .expect("gito-api runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let fixture = fixtures("lint").join("rename.up.sql");
    let (code, stdout, _) = run(&["migrate", "lint", fixture.to_str().expect("path")]).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("rename.up.sql:1: rename: RENAME COLUMN devices.name → fix: "),
        "{stdout}"
    );
    let dir = shipped();
    let (code, stdout, _) = run(&["migrate", "lint", "--dir", dir.to_str().expect("path")]).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.ends_with("0 unacknowledged (acknowledge one with `-- gito-lint: allow RULE: why` before its statement)\n"), "{stdout}");
    let (code, _, stderr) = run(&["migrate", "lint", "/nonexistent/001_x.up.sql"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot read migrations"), "{stderr}");
}

/// The trap: production applied 006 before it carried its acknowledgement. The checksum leaves
/// `-- gito-lint:` lines out, so the database still verifies.
#[tokio::test]
async fn acknowledging_an_applied_migration_does_not_count_as_modifying_it() {
    // SHA-384 of 006 as shipped and recorded before acknowledgements existed.
    const RECORDED_006: &str = "b433d0cbf11cf1624eb32dc9b7432d46c382910336d6c45bc1043b13ebeb5b5828908051ba561a4c18878ab8370313dd";
    let embedded = Catalog::embedded().get(6).expect("006");
    assert!(
        embedded.up_sql().contains("-- gito-lint: allow"),
        "006 carries an acknowledgement"
    );
    assert_eq!(hex::encode(embedded.checksum()), RECORDED_006);

    // A database migrated from the files as they were (acknowledgement lines removed)...
    let before = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(shipped()).expect("migrations/") {
        let entry = entry.expect("entry");
        let text = std::fs::read_to_string(entry.path()).expect("read");
        let without: String = text
            .split_inclusive('\n')
            .filter(|l| !l.starts_with("-- gito-lint:"))
            .collect();
        std::fs::write(before.path().join(entry.file_name()), without).expect("write");
    }
    let old = Catalog::from_dir(before.path()).await.expect("catalog");
    let db = TestDb::empty().await;
    gito_api::migrate::up(&db.url, &old, None)
        .await
        .expect("up (as shipped)");
    // ...is at head for today's binary: nothing modified, nothing pending.
    let applied = gito_api::migrate::up(&db.url, Catalog::embedded(), None)
        .await
        .expect("the acknowledged files verify");
    assert!(applied.is_empty());
}
