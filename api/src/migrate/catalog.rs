//! The migrations a binary knows: the `migrations/` directory, embedded at compile time or read
//! from disk (tests, `migrate new`, GITO_MIGRATIONS_RUNTIME_DIR), paired up/down by version, with
//! their `-- gito:` headers read. Two files with one version or a gap refuse to load, with a line
//! naming both files.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use sha2::{Digest as _, Sha384};

use sqlx::SqlStr;
use sqlx::migrate::{MigrationType, Migrator};

use super::MigrateError;

static EMBEDDED: Migrator = sqlx::migrate!("../migrations");

/// One reversible migration, e.g. `005_nullable_device_hierarchy`.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i64,
    /// The file stem as operators know it: three-digit version, underscore, description.
    pub name: String,
    pub(crate) up: SqlStr,
    pub(crate) down: Option<SqlStr>,
    pub(crate) checksum: Vec<u8>,
    /// `-- gito: no-transaction` (or sqlx's `-- no-transaction` first line).
    pub(crate) no_tx: bool,
    /// `-- gito: lock_timeout=30s` / `statement_timeout=1h` (`0`: none): overrides the defaults.
    pub(crate) lock_timeout: Option<Duration>,
    pub(crate) statement_timeout: Option<Duration>,
}

impl Migration {
    /// The file an operator should look at, relative to the repository root.
    pub fn up_file(&self) -> String {
        format!("migrations/{}.up.sql", self.name)
    }

    pub fn down_file(&self) -> String {
        format!("migrations/{}.down.sql", self.name)
    }

    /// The SHA-384 of the up file without its `-- gito-lint:` lines, as recorded in
    /// `gito_schema_migrations`.
    pub fn checksum(&self) -> &[u8] {
        &self.checksum
    }

    pub fn no_transaction(&self) -> bool {
        self.no_tx
    }

    pub fn up_sql(&self) -> &str {
        self.up.as_str()
    }

    pub fn down_sql(&self) -> Option<&str> {
        self.down.as_ref().map(SqlStr::as_str)
    }
}

/// Settings a migration's `-- gito:` header lines give.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Header {
    pub no_transaction: bool,
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
}

impl Header {
    /// Reads the header lines; an unknown key or a bad duration is an error naming the line.
    pub fn parse(sql: &str) -> Result<Header, String> {
        let mut header = Header::default();
        for (key, value) in super::sql::headers(sql) {
            let duration = || {
                let v = value.as_deref().unwrap_or_default();
                if v == "0" || v == "off" {
                    Ok(Duration::ZERO)
                } else {
                    crate::config::parse_duration(v).map_err(|e| format!("-- gito: {key}={v}: {e}"))
                }
            };
            match (key.as_str(), &value) {
                ("no-transaction", None) => header.no_transaction = true,
                ("lock_timeout", Some(_)) => header.lock_timeout = Some(duration()?),
                ("statement_timeout", Some(_)) => header.statement_timeout = Some(duration()?),
                _ => {
                    return Err(format!(
                        "unknown header `-- gito: {key}{}` (known: no-transaction, lock_timeout=DURATION, statement_timeout=DURATION)",
                        value.map(|v| format!("={v}")).unwrap_or_default()
                    ));
                }
            }
        }
        Ok(header)
    }
}

/// All known migrations, sorted by version, versions unique.
#[derive(Debug, Clone)]
pub struct Catalog {
    migrations: Vec<Migration>,
}

impl Catalog {
    /// The migrations compiled into this binary.
    pub fn embedded() -> &'static Catalog {
        static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
            Catalog::from_sqlx(&EMBEDDED.migrations)
                .expect("migrations/ was checked by the test suite: versions are unique")
        });
        &CATALOG
    }

    /// The migrations in a directory, read now (used by tests and by `migrate new`).
    pub async fn from_dir(dir: &Path) -> Result<Catalog, MigrateError> {
        let migrator = Migrator::new(dir)
            .await
            .map_err(|e| MigrateError::Source(e.to_string()))?;
        Catalog::from_sqlx(&migrator.migrations)
    }

    /// The embedded migrations, or those in `dir` when one is given (GITO_MIGRATIONS_RUNTIME_DIR).
    pub async fn load(dir: Option<&Path>) -> Result<Catalog, MigrateError> {
        match dir {
            Some(dir) => Catalog::from_dir(dir).await,
            None => Catalog::from_sqlx(&EMBEDDED.migrations),
        }
    }

    fn from_sqlx(source: &[sqlx::migrate::Migration]) -> Result<Catalog, MigrateError> {
        let mut migrations: Vec<Migration> = Vec::new();
        let stem = |m: &sqlx::migrate::Migration| {
            format!("{:03}_{}", m.version, m.description.replace(' ', "_"))
        };
        for m in source.iter().filter(|m| m.migration_type.is_up_migration()) {
            if let Some(known) = migrations.iter().find(|known| known.version == m.version) {
                let (first, second) = if known.name < stem(m) {
                    (known.name.clone(), stem(m))
                } else {
                    (stem(m), known.name.clone())
                };
                return Err(MigrateError::DuplicateVersion {
                    version: m.version,
                    first,
                    second,
                });
            }
            let down = source
                .iter()
                .find(|d| {
                    d.version == m.version && d.migration_type == MigrationType::ReversibleDown
                })
                .map(|d| d.sql.clone());
            let name = stem(m);
            let header = Header::parse(m.sql.as_str()).map_err(|reason| MigrateError::Header {
                file: format!("migrations/{name}.up.sql"),
                reason,
            })?;
            migrations.push(Migration {
                version: m.version,
                name,
                checksum: Sha384::digest(super::sql::checksummed(m.sql.as_str()).as_bytes())
                    .to_vec(),
                up: m.sql.clone(),
                down,
                no_tx: m.no_tx || header.no_transaction,
                lock_timeout: header.lock_timeout,
                statement_timeout: header.statement_timeout,
            });
        }
        migrations.sort_by_key(|m| m.version);
        for pair in migrations.windows(2) {
            if pair[1].version != pair[0].version + 1 {
                return Err(MigrateError::Gap {
                    missing: pair[0].version + 1,
                    before: pair[0].name.clone(),
                    after: pair[1].name.clone(),
                });
            }
        }
        Ok(Catalog { migrations })
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Migration> {
        self.migrations.iter()
    }

    pub fn get(&self, version: i64) -> Option<&Migration> {
        self.migrations.iter().find(|m| m.version == version)
    }

    pub fn head(&self) -> Option<&Migration> {
        self.migrations.last()
    }

    /// Resolves what an operator types: `head`, `base`, `5`, `005` or `005_nullable_device_hierarchy`.
    /// `base` is `Ok(None)`.
    pub fn resolve(&self, spec: &str) -> Result<Option<&Migration>, MigrateError> {
        let unknown = || MigrateError::UnknownVersion(spec.to_owned());
        match spec {
            "base" => Ok(None),
            "head" => self.head().map(Some).ok_or_else(unknown),
            _ => {
                let number = spec.split('_').next().unwrap_or_default();
                let version: i64 = number.parse().map_err(|_| unknown())?;
                let found = self.get(version).ok_or_else(unknown)?;
                if spec.contains('_') && spec != found.name {
                    return Err(unknown());
                }
                Ok(Some(found))
            }
        }
    }
}
