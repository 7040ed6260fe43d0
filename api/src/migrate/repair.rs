//! `gito-api migrate repair`: the seed's "partially applied" case. Only a `-- gito: no-transaction`
//! migration can stop half-way (a transactional one rolls back as a whole); the runner records
//! how many of its statements ran. `repair` shows that, and what of each statement's object
//! exists, and does only what the operator chose: `--roll-forward` runs the statements that did
//! not run (dropping first an INVALID index its failed `CREATE INDEX CONCURRENTLY` left behind,
//! which is exactly what PostgreSQL documents for that case), `--stamp` records the migration as
//! applied as it stands (after finishing it by hand).

use std::fmt::Write as _;

use sqlx::PgConnection;

use super::sql::Statement;
use super::{Catalog, MigrateError, Migration, RunOptions, runner};

/// What the operator chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Show,
    RollForward,
    Stamp,
}

/// Shows every partly applied migration, or carries out `action` on it.
pub async fn repair(
    database_url: &str,
    catalog: &Catalog,
    action: Action,
    options: &RunOptions,
) -> Result<String, MigrateError> {
    runner::locked(database_url, options.lock_wait, async |conn| {
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT version FROM gito_schema_migrations_partial ORDER BY version")
                .fetch_all(&mut *conn)
                .await?;
        let Some((version,)) = rows.first().copied() else {
            return Ok("nothing to repair: no migration is partly applied".to_owned());
        };
        let partial = runner::partial(conn, version)
            .await?
            .expect("the row was just read");
        let Some(m) = catalog.get(version) else {
            return Err(MigrateError::UnknownApplied { name: partial.name });
        };
        let statements = super::sql::parse(m.up_sql()).statements;
        let done = usize::try_from(partial.done).unwrap_or(0);
        let mut out = describe(conn, m, &partial, &statements).await?;
        match action {
            Action::Show => {
                let _ = write!(
                    out,
                    "choose one:\n  gito-api migrate repair --roll-forward   run statement(s) {}..{} now\n  \
                     gito-api migrate repair --stamp          record {} as applied as it stands (only after finishing it by hand)",
                    done + 1,
                    statements.len(),
                    m.name
                );
            }
            Action::RollForward => {
                if let Some(index) = statements.get(done).and_then(concurrent_index)
                    && index_state(conn, &index).await? == Some(false)
                {
                    tracing::info!(index, "dropping the INVALID index a failed CREATE INDEX CONCURRENTLY left");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP INDEX CONCURRENTLY IF EXISTS {index}"
                    )))
                    .execute(&mut *conn)
                    .await?;
                    let _ = writeln!(out, "dropped INVALID index {index}");
                }
                tracing::info!("Running upgrade (roll forward) -> {}", m.name);
                runner::apply_up(conn, database_url, m, options, done).await?;
                let _ = write!(out, "rolled forward: {} applied", m.name);
            }
            Action::Stamp => {
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                sqlx::query(
                    "INSERT INTO gito_schema_migrations (version, name, checksum, execution_ms, stamped, no_transaction)
                     VALUES ($1, $2, $3, 0, true, true)",
                )
                .bind(m.version)
                .bind(&m.name)
                .bind(m.checksum())
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM gito_schema_migrations_partial WHERE version = $1")
                    .bind(m.version)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                tracing::warn!("stamped {} as applied without running its remaining SQL", m.name);
                let _ = write!(out, "stamped {} (its remaining statements were not run)", m.name);
            }
        }
        Ok(out)
    })
    .await
}

async fn describe(
    conn: &mut PgConnection,
    m: &Migration,
    partial: &runner::Partial,
    statements: &[Statement],
) -> Result<String, MigrateError> {
    let done = usize::try_from(partial.done).unwrap_or(0);
    let mut out = format!(
        "migration {} ({}) is partly applied: {} of {} statement(s) ran",
        m.name,
        m.up_file(),
        done,
        statements.len()
    );
    match &partial.error {
        Some(e) => {
            let _ = writeln!(out, ", then statement {} failed: {e}", done + 1);
        }
        None => out.push_str(" (the process stopped before it finished)\n"),
    }
    if partial.checksum != m.checksum() {
        out.push_str("note: the file changed since it failed; statements are counted in the file as it is now\n");
    }
    for (i, st) in statements.iter().enumerate() {
        let state = match i.cmp(&done) {
            std::cmp::Ordering::Less => "ran",
            std::cmp::Ordering::Equal if partial.error.is_some() => "failed",
            _ => "not run",
        };
        let first_line = st.text.lines().next().unwrap_or_default();
        let _ = writeln!(
            out,
            "  statement {} (line {}) {state}: {first_line}",
            i + 1,
            st.line
        );
        if let Some(index) = created_index_name(st) {
            let exists = match index_state(conn, &index).await? {
                None => "does not exist".to_owned(),
                Some(true) => "exists and is valid".to_owned(),
                Some(false) => {
                    "exists but is INVALID (a failed CONCURRENTLY build): --roll-forward drops it first".to_owned()
                }
            };
            let _ = writeln!(out, "      index {index} {exists}");
        }
    }
    Ok(out)
}

/// The name of the index a `CREATE [UNIQUE] INDEX [CONCURRENTLY] [IF NOT EXISTS] name` creates.
fn created_index_name(st: &Statement) -> Option<String> {
    let t = &st.tokens;
    if !t.first()?.is("create") {
        return None;
    }
    let mut i = 1;
    for w in ["unique", "index", "concurrently", "if", "not", "exists"] {
        if t.get(i).is_some_and(|x| x.is(w)) {
            i += 1;
        } else if w == "index" {
            return None;
        }
    }
    let name = t.get(i)?;
    (!name.is("on")).then(|| name.text.clone())
}

fn concurrent_index(st: &Statement) -> Option<String> {
    st.tokens
        .iter()
        .any(|t| t.is("concurrently"))
        .then(|| created_index_name(st))
        .flatten()
}

/// `None`: no such index; `Some(valid)`.
async fn index_state(conn: &mut PgConnection, name: &str) -> Result<Option<bool>, MigrateError> {
    Ok(sqlx::query_scalar(
        "SELECT x.indisvalid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
         WHERE i.relname = $1 AND i.relnamespace = 'public'::regnamespace",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?)
}
