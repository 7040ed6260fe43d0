//! `gito-api migrate check`: does the live schema still match what its applied migrations
//! produce? The migrations are replayed into a scratch database (created next to the live one,
//! dropped after), both are read from the catalogs (`pg_catalog`), and every difference is printed
//! as a line with the SQL that brings the database back, plus the SQL that would record the
//! change in a new migration instead. Run at boot too (GITO_MIGRATION_DRIFT), so a hand edit in
//! production is loud.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sqlx::{Connection as _, PgConnection};

use super::{Catalog, MigrateError, RunOptions, runner};

/// What boot does with drift: log it (`warn`, the default), refuse to start, or not look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DriftMode {
    #[default]
    Warn,
    Refuse,
    Off,
}

/// The outcome of a check.
#[derive(Debug)]
pub struct Report {
    /// The newest applied migration the database was compared with (`base`: none).
    pub at: String,
    /// `kind name: what → fixing SQL`, one per difference.
    pub lines: Vec<String>,
    /// The SQL that would record the database's state in a new migration instead.
    pub keep: Vec<String>,
}

impl Report {
    pub fn in_sync(&self) -> bool {
        self.lines.is_empty()
    }

    /// What `migrate check` prints.
    pub fn render(&self) -> String {
        if self.in_sync() {
            return format!(
                "in sync: the database matches what migrations up to {} produce",
                self.at
            );
        }
        let mut out = format!(
            "drift: {} difference(s) between the database and what migrations up to {} produce \
             (→ the SQL that brings the database back):\n",
            self.lines.len(),
            self.at
        );
        for line in &self.lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "or keep the database as it is: record the change in a new migration \
             (`gito-api migrate new NAME`) holding:"
        );
        for sql in &self.keep {
            let _ = writeln!(out, "  {sql}");
        }
        out.trim_end().to_owned()
    }
}

/// Compares the database at `database_url` with a replay of its applied migrations.
pub async fn check(
    database_url: &str,
    catalog: &Catalog,
    options: &RunOptions,
) -> Result<Report, MigrateError> {
    check_once(database_url, catalog, options, false)
        .await
        .map(|r| r.expect("waits for no one"))
}

/// Taken while a check runs, so replicas booting together check once, not once each.
const CHECK_LOCK_KEY: i64 = 0x0067_6974_6f63_686b; // "gitochk"

/// `check`, or `None` at once when `skip_if_busy` and another process is checking right now.
pub async fn check_once(
    database_url: &str,
    catalog: &Catalog,
    options: &RunOptions,
    skip_if_busy: bool,
) -> Result<Option<Report>, MigrateError> {
    let status = runner::status(database_url, catalog).await?;
    for a in &status.applied {
        match catalog.get(a.version) {
            None => {
                return Err(MigrateError::UnknownApplied {
                    name: a.name.clone(),
                });
            }
            Some(m) if m.checksum() != a.checksum.as_slice() => {
                return Err(MigrateError::Modified {
                    name: m.name.clone(),
                    file: m.up_file(),
                });
            }
            Some(_) => {}
        }
    }
    let at = status.current().map(|a| (a.version, a.name.clone()));
    let mut live = runner::connect_quiet(database_url).await?;
    if skip_if_busy {
        let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(CHECK_LOCK_KEY)
            .fetch_one(&mut live)
            .await?;
        if !mine {
            runner::close(live).await;
            return Ok(None);
        }
    }
    // Named after the live database (so an operator, and a test, can tell whose it was) and the
    // pid of the connection that lives as long as the check: a scratch database whose pid is gone
    // belongs to a check that was killed, and is dropped by the next one.
    let (live_name, pid): (String, i32) =
        sqlx::query_as("SELECT current_database()::text, pg_backend_pid()")
            .fetch_one(&mut live)
            .await?;
    drop_abandoned(&mut live).await;
    let live_name: String = live_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(42)
        .collect::<String>()
        .to_lowercase();
    let scratch = format!("gito_check_{live_name}_{pid}");
    let created = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {scratch}")))
        .execute(&mut live)
        .await;
    if let Err(e) = created {
        runner::close(live).await;
        return Err(MigrateError::Check(format!(
            "cannot create the scratch database to replay the migrations into (CREATE DATABASE needs the CREATEDB privilege): {e}"
        )));
    }
    let replayed = async {
        let scratch_url = with_database(database_url, &scratch);
        if let Some((version, _)) = at {
            runner::up_logged(&scratch_url, catalog, Some(version), options, false).await?;
        }
        let mut conn = runner::connect(&scratch_url).await?;
        let expected = snapshot(&mut conn).await;
        runner::close(conn).await;
        expected
    }
    .await;
    let actual = snapshot(&mut live).await;
    let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"
    )))
    .execute(&mut live)
    .await;
    if let Err(e) = dropped {
        tracing::warn!(error = %e, database = scratch, "could not drop the scratch database");
    }
    let _ = live.close().await;
    let (expected, actual) = (replayed?, actual?);
    Ok(Some(Report {
        at: at.map_or_else(|| "base".to_owned(), |(_, name)| name),
        lines: diff(
            &actual,
            &expected,
            "in database, not in migrations",
            "in migrations, not in database",
        )
        .into_iter()
        .map(|(what, sql)| format!("{what} → {sql}"))
        .collect(),
        keep: diff(&expected, &actual, "", "")
            .into_iter()
            .map(|(_, sql)| sql)
            .collect(),
    }))
}

