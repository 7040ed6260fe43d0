//! Applies and reverts migrations against PostgreSQL.
//!
//! Every command that writes runs on one dedicated connection under a session advisory lock, so
//! replicas booting together apply each migration exactly once; the connection is closed when
//! the command ends, also on error, so the lock can never leak into a pool. Each migration runs
//! in its own transaction together with its bookkeeping row. Waiting for another process's lock
//! is bounded, and giving up names that process (`pg_locks` joined with `pg_stat_activity`).

use std::time::{Duration, Instant};

use sqlx::postgres::PgDatabaseError;
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Catalog, MigrateError, Migration};
use crate::config::connect_options;

/// Arbitrary but fixed: every gito-api process agrees on it ("gito" in ASCII).
pub const LOCK_KEY: i64 = 0x6769_746f;
/// How long to wait for another process's migration lock unless told otherwise.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(300);
/// How often the lock is tried while another process holds it.
const LOCK_POLL: Duration = Duration::from_millis(200);
/// How often waiting for it is logged.
const LOCK_LOG_EVERY: Duration = Duration::from_secs(10);
/// The migration connection's `application_name`, which a waiting process names.
const APPLICATION_NAME: &str = "gito-api migrate";

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS gito_schema_migrations (
    version      BIGINT      PRIMARY KEY,
    name         TEXT        NOT NULL,
    checksum     BYTEA       NOT NULL,
    applied_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    execution_ms BIGINT      NOT NULL,
    stamped      BOOLEAN     NOT NULL DEFAULT false
)";

/// A row of `gito_schema_migrations`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub checksum: Vec<u8>,
    pub applied_at: OffsetDateTime,
    pub stamped: bool,
}

/// Where the database stands relative to a catalog.
#[derive(Debug)]
pub struct Status {
    pub applied: Vec<Applied>,
    pub pending: Vec<Migration>,
}

impl Status {
    pub fn current(&self) -> Option<&Applied> {
        self.applied.last()
    }
}

/// How far `down` goes.
#[derive(Debug, Clone, Copy)]
pub enum DownTarget {
    Steps(usize),
    /// Revert everything above this version (`None`: everything).
    To(Option<i64>),
}

/// Reads the state without taking the lock or creating anything.
pub async fn status(database_url: &str, catalog: &Catalog) -> Result<Status, MigrateError> {
    let mut conn = connect(database_url).await?;
    let result = read_status(&mut conn, catalog).await;
    close(conn).await;
    result
}

/// Applies pending migrations up to `target` (all when `None`); returns the ones it applied.
/// Waits for another process's lock at most `DEFAULT_LOCK_WAIT`.
pub async fn up(
    database_url: &str,
    catalog: &Catalog,
    target: Option<i64>,
) -> Result<Vec<Migration>, MigrateError> {
    up_waiting(database_url, catalog, target, DEFAULT_LOCK_WAIT).await
}

/// `up`, waiting for another process's lock at most `lock_wait`.
pub async fn up_waiting(
    database_url: &str,
    catalog: &Catalog,
    target: Option<i64>,
    lock_wait: Duration,
) -> Result<Vec<Migration>, MigrateError> {
    locked(database_url, lock_wait, async |conn| {
        let status = read_status(conn, catalog).await?;
        check_applied(&status, catalog)?;
        // Both lists are sorted: a pending migration below the newest applied one means two
        // branches were merged out of order, and applying it now would skip its place.
        if let (Some(newest), Some(oldest)) = (status.current(), status.pending.first())
            && oldest.version < newest.version
        {
            return Err(MigrateError::OutOfOrder {
                name: oldest.name.clone(),
                file: oldest.up_file(),
                newest: newest.name.clone(),
            });
        }
        let newest = status.current().map(|a| a.name.clone());
        let mut from = newest.unwrap_or_else(|| "base".to_owned());
        let mut done = Vec::new();
        for m in status
            .pending
            .into_iter()
            .filter(|m| target.is_none_or(|t| m.version <= t))
        {
            tracing::info!("Running upgrade {from} -> {}", m.name);
            apply_up(conn, &m).await?;
            from.clone_from(&m.name);
            done.push(m);
        }
        Ok(done)
    })
    .await
}

/// Reverts applied migrations, newest first; returns the ones it reverted.
pub async fn down(
    database_url: &str,
    catalog: &Catalog,
    target: DownTarget,
) -> Result<Vec<Migration>, MigrateError> {
    down_waiting(database_url, catalog, target, DEFAULT_LOCK_WAIT).await
}

