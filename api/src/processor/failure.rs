//! Why storing failed, and what that means for the messages: a failure of the database or of the
//! way to it (retry the same messages later, they are fine) or one that their data causes
//! (retrying them as they are can never succeed: isolate and dead-letter them).

use sqlx::error::ErrorKind;

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

/// A row referred to something that does not exist (a device deleted since it was looked up).
pub fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| matches!(e.kind(), ErrorKind::ForeignKeyViolation))
}

/// The error as one line for a dead letter: the server's message and SQLSTATE, or sqlx's text.
pub fn describe(error: &sqlx::Error) -> String {
    match error.as_database_error() {
        Some(e) => match (e.code(), e.constraint()) {
            (Some(code), Some(constraint)) => {
                format!("{} (SQLSTATE {code}, constraint {constraint})", e.message())
            }
            (Some(code), None) => format!("{} (SQLSTATE {code})", e.message()),
            _ => e.message().to_owned(),
        },
        None => error.to_string(),
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