/// Drops the scratch databases of checks that were killed (their pid no longer runs). One this
/// role may not drop is left alone.
async fn drop_abandoned(live: &mut PgConnection) {
    let abandoned: Vec<String> = sqlx::query_scalar(
        r"SELECT datname::text FROM pg_database
          WHERE datname LIKE 'gito\_check\_%'
            AND substring(datname from '_([0-9]{1,9})$')::int NOT IN (SELECT pid FROM pg_stat_activity)",
    )
    .fetch_all(&mut *live)
    .await
    .unwrap_or_default();
    for name in abandoned {
        let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut *live)
        .await;
        match dropped {
            Ok(_) => tracing::info!(
                database = name,
                "dropped the scratch database of a check that was killed"
            ),
            Err(e) => {
                tracing::debug!(database = name, error = %e, "cannot drop an abandoned scratch database")
            }
        }
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    data_type: String,
    not_null: bool,
    default: Option<String>,
}

/// Everything about the `public` schema a migration can change, minus gito's bookkeeping.
#[derive(Debug, Default)]
struct Snapshot {
    tables: BTreeMap<String, BTreeMap<String, Column>>,
    /// (table, name) → definition, for constraints, indexes and triggers.
    constraints: BTreeMap<(String, String), String>,
    indexes: BTreeMap<(String, String), String>,
    triggers: BTreeMap<(String, String), String>,
    /// signature → definition
    functions: BTreeMap<String, String>,
    views: BTreeMap<String, String>,
}

/// Partitions are left out: which ones exist depends on the day (the partition maintainer
/// creates and drops them); what they must have is declared on their partitioned table.
const OURS: &str = "c.relnamespace = 'public'::regnamespace AND NOT c.relispartition \
     AND c.relname NOT LIKE 'gito\\_schema\\_migrations%'";

