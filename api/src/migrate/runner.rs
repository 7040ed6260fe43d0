//! Applies and reverts migrations against PostgreSQL.
//!
//! Every command that writes runs on one dedicated connection under a session advisory lock, so
//! replicas booting together apply each migration exactly once; the connection is closed when
//! the command ends, also on error, so the lock can never leak into a pool. Each migration runs
//! in its own transaction together with its bookkeeping row. Waiting for another process's lock
//! is bounded, and giving up names that process (`pg_locks` joined with `pg_stat_activity`).
//! Every migration runs with `lock_timeout` and `statement_timeout`; a statement cancelled by its
//! lock timeout names the sessions it waited for (`pg_blocking_pids`).

use std::time::{Duration, Instant};

use sqlx::postgres::PgDatabaseError;
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::blockers::Blockers;
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
/// How long one migration statement may wait for a table lock unless told otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one migration statement may run unless told otherwise.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);
/// A transactional migration that PostgreSQL aborts as a deadlock's victim (40P01) is run again
/// this many times at most. It locks what running replicas use (a partition's index, a rollup
/// table) and may take those locks in another order than their statements do; its transaction
/// rolled back whole, so running it again is safe. A no-transaction migration is not retried.
const DEADLOCK_RETRIES: u32 = 3;

/// The bounds every migration runs within; a migration's `-- gito:` header overrides the two
/// timeouts (zero: none).
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// How long to wait for another process's advisory (migration) lock.
    pub lock_wait: Duration,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            lock_wait: DEFAULT_LOCK_WAIT,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS gito_schema_migrations (
    version      BIGINT      PRIMARY KEY,
    name         TEXT        NOT NULL,
    checksum     BYTEA       NOT NULL,
    applied_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    execution_ms BIGINT      NOT NULL,
    stamped      BOOLEAN     NOT NULL DEFAULT false
);
ALTER TABLE gito_schema_migrations
    ADD COLUMN IF NOT EXISTS no_transaction BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS gito_schema_migrations_partial (
    version    BIGINT      PRIMARY KEY,
    name       TEXT        NOT NULL,
    checksum   BYTEA       NOT NULL,
    statements INTEGER     NOT NULL,
    done       INTEGER     NOT NULL,
    error      TEXT,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now()
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
    let options = RunOptions {
        lock_wait,
        ..RunOptions::default()
    };
    up_with(database_url, catalog, target, &options).await
}

/// `up` within `options`' bounds.
pub async fn up_with(
    database_url: &str,
    catalog: &Catalog,
    target: Option<i64>,
    options: &RunOptions,
) -> Result<Vec<Migration>, MigrateError> {
    up_logged(database_url, catalog, target, options, true).await
}

