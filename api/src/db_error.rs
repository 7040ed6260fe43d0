//! Database errors as an operator reads them. sqlx's own `Display` repeats the cause through its
//! source chain and appends PostgreSQL's *source-code* line ("at line 948"), which means nothing
//! to anyone; here each cause is said once, with PostgreSQL's hint, and with what to do for the
//! mistakes operators actually make (a database that does not exist, a wrong user or password,
//! a server that is not there). `is_transient` tells which failures may go away by themselves
//! (the processor retries them, a request answers 503); `DbError::is_transient`, narrower, which
//! ones boot keeps trying to connect through.

use std::fmt;

use sqlx::postgres::PgDatabaseError;

/// A database error, displayed once and plainly. It has no `source`: its message says it all.
#[derive(Debug)]
pub struct DbError(pub sqlx::Error);

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        DbError(e)
    }
}

impl std::error::Error for DbError {}

/// SQLSTATEs (PostgreSQL appendix A) and what to do about them.
const INVALID_CATALOG_NAME: &str = "3D000";
const INVALID_AUTHORIZATION: &str = "28000";
const INVALID_PASSWORD: &str = "28P01";
const CANNOT_CONNECT_NOW: &str = "57P03";
const TOO_MANY_CONNECTIONS: &str = "53300";

impl DbError {
    /// Worth retrying: the server is not (yet) reachable, starting up, or full. A missing
    /// database, a refused login or a failed statement will fail the same way again.
    pub fn is_transient(&self) -> bool {
        match &self.0 {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => matches!(
                db.code().as_deref(),
                Some(CANNOT_CONNECT_NOW | TOO_MANY_CONNECTIONS)
            ),
            _ => false,
        }
    }
}

/// True for connectivity and capacity problems, told apart by SQLSTATE class: `08` connection,
/// `53` insufficient resources, `57P` server shutting down or starting, `58` system (I/O), and
/// `40` transaction rollback (a deadlock or serialization failure between concurrent writers,
/// which a retry resolves); and for errors on the way to the server (I/O, TLS, protocol, the
/// pool). Anything else is taken as caused by the data.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| transient_sqlstate(&code)),
        _ => false,
    }
}

fn transient_sqlstate(code: &str) -> bool {
    ["08", "53", "57P", "58", "40"]
        .iter()
        .any(|class| code.starts_with(class))
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            sqlx::Error::Database(db) => {
                f.write_str(db.message())?;
                let pg = db.try_downcast_ref::<PgDatabaseError>();
                if let Some(detail) = pg.and_then(PgDatabaseError::detail) {
                    write!(f, " ({detail})")?;
                }
                match db.code().as_deref() {
                    Some(INVALID_CATALOG_NAME) => {
                        f.write_str(" — create it (`createdb NAME`), or set DATABASE_URL")
                    }
                    Some(INVALID_AUTHORIZATION | INVALID_PASSWORD) => {
                        f.write_str(" — check the user and password in DATABASE_URL")
                    }
                    Some(CANNOT_CONNECT_NOW) => f.write_str(" — PostgreSQL is starting up"),
                    _ => match pg.and_then(PgDatabaseError::hint) {
                        Some(hint) => write!(f, " (hint: {hint})"),
                        None => Ok(()),
                    },
                }
            }
            sqlx::Error::Io(e) => write!(
                f,
                "cannot reach PostgreSQL: {e} — is it running, and are the host and port in DATABASE_URL right?"
            ),
            sqlx::Error::PoolTimedOut => f.write_str(
                "timed out waiting for a database connection — is PostgreSQL overloaded or unreachable?",
            ),
            other => write!(f, "{other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connectivity_classes_are_transient_and_data_classes_are_not() {
        for code in [
            "08006", "53100", "57P01", "57P03", "58030", "40001", "40P01",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in [
            "23503", "23514", "22001", "54000", "57014", "42601", "XX000",
        ] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