async fn snapshot(conn: &mut PgConnection) -> Result<Snapshot, MigrateError> {
    let mut s = Snapshot::default();
    let tables: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT c.relname::text FROM pg_class c WHERE c.relkind IN ('r', 'p') AND {OURS}"
    )))
    .fetch_all(&mut *conn)
    .await?;
    for (t,) in tables {
        s.tables.insert(t, BTreeMap::new());
    }
    let columns: Vec<(String, String, String, bool, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid)
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND {OURS}"
        )))
        .fetch_all(&mut *conn)
        .await?;
    for (table, column, data_type, not_null, default) in columns {
        s.tables.entry(table).or_default().insert(
            column,
            Column {
                data_type,
                not_null,
                default,
            },
        );
    }
    let pairs = async |conn: &mut PgConnection, sql: String| {
        let rows: Vec<(String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?;
        Ok::<_, MigrateError>(
            rows.into_iter()
                .map(|(t, n, d)| ((t, n), d))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    s.constraints = pairs(
        conn,
        format!(
            "SELECT c.relname::text, con.conname::text, pg_get_constraintdef(con.oid)
             FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid WHERE {OURS}"
        ),
    )
    .await?;
    s.indexes = pairs(
        conn,
        format!(
            // `ON ONLY` (an index of a partitioned table) would, run as a fix, create an index
            // of the parent alone, left invalid: the plain form recurses to the partitions.
            "SELECT c.relname::text, i.relname::text, replace(pg_get_indexdef(i.oid), ' ON ONLY ', ' ON ')
             FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class c ON c.oid = x.indrelid
             WHERE {OURS} AND NOT EXISTS (
                 SELECT 1 FROM pg_constraint con WHERE con.conindid = x.indexrelid AND con.contype IN ('p', 'u', 'x'))"
        ),
    )
    .await?;
    s.triggers = pairs(
        conn,
        format!(
            "SELECT c.relname::text, t.tgname::text, pg_get_triggerdef(t.oid)
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal AND {OURS}"
        ),
    )
    .await?;
    let functions: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid)
         FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.prokind IN ('f', 'p')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')",
    )
    .fetch_all(&mut *conn)
    .await?;
    s.functions = functions.into_iter().collect();
    let views: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT c.relname::text, pg_get_viewdef(c.oid) FROM pg_class c WHERE c.relkind IN ('v', 'm') AND {OURS}"
    )))
    .fetch_all(&mut *conn)
    .await?;
    s.views = views.into_iter().collect();
    Ok(s)
}

/// An identifier as SQL needs it written.
fn ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

fn column_sql(name: &str, c: &Column) -> String {
    let mut sql = format!("{} {}", ident(name), c.data_type);
    if c.not_null {
        sql.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        let _ = write!(sql, " DEFAULT {d}");
    }
    sql
}

