//! The migrations a binary knows: the `migrations/` directory, embedded at compile time or read
//! from disk (tests and `migrate new`), paired up/down by version.

use std::path::Path;
use std::sync::LazyLock;

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
    pub(crate) no_tx: bool,
}

impl Migration {
    /// The file an operator should look at, relative to the repository root.
    pub fn up_file(&self) -> String {
        format!("migrations/{}.up.sql", self.name)
    }

    pub fn down_file(&self) -> String {
        format!("migrations/{}.down.sql", self.name)
    }

    /// The SHA-384 of the up file, as recorded in `gito_schema_migrations`.
    pub fn checksum(&self) -> &[u8] {
        &self.checksum
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

    fn from_sqlx(source: &[sqlx::migrate::Migration]) -> Result<Catalog, MigrateError> {
        let mut migrations: Vec<Migration> = Vec::new();
        for m in source.iter().filter(|m| m.migration_type.is_up_migration()) {
            if migrations.iter().any(|known| known.version == m.version) {
                return Err(MigrateError::DuplicateVersion(m.version));
            }
            let down = source
                .iter()
                .find(|d| {
                    d.version == m.version && d.migration_type == MigrationType::ReversibleDown
                })
                .map(|d| d.sql.clone());
            migrations.push(Migration {
                version: m.version,
                name: format!("{:03}_{}", m.version, m.description.replace(' ', "_")),
                up: m.sql.clone(),
                down,
                checksum: m.checksum.to_vec(),
                no_tx: m.no_tx,
            });
        }
        migrations.sort_by_key(|m| m.version);
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
