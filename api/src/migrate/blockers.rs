//! Who a migration waits for. A statement cancelled by `lock_timeout` no longer waits for
//! anyone, so the sessions blocking it are watched, from a connection of their own, while it runs
//! (`pg_blocking_pids` joined with `pg_stat_activity`), and the last ones seen are named.

use std::time::Duration;

use sqlx::{Connection as _, PgConnection};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::MigrateError;
use super::runner::close;
use crate::config::connect_options;

/// Watches, on a connection of its own, which sessions block the migration connection, so that a
/// statement cancelled by `lock_timeout` can name them (once cancelled, nothing blocks it any more).
pub(super) struct Blockers {
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: Option<(
        tokio::task::JoinHandle<()>,
        tokio_util::sync::CancellationToken,
    )>,
}

impl Blockers {
    pub(super) async fn watch(
        conn: &mut PgConnection,
        database_url: &str,
        lock_timeout: Duration,
    ) -> Result<Blockers, MigrateError> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if lock_timeout.is_zero() {
            return Ok(Blockers { seen, task: None });
        }
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await?;
        // Without a spare connection the migration still runs; a lock timeout then names no one.
        let watcher = PgConnection::connect_with(&connect_options(
            database_url,
            "gito-api migrate (lock watch)",
        )?)
        .await;
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for lock blockers; a lock timeout will not name them");
                return Ok(Blockers { seen, task: None });
            }
        };
        let every = (lock_timeout / 4).clamp(Duration::from_millis(20), Duration::from_millis(500));
        let stop = tokio_util::sync::CancellationToken::new();
        let sink = seen.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(found) = blocking(&mut watcher, pid).await
                    && !found.is_empty()
                {
                    *sink.lock().expect("blockers lock") = found;
                }
                tokio::select! {
                    () = stopped.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
            }
            close(watcher).await;
        });
        Ok(Blockers {
            seen,
            task: Some((task, stop)),
        })
    }

    pub(super) fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("blockers lock").clone()
    }

    pub(super) async fn stop(self) {
        if let Some((task, stop)) = self.task {
            stop.cancel();
            let _ = task.await;
        }
    }
}

/// The sessions `pid` waits for, in words: pid, application, client, open since, doing what.
async fn blocking(conn: &mut PgConnection, pid: i32) -> Result<Vec<String>, sqlx::Error> {
    type Row = (
        i32,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<OffsetDateTime>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT a.pid, a.application_name, a.usename::text, host(a.client_addr),
                coalesce(a.xact_start, a.backend_start), a.state, left(a.query, 120)
         FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids($1)) ORDER BY a.pid",
    )
    .bind(pid)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(pid, app, user, client, since, state, query)| {
            let or = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
            format!(
                "pid {pid} (application_name {:?}, user {}, client {}, since {}, state {:?}, last query {:?})",
                or(app),
                or(user),
                client.unwrap_or_else(|| "local socket".to_owned()),
                since
                    .and_then(|t| t.format(&Rfc3339).ok())
                    .unwrap_or_else(|| "?".to_owned()),
                or(state),
                or(query),
            )
        })
        .collect())
}