/// What turns `from` into `to`: (description, SQL) per difference. `extra` describes what only
/// `from` has, `missing` what only `to` has.
fn diff(from: &Snapshot, to: &Snapshot, extra: &str, missing: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // Functions first when created (triggers use them), views last.
    for (sig, def) in &to.functions {
        match from.functions.get(sig) {
            None => out.push((
                format!("function {sig}: {missing}"),
                format!("{};", def.trim_end()),
            )),
            Some(d) if d != def => out.push((
                format!("function {sig}: body differs"),
                format!("{};", def.trim_end()),
            )),
            Some(_) => {}
        }
    }
    for (table, columns) in &to.tables {
        if !from.tables.contains_key(table) {
            let cols: Vec<String> = columns.iter().map(|(n, c)| column_sql(n, c)).collect();
            out.push((
                format!("table {table}: {missing}"),
                format!("CREATE TABLE {} ({});", ident(table), cols.join(", ")),
            ));
        }
    }
    for (table, columns) in &from.tables {
        let Some(wanted) = to.tables.get(table) else {
            out.push((
                format!("table {table}: {extra}"),
                format!("DROP TABLE {};", ident(table)),
            ));
            continue;
        };
        let alter = format!("ALTER TABLE {}", ident(table));
        for (name, c) in columns {
            let col = ident(name);
            let Some(w) = wanted.get(name) else {
                out.push((
                    format!("column {table}.{name}: {extra}"),
                    format!("{alter} DROP COLUMN {col};"),
                ));
                continue;
            };
            if c.data_type != w.data_type {
                out.push((
                    format!(
                        "column {table}.{name}: type {} here, {} wanted",
                        c.data_type, w.data_type
                    ),
                    format!("{alter} ALTER COLUMN {col} TYPE {};", w.data_type),
                ));
            }
            if c.not_null != w.not_null {
                let (now, sql) = if w.not_null {
                    ("nullable", "SET NOT NULL")
                } else {
                    ("NOT NULL", "DROP NOT NULL")
                };
                out.push((
                    format!(
                        "column {table}.{name}: {now}, should {}",
                        if w.not_null {
                            "be NOT NULL"
                        } else {
                            "allow NULL"
                        }
                    ),
                    format!("{alter} ALTER COLUMN {col} {sql};"),
                ));
            }
            if c.default != w.default {
                let shown = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".to_owned());
                out.push((
                    format!(
                        "column {table}.{name}: default {}, should be {}",
                        shown(&c.default),
                        shown(&w.default)
                    ),
                    match &w.default {
                        Some(d) => format!("{alter} ALTER COLUMN {col} SET DEFAULT {d};"),
                        None => format!("{alter} ALTER COLUMN {col} DROP DEFAULT;"),
                    },
                ));
            }
        }
        for (name, w) in wanted {
            if !columns.contains_key(name) {
                out.push((
                    format!("column {table}.{name}: {missing}"),
                    format!("{alter} ADD COLUMN {};", column_sql(name, w)),
                ));
            }
        }
    }
    let kept = |table: &String| to.tables.contains_key(table) && from.tables.contains_key(table);
    let objects = |kind: &str,
                   f: &BTreeMap<(String, String), String>,
                   t: &BTreeMap<(String, String), String>,
                   drop: &dyn Fn(&str, &str) -> String,
                   create: &dyn Fn(&str, &str, &str) -> String,
                   out: &mut Vec<(String, String)>| {
        for ((table, name), def) in f {
            // A table dropped or created as a whole takes its objects with it.
            if !to.tables.contains_key(table) {
                continue;
            }
            match t.get(&(table.clone(), name.clone())) {
                None if kept(table) => out.push((
                    format!("{kind} {name} on {table}: {extra}"),
                    drop(table, name),
                )),
                Some(w) if w != def => out.push((
                    format!("{kind} {name} on {table}: differs (here: {def}; wanted: {w})"),
                    format!("{} {}", drop(table, name), create(table, name, w)),
                )),
                _ => {}
            }
        }
        for ((table, name), def) in t {
            if !f.contains_key(&(table.clone(), name.clone())) {
                out.push((
                    format!("{kind} {name} on {table}: {missing}"),
                    create(table, name, def),
                ));
            }
        }
    };
    objects(
        "constraint",
        &from.constraints,
        &to.constraints,
        &|t, n| format!("ALTER TABLE {} DROP CONSTRAINT {};", ident(t), ident(n)),
        &|t, n, d| format!("ALTER TABLE {} ADD CONSTRAINT {} {d};", ident(t), ident(n)),
        &mut out,
    );
    objects(
        "index",
        &from.indexes,
        &to.indexes,
        &|_, n| format!("DROP INDEX {};", ident(n)),
        &|_, _, d| format!("{d};"),
        &mut out,
    );
    objects(
        "trigger",
        &from.triggers,
        &to.triggers,
        &|t, n| format!("DROP TRIGGER {} ON {};", ident(n), ident(t)),
        &|_, _, d| format!("{d};"),
        &mut out,
    );
    for sig in from.functions.keys() {
        if !to.functions.contains_key(sig) {
            out.push((
                format!("function {sig}: {extra}"),
                format!("DROP FUNCTION {sig};"),
            ));
        }
    }
    for (name, def) in &from.views {
        match to.views.get(name) {
            None => out.push((
                format!("view {name}: {extra}"),
                format!("DROP VIEW {};", ident(name)),
            )),
            Some(w) if w != def => out.push((
                format!("view {name}: definition differs"),
                format!("CREATE OR REPLACE VIEW {} AS {}", ident(name), w.trim()),
            )),
            Some(_) => {}
        }
    }
    for (name, def) in &to.views {
        if !from.views.contains_key(name) {
            out.push((
                format!("view {name}: {missing}"),
                format!("CREATE VIEW {} AS {}", ident(name), def.trim()),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_url_keeps_credentials_host_and_parameters() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/gito?sslmode=disable", "s"),
            "postgres://u:p@h:5432/s?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "s"), "postgres://h/s");
    }
}
