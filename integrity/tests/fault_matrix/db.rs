//! A database of the scenario's own on the shared test server, migrated by the `gito-api migrate
//! up` binary — the suite stays black-box and compiles apart from the product's libraries.
//! Named `gito_test_*` like testkit's, so `scripts/test.sh` drops any leftovers; dropped when
//! done (by a detached `psql`, off the test's path) unless the test failed or `GITO_TEST_KEEP`
//! is set.

use sqlx::Connection as _;
use uuid::Uuid;

pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

/// The server tests create their databases on.
pub fn server_url() -> String {
    std::env::var("GITO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let name = format!("gito_test_fm_{}", Uuid::new_v4().simple());
        create_database(&server_url(), &name).await;
        TestDatabase {
            url: url_of(&server_url(), &name),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::env::var_os("GITO_TEST_KEEP").is_some() || std::thread::panicking() {
            eprintln!("test database kept for a look: {}", self.url);
            return;
        }
        let _ = std::process::Command::new("psql")
            .arg(server_url())
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

/// `server_url` with its database replaced by `name`.
pub fn url_of(server_url: &str, name: &str) -> String {
    let (base, _) = server_url
        .rsplit_once('/')
        .expect("database URL has a path");
    format!("{base}/{name}")
}

pub async fn create_database(server_url: &str, name: &str) {
    let mut admin = sqlx::PgConnection::connect(server_url)
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL at {server_url}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create the database");
    admin.close().await.ok();
}
