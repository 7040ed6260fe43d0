//! A database of its own for every test. Migrated ones are cloned from a template that is
//! migrated once per migration set (its name carries the set's fingerprint, so a changed
//! migration never reuses a stale template), which is much faster than replaying every migration
//! per test. Each database is dropped (in the background) when its `TestDb` is, unless the test failed: then it is
//! kept for a look (set `GITO_TEST_KEEP=1` to keep every one), and `scripts/test.sh` drops leftovers
//! (`gito_test_*`) before and after a run.

use sha2::{Digest as _, Sha256};
use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;
use uuid::Uuid;

use gito_api::migrate::{self, Catalog};

/// Serializes template creation across test processes running at once.
const TEMPLATE_LOCK: i64 = 0x6769_746f_7465_6d70; // "gitotemp"

/// The server tests create their databases on; any database of it will do.
pub fn server_url() -> String {
    std::env::var("GITO_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A database with the schema at head, cloned from the template.
    pub async fn migrated() -> TestDb {
        static TEMPLATE: OnceCell<String> = OnceCell::const_new();
        let template = TEMPLATE.get_or_init(create_template).await;
        TestDb::create(&format!("TEMPLATE {template}")).await
    }

    /// An empty database, for tests of migrating itself.
    pub async fn empty() -> TestDb {
        TestDb::create("").await
    }

    async fn create(options: &str) -> TestDb {
        let name = format!("gito_test_{}", Uuid::new_v4().simple());
        execute(&format!("CREATE DATABASE {name} {options}")).await;
        TestDb {
            url: database_url(&name),
            name,
        }
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("GITO_TEST_KEEP").is_some() || std::thread::panicking() {
            eprintln!("test database kept for a look: {}", self.url);
            return;
        }
        if let Ok(queue) = dropper().lock() {
            queue.send(self.name.clone()).ok();
        }
    }
}

/// Drops finished tests' databases one at a time, off the tests' path: DROP DATABASE forces a
/// checkpoint, and done inline under load it made the suite four times slower. Whatever is still
/// queued when the test process exits is dropped by `scripts/test.sh` after the run.
fn dropper() -> &'static std::sync::Mutex<std::sync::mpsc::Sender<String>> {
    static DROPPER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<String>>> =
        std::sync::OnceLock::new();
    DROPPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            for name in rx {
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                if let Err(e) = runtime.block_on(try_execute(&sql)) {
                    eprintln!("could not drop the test database {name}: {e}");
                }
            }
        });
        std::sync::Mutex::new(tx)
    })
}

fn database_url(name: &str) -> String {
    let server = server_url();
    let (base, _) = server.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

async fn try_execute(sql: &str) -> Result<(), sqlx::Error> {
    let mut admin = PgConnection::connect(&server_url()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut admin)
        .await?;
    admin.close().await.ok();
    Ok(())
}

async fn execute(sql: &str) {
    let mut admin = PgConnection::connect(&server_url())
        .await
        .expect("connect to test PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    admin.close().await.ok();
}

/// Creates `gito_test_template_<fingerprint>` unless it exists: built under another name, then
/// renamed, so no test ever clones a half-migrated template.
async fn create_template() -> String {
    let catalog = Catalog::embedded();
    let mut fingerprint = Sha256::new();
    for m in catalog.iter() {
        fingerprint.update(m.version.to_be_bytes());
        fingerprint.update(m.checksum());
    }
    let name = format!(
        "gito_test_template_{}",
        &hex::encode(fingerprint.finalize())[..16]
    );
    let mut admin = PgConnection::connect(&server_url())
        .await
        .expect("connect to test PostgreSQL");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut admin)
        .await
        .expect("template lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("look for the template");
    if !exists {
        let building = format!("{name}_building");
        for sql in [
            format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
            format!("CREATE DATABASE {building}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .expect("create the template");
        }
        migrate::up(&database_url(&building), catalog, None)
            .await
            .expect("migrate the template");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {building} RENAME TO {name}"
        )))
        .execute(&mut admin)
        .await
        .expect("publish the template");
    }
    admin.close().await.ok();
    name
}