/// `up`; `log: false` for a scratch replay (`check`), whose "Running upgrade" lines would read
/// as the real database being migrated.
pub(super) async fn up_logged(
    database_url: &str,
    catalog: &Catalog,
    target: Option<i64>,
    options: &RunOptions,
    log: bool,
) -> Result<Vec<Migration>, MigrateError> {
    locked(database_url, options.lock_wait, async |conn| {
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
            if let Some(partial) = partial(conn, m.version).await? {
                return Err(MigrateError::Partial {
                    name: m.name.clone(),
                    file: m.up_file(),
                    done: partial.done,
                    total: partial.statements,
                });
            }
            if log {
                tracing::info!("Running upgrade {from} -> {}", m.name);
            }
            apply_up(conn, database_url, &m, options, 0).await?;
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
    let options = RunOptions {
        lock_wait,
        ..RunOptions::default()
    };
    down_with(database_url, catalog, target, &options).await
}

/// `down` within `options`' bounds.
pub async fn down_with(
    database_url: &str,
    catalog: &Catalog,
    target: DownTarget,
    options: &RunOptions,
) -> Result<Vec<Migration>, MigrateError> {
    locked(database_url, options.lock_wait, async |conn| {
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
            apply_down(conn, database_url, &m, options).await?;
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
        // Stamping past a partly applied migration is the operator saying it is complete.
        sqlx::query("DELETE FROM gito_schema_migrations_partial WHERE version <= $1")
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
pub(super) async fn locked<T>(
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

/// `connect`, without sqlx's "slow statement" warnings (`check`'s CREATE/DROP DATABASE are slow
/// by nature; the warning would read as a problem).
pub(super) async fn connect_quiet(database_url: &str) -> Result<PgConnection, MigrateError> {
    use sqlx::ConnectOptions as _;
    let options = connect_options(database_url, APPLICATION_NAME)?.disable_statement_logging();
    Ok(PgConnection::connect_with(&options).await?)
}

pub(super) async fn connect(database_url: &str) -> Result<PgConnection, MigrateError> {
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
            let holder = holder(conn).await?;
            tracing::info!(
                holder,
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

pub(super) async fn close(conn: PgConnection) {
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

/// A `-- gito: no-transaction` migration that failed part-way, as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Partial {
    pub version: i64,
    pub name: String,
    pub checksum: Vec<u8>,
    pub statements: i32,
    pub done: i32,
    pub error: Option<String>,
}

pub(super) async fn partial(
    conn: &mut PgConnection,
    version: i64,
) -> Result<Option<Partial>, MigrateError> {
    Ok(sqlx::query_as(
        "SELECT version, name, checksum, statements, done, error
         FROM gito_schema_migrations_partial WHERE version = $1",
    )
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Sets the session's lock and statement timeouts for one migration (its header wins).
async fn bound(
    conn: &mut PgConnection,
    m: &Migration,
    options: &RunOptions,
) -> Result<(Duration, Duration), MigrateError> {
    let lock_timeout = m.lock_timeout.unwrap_or(options.lock_timeout);
    let statement_timeout = m.statement_timeout.unwrap_or(options.statement_timeout);
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $2, false)",
    )
    .bind(format!("{}ms", lock_timeout.as_millis()))
    .bind(format!("{}ms", statement_timeout.as_millis()))
    .execute(&mut *conn)
    .await?;
    Ok((lock_timeout, statement_timeout))
}

/// Applies `m` from statement `from` on (0: all of it). A transactional migration runs in one
/// transaction with its bookkeeping row; a no-transaction one statement by statement, its
/// progress recorded in `gito_schema_migrations_partial` so that `repair` can tell what ran.
pub(super) async fn apply_up(
    conn: &mut PgConnection,
    database_url: &str,
    m: &Migration,
    options: &RunOptions,
    from: usize,
) -> Result<(), MigrateError> {
    let timeouts = bound(conn, m, options).await?;
    let watch = Blockers::watch(conn, database_url, timeouts.0).await?;
    let failed =
        |e: sqlx::Error, watch: &Blockers| failure(m, m.up_file(), e, timeouts, &watch.seen());
    let started = Instant::now();
    let mut tx = if m.no_tx {
        let statements = super::sql::parse(m.up.as_str()).statements;
        let total = i32::try_from(statements.len()).unwrap_or(i32::MAX);
        sqlx::query(
            "INSERT INTO gito_schema_migrations_partial (version, name, checksum, statements, done)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (version) DO UPDATE SET checksum = $3, statements = $4, error = NULL",
        )
        .bind(m.version)
        .bind(&m.name)
        .bind(&m.checksum)
        .bind(total)
        .bind(i32::try_from(from).unwrap_or(i32::MAX))
        .execute(&mut *conn)
        .await?;
        for (i, statement) in statements.iter().enumerate().skip(from) {
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.text.clone()))
                .execute(&mut *conn)
                .await
            {
                let error = failed(e, &watch);
                sqlx::query(
                    "UPDATE gito_schema_migrations_partial SET error = $2 WHERE version = $1",
                )
                .bind(m.version)
                .bind(error.to_string())
                .execute(&mut *conn)
                .await?;
                watch.stop().await;
                return Err(match error {
                    MigrateError::Failed { name, file, reason } => MigrateError::Failed {
                        name,
                        file,
                        reason: format!(
                            "{reason} (statement {} of {total}, line {}; the {i} before it stay applied: \
                             see `gito-api migrate repair`)",
                            i + 1,
                            statement.line
                        ),
                    },
                    other => other,
                });
            }
            sqlx::query("UPDATE gito_schema_migrations_partial SET done = $2 WHERE version = $1")
                .bind(m.version)
                .bind(i32::try_from(i + 1).unwrap_or(i32::MAX))
                .execute(&mut *conn)
                .await?;
        }
        let mut tx = conn.begin().await?;
        sqlx::query("DELETE FROM gito_schema_migrations_partial WHERE version = $1")
            .bind(m.version)
            .execute(&mut *tx)
            .await?;
        tx
    } else {
        let mut attempt = 0;
        loop {
            let mut tx = conn.begin().await?;
            match sqlx::raw_sql(m.up.clone()).execute(&mut *tx).await {
                Ok(_) => break tx,
                Err(e) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {
                    attempt += 1;
                    tx.rollback().await?;
                    deadlocked(m, attempt).await;
                }
                Err(e) => {
                    let error = failed(e, &watch);
                    watch.stop().await;
                    return Err(error);
                }
            }
        }
    };
    watch.stop().await;
    let elapsed_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO gito_schema_migrations (version, name, checksum, execution_ms, no_transaction)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(m.version)
    .bind(&m.name)
    .bind(&m.checksum)
    .bind(elapsed_ms)
    .bind(m.no_tx)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn apply_down(
    conn: &mut PgConnection,
    database_url: &str,
    m: &Migration,
    options: &RunOptions,
) -> Result<(), MigrateError> {
    let Some(sql) = &m.down else {
        return Err(MigrateError::Irreversible {
            name: m.name.clone(),
            file: m.down_file(),
        });
    };
    let timeouts = bound(conn, m, options).await?;
    let watch = Blockers::watch(conn, database_url, timeouts.0).await?;
    // A down file headed `-- gito: no-transaction` (e.g. DROP INDEX CONCURRENTLY) runs statement
    // by statement; reverting is re-runnable by writing it with IF EXISTS.
    let no_tx = sql.as_str().starts_with("-- no-transaction")
        || super::Header::parse(sql.as_str()).is_ok_and(|h| h.no_transaction);
    let result = if no_tx {
        let mut result = Ok(());
        for statement in super::sql::parse(sql.as_str()).statements {
            result = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.text))
                .execute(&mut *conn)
                .await
                .map(drop);
            if result.is_err() {
                break;
            }
        }
        result
    } else {
        Ok(())
    };
    let mut tx = conn.begin().await?;
    let result = if no_tx {
        result
    } else {
        let mut attempt = 0;
        loop {
            match sqlx::raw_sql(sql.clone()).execute(&mut *tx).await {
                Err(e) if is_deadlock(&e) && attempt < DEADLOCK_RETRIES => {
                    attempt += 1;
                    tx.rollback().await?;
                    deadlocked(m, attempt).await;
                    tx = conn.begin().await?;
                }
                other => break other.map(drop),
            }
        }
    };
    let blockers = watch.seen();
    watch.stop().await;
    result.map_err(|e| failure(m, m.down_file(), e, timeouts, &blockers))?;
    sqlx::query("DELETE FROM gito_schema_migrations WHERE version = $1")
        .bind(m.version)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

fn is_deadlock(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "40P01")
}

/// Logs a deadlock a migration lost, and pauses before it runs again (`DEADLOCK_RETRIES`).
async fn deadlocked(m: &Migration, attempt: u32) {
    tracing::warn!(
        migration = %m.name,
        attempt,
        "PostgreSQL aborted the migration as a deadlock's victim (it locks what running replicas use, in another order); running it again"
    );
    tokio::time::sleep(Duration::from_millis(250) * attempt).await;
}

/// Turns a failed statement into one line: PostgreSQL's message, and its hint when it has one;
/// a timeout says which and, for a lock, who held it.
fn failure(
    m: &Migration,
    file: String,
    error: sqlx::Error,
    (lock_timeout, statement_timeout): (Duration, Duration),
    blockers: &[String],
) -> MigrateError {
    let reason = match error.as_database_error() {
        Some(db) => {
            let pg = db.try_downcast_ref::<PgDatabaseError>();
            let hint = pg.and_then(PgDatabaseError::hint);
            let code = db.code().unwrap_or_default();
            let mut reason = match hint {
                Some(hint) => format!("{} (hint: {hint})", db.message()),
                None => db.message().to_owned(),
            };
            if code == "55P03" && db.message().contains("lock timeout") {
                let who = if blockers.is_empty() {
                    "a session that released its lock before it could be named".to_owned()
                } else {
                    blockers.join("; ")
                };
                reason = format!(
                    "{reason}: waited lock_timeout {} for a lock held by {who}; let it finish or end it \
                     (SELECT pg_terminate_backend(pid)), then retry, or raise GITO_MIGRATION_LOCK_TIMEOUT \
                     or the migration's `-- gito: lock_timeout=...` header",
                    display_duration(lock_timeout)
                );
            } else if code == "57014" && db.message().contains("statement timeout") {
                reason = format!(
                    "{reason}: ran longer than statement_timeout {}; raise GITO_MIGRATION_STATEMENT_TIMEOUT \
                     or the migration's `-- gito: statement_timeout=...` header",
                    display_duration(statement_timeout)
                );
            }
            reason
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