/// `down`, waiting for another process's lock at most `lock_wait`.
pub async fn down_waiting(
    database_url: &str,
    catalog: &Catalog,
    target: DownTarget,
    lock_wait: Duration,
) -> Result<Vec<Migration>, MigrateError> {
    locked(database_url, lock_wait, async |conn| {
        let status = read_status(conn, catalog).await?;
        check_applied(&status, catalog)?;
        let to_revert: Vec<&Applied> = match target {
            DownTarget::Steps(n) => status.applied.iter().rev().take(n).collect(),
            DownTarget::To(v) => {
                let floor = v.unwrap_or(i64::MIN);
                status
                    .applied
                    .iter()
                    .rev()
                    .take_while(|a| a.version > floor)
                    .collect()
            }
        };
        let mut done = Vec::new();
        for applied in to_revert {
            let m = catalog
                .get(applied.version)
                .expect("checked by check_applied")
                .clone();
            let below = status
                .applied
                .iter()
                .rev()
                .find(|a| a.version < m.version)
                .map_or("base", |a| a.name.as_str());
            tracing::info!("Running downgrade {} -> {below}", m.name);
            apply_down(conn, &m).await?;
            done.push(m);
        }
        Ok(done)
    })
    .await
}

/// Records the database as being at `target` without running any SQL: migrations up to it are
/// marked applied, later ones unmarked. For a database repaired by hand.
pub async fn stamp(
    database_url: &str,
    catalog: &Catalog,
    target: Option<i64>,
) -> Result<(), MigrateError> {
    stamp_waiting(database_url, catalog, target, DEFAULT_LOCK_WAIT).await
}

/// `stamp`, waiting for another process's lock at most `lock_wait`.
pub async fn stamp_waiting(
    database_url: &str,
    catalog: &Catalog,
    target: Option<i64>,
    lock_wait: Duration,
) -> Result<(), MigrateError> {
    locked(database_url, lock_wait, async |conn| {
        let mut tx = conn.begin().await?;
        sqlx::query("DELETE FROM gito_schema_migrations WHERE version > $1")
            .bind(target.unwrap_or(i64::MIN))
            .execute(&mut *tx)
            .await?;
        for m in catalog
            .iter()
            .filter(|m| target.is_some_and(|t| m.version <= t))
        {
            sqlx::query(
                "INSERT INTO gito_schema_migrations (version, name, checksum, execution_ms, stamped)
                 VALUES ($1, $2, $3, 0, true) ON CONFLICT (version) DO NOTHING",
            )
            .bind(m.version)
            .bind(&m.name)
            .bind(&m.checksum)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// Runs `f` on a fresh connection holding the migration lock; always closes the connection.
async fn locked<T>(
    database_url: &str,
    lock_wait: Duration,
    f: impl AsyncFnOnce(&mut PgConnection) -> Result<T, MigrateError>,
) -> Result<T, MigrateError> {
    let mut conn = connect(database_url).await?;
    let result = async {
        lock(&mut conn, lock_wait).await?;
        sqlx::raw_sql(CREATE_TABLE).execute(&mut conn).await?;
        let result = f(&mut conn).await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut conn)
            .await?;
        result
    }
    .await;
    close(conn).await;
    result
}

async fn connect(database_url: &str) -> Result<PgConnection, MigrateError> {
    Ok(PgConnection::connect_with(&connect_options(database_url, APPLICATION_NAME)?).await?)
}

/// Takes the migration lock, polling while another process holds it (a blocking
/// `pg_advisory_lock` could wait forever, behind a holder that may never come back), for at most
/// `wait`; gives up naming the holder.
async fn lock(conn: &mut PgConnection, wait: Duration) -> Result<(), MigrateError> {
    let started = Instant::now();
    let mut logged: Option<Instant> = None;
    loop {
        let acquired = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_lock($1) AS "acquired!""#,
            LOCK_KEY
        )
        .fetch_one(&mut *conn)
        .await?;
        if acquired {
            if logged.is_some() {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis(),
                    "took the migration lock"
                );
            }
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(MigrateError::LockWait {
                waited: display_duration(wait),
                key: LOCK_KEY,
                holder: holder(conn).await?,
            });
        }
        if logged.is_none_or(|at| at.elapsed() >= LOCK_LOG_EVERY) {
            tracing::info!(
                holder = holder(conn).await?,
                waited_s = started.elapsed().as_secs(),
                gives_up_after = display_duration(wait),
                "another process holds the migration lock; waiting for it"
            );
            logged = Some(Instant::now());
        }
        tokio::time::sleep(LOCK_POLL.min(wait.saturating_sub(started.elapsed()))).await;
    }
}

/// Who holds the migration lock, in words: pid, application, client, since when, doing what.
async fn holder(conn: &mut PgConnection) -> Result<String, MigrateError> {
    // A bigint advisory key is stored as its high and low 32 bits (classid, objid), objsubid 1.
    let high = LOCK_KEY >> 32;
    let low = LOCK_KEY & 0xffff_ffff;
    let row = sqlx::query!(
        r#"SELECT a.pid AS "pid!", a.usename::text AS usename, a.application_name,
                  host(a.client_addr) AS client_addr, a.backend_start, a.state, a.state_change
           FROM pg_locks l
           JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.pid <> pg_backend_pid()
           LIMIT 1"#,
        high,
        low
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(
            "a session that has just released it, or one this database user cannot see".to_owned(),
        );
    };
    let at = |t: Option<OffsetDateTime>| {
        t.and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "?".to_owned())
    };
    let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
    Ok(format!(
        "pid {} (application_name {:?}, user {}, client {}, connected at {}, state {:?} since {})",
        row.pid,
        or_unknown(row.application_name),
        or_unknown(row.usename),
        row.client_addr.unwrap_or_else(|| "local socket".to_owned()),
        at(row.backend_start),
        or_unknown(row.state),
        at(row.state_change),
    ))
}

