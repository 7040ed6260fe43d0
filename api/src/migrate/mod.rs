//! Schema migrations with the operators' Alembic vocabulary (current, history, up, down, stamp,
//! new). The runner is our own, on top of the files `sqlx::migrate!` embeds, because the
//! operators rely on what sqlx's runner does not do: refusing out-of-order and unknown versions,
//! stamping, stepping down, and the "Running upgrade" log lines they grep for.

mod blockers;
mod catalog;
pub mod check;
pub mod lint;
pub mod repair;
mod runner;
pub mod sql;

pub use catalog::{Catalog, Header, Migration};
pub mod commands;
pub use check::DriftMode;
pub use commands::{MigrateArgs, MigrateCommand, Outcome, new_migration, renumber};
pub use runner::{
    Applied, DEFAULT_LOCK_TIMEOUT, DEFAULT_LOCK_WAIT, DEFAULT_STATEMENT_TIMEOUT, DownTarget,
    LOCK_KEY, Partial, RunOptions, Status, down, down_waiting, down_with, stamp, stamp_waiting,
    status, up, up_waiting, up_with,
};

/// Why a migration command or a boot-time migration stopped. Each variant reads as one line
/// that names the version and the file.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database has migration {name} applied, which this gito-api does not know \
         (database newer than code): deploy the gito-api that has it, or roll it back with that binary"
    )]
    UnknownApplied { name: String },
    #[error(
        "migration {name} ({file}) was modified after it was applied (checksum differs): \
         restore the file and put the change in a new migration"
    )]
    Modified { name: String, file: String },
    #[error(
        "migration {name} ({file}) is pending but older than the newest applied migration {newest} \
         (branches merged out of order): renumber it after {newest}"
    )]
    OutOfOrder {
        name: String,
        file: String,
        newest: String,
    },
    #[error("migration {name} ({file}) failed: {reason}")]
    Failed {
        name: String,
        file: String,
        reason: String,
    },
    #[error(
        "migration {name} ({file}) is partly applied: {done} of {total} statement(s) ran before one failed \
         (a no-transaction migration): run `gito-api migrate repair` to see what exists, then \
         `gito-api migrate repair --roll-forward` or `--stamp`"
    )]
    Partial {
        name: String,
        file: String,
        done: i32,
        total: i32,
    },
    #[error("migration {name} has no down migration ({file} is missing)")]
    Irreversible { name: String, file: String },
    #[error("unknown migration version {0:?} (try `gito-api migrate history`)")]
    UnknownVersion(String),
    #[error(
        "two migrations share version {version:03}: migrations/{first}.up.sql and migrations/{second}.up.sql \
         (two branches merged): renumber whichever no database has applied yet, \
         `gito-api migrate renumber {first}` or `gito-api migrate renumber {second}` (it becomes the next free number)"
    )]
    DuplicateVersion {
        version: i64,
        first: String,
        second: String,
    },
    #[error(
        "migrations skip version {missing:03}: migrations/{before}.up.sql is followed by \
         migrations/{after}.up.sql: renumber it with `gito-api migrate renumber {after} {missing:03}`, \
         or restore the missing migration"
    )]
    Gap {
        missing: i64,
        before: String,
        after: String,
    },
    #[error("{file}: {reason}")]
    Header { file: String, reason: String },
    /// `check` could not set up its comparison.
    #[error("{0}")]
    Check(String),
    #[error("cannot read migrations: {0}")]
    Source(String),
    #[error("invalid migration name {0:?}: use lower-case letters, digits and underscores")]
    InvalidName(String),
    #[error(
        "no database given: set DATABASE_URL or pass --database-url, e.g. postgres://gito:secret@localhost:5432/gito"
    )]
    NoDatabase,
    #[error(
        "gave up after {waited} waiting for the migration lock (PostgreSQL advisory lock {key}), \
         held by {holder}: let it finish, or end it (SELECT pg_terminate_backend(pid)) if it is stuck; \
         GITO_MIGRATION_ADVISORY_LOCK_WAIT sets how long to wait"
    )]
    LockWait {
        waited: String,
        key: i64,
        holder: String,
    },
    #[error(transparent)]
    Database(#[from] crate::db_error::DbError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<sqlx::Error> for MigrateError {
    fn from(e: sqlx::Error) -> Self {
        MigrateError::Database(e.into())
    }
}

impl MigrateError {
    /// Whether waiting may help (the database is not reachable yet); see `DbError`.
    pub fn is_transient(&self) -> bool {
        matches!(self, MigrateError::Database(e) if e.is_transient())
    }
}
