//! Why storing failed, and what that means for the messages: a failure of the database or of the
//! way to it (retry the same messages later, they are fine) or one that their data causes
//! (retrying them as they are can never succeed: isolate and dead-letter them).

use sqlx::error::ErrorKind;

pub use crate::db_error::is_transient;

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