/// `300ms`, `30s`, `5m`, `1h`: as GITO_MIGRATION_ADVISORY_LOCK_WAIT is written.
fn display_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 || secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

async fn close(conn: PgConnection) {
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the migration connection failed");
    }
}

async fn read_status(conn: &mut PgConnection, catalog: &Catalog) -> Result<Status, MigrateError> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('gito_schema_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    let applied: Vec<Applied> = if exists {
        sqlx::query_as(
            "SELECT version, name, checksum, applied_at, stamped
             FROM gito_schema_migrations ORDER BY version",
        )
        .fetch_all(&mut *conn)
        .await?
    } else {
        Vec::new()
    };
    let pending = catalog
        .iter()
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .cloned()
        .collect();
    Ok(Status { applied, pending })
}

/// Every applied migration must be known to this binary and unchanged since it ran.
fn check_applied(status: &Status, catalog: &Catalog) -> Result<(), MigrateError> {
    for a in &status.applied {
        match catalog.get(a.version) {
            None => {
                return Err(MigrateError::UnknownApplied {
                    name: a.name.clone(),
                });
            }
            Some(m) if m.checksum != a.checksum => {
                return Err(MigrateError::Modified {
                    name: m.name.clone(),
                    file: m.up_file(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

async fn apply_up(conn: &mut PgConnection, m: &Migration) -> Result<(), MigrateError> {
    let failed = |e: sqlx::Error| failure(m, m.up_file(), e);
    let started = Instant::now();
    // A `-- no-transaction` migration (e.g. CREATE INDEX CONCURRENTLY) runs on its own; its
    // bookkeeping row still commits only after it succeeded.
    let mut tx = if m.no_tx {
        sqlx::raw_sql(m.up.clone())
            .execute(&mut *conn)
            .await
            .map_err(failed)?;
        conn.begin().await?
    } else {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(m.up.clone())
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tx
    };
    let elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO gito_schema_migrations (version, name, checksum, execution_ms)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(m.version)
    .bind(&m.name)
    .bind(&m.checksum)
    .bind(elapsed_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn apply_down(conn: &mut PgConnection, m: &Migration) -> Result<(), MigrateError> {
    let Some(sql) = &m.down else {
        return Err(MigrateError::Irreversible {
            name: m.name.clone(),
            file: m.down_file(),
        });
    };
    let mut tx = conn.begin().await?;
    sqlx::raw_sql(sql.clone())
        .execute(&mut *tx)
        .await
        .map_err(|e| failure(m, m.down_file(), e))?;
    sqlx::query("DELETE FROM gito_schema_migrations WHERE version = $1")
        .bind(m.version)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Turns a failed statement into one line: PostgreSQL's message, and its hint when it has one.
fn failure(m: &Migration, file: String, error: sqlx::Error) -> MigrateError {
    let reason = match error.as_database_error() {
        Some(db) => {
            let hint = db
                .try_downcast_ref::<PgDatabaseError>()
                .and_then(PgDatabaseError::hint);
            match hint {
                Some(hint) => format!("{} (hint: {hint})", db.message()),
                None => db.message().to_owned(),
            }
        }
        None => error.to_string(),
    };
    MigrateError::Failed {
        name: m.name.clone(),
        file,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_shown_as_they_are_configured() {
        assert_eq!(display_duration(Duration::from_secs(300)), "5m");
        assert_eq!(display_duration(Duration::from_secs(90)), "90s");
        assert_eq!(display_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(display_duration(Duration::from_millis(1500)), "1500ms");
    }
}
