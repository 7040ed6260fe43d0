//! `gito-api migrate lint`: the locking and safety hazards of migration SQL, each with a rule id
//! and a one-line fix, before the SQL reaches a database that serves traffic. A migration
//! acknowledges a finding with `-- gito-lint: allow RULE: why` on the line(s) before the statement
//! (anywhere in the file for findings about the whole file); those lines are left out of the
//! checksum, so acknowledging an applied migration does not count as modifying it.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::Header;
use super::sql::{self, Statement, Token};

/// Every rule: id, what it catches, the fix in one line.
pub const RULES: &[(&str, &str, &str)] = &[
    (
        "create-index-not-concurrently",
        "CREATE INDEX on an existing table blocks every write to it while the index builds",
        "CREATE INDEX CONCURRENTLY, alone in a migration headed `-- gito: no-transaction`",
    ),
    (
        "constraint-not-valid",
        "ADD CONSTRAINT (FOREIGN KEY / CHECK) on an existing table scans it under a lock that blocks writes",
        "ADD CONSTRAINT ... NOT VALID, then ALTER TABLE ... VALIDATE CONSTRAINT in a later migration",
    ),
    (
        "unique-constraint-builds-index",
        "ADD CONSTRAINT ... UNIQUE / PRIMARY KEY on an existing table builds its index under a lock that blocks writes",
        "CREATE UNIQUE INDEX CONCURRENTLY first (no-transaction migration), then ADD CONSTRAINT ... UNIQUE USING INDEX",
    ),
    (
        "set-not-null",
        "SET NOT NULL scans the whole table under an ACCESS EXCLUSIVE lock",
        "first ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID and VALIDATE CONSTRAINT c, then SET NOT NULL (no scan)",
    ),
    (
        "alter-column-type",
        "ALTER COLUMN ... TYPE rewrites the table (and its indexes) under an ACCESS EXCLUSIVE lock",
        "add a column of the new type, backfill it in batches, switch the code over, drop the old column later",
    ),
    (
        "volatile-default",
        "ADD COLUMN with a volatile DEFAULT rewrites the whole table under an ACCESS EXCLUSIVE lock",
        "add the column without a default (or with a constant one), then backfill it in batches",
    ),
    (
        "drop-still-referenced",
        "DROP TABLE / DROP COLUMN of something the code's queries still use breaks the running release",
        "first release code that no longer uses it (expand, then contract), drop it in a later migration",
    ),
    (
        "rename",
        "renaming a table or column breaks every running replica that still uses the old name",
        "add the new name (column, or a view), move the code over, drop the old name in a later release",
    ),
    (
        "missing-lock-timeout",
        "lock_timeout is turned off while the migration locks an existing table: waiting behind one long query blocks every query queued behind it",
        "keep gito's lock_timeout (GITO_MIGRATION_LOCK_TIMEOUT) or set one in the header: `-- gito: lock_timeout=5s`",
    ),
    (
        "non-transactional-statement",
        "this statement cannot run inside a transaction, and the migration runs in one",
        "put it in a migration of its own headed `-- gito: no-transaction`",
    ),
    (
        "irreversible",
        "the up migration has no down migration: it can be neither rolled back nor round-tripped",
        "write NNN_name.down.sql (when undoing is unsafe, make it fail with a clear message)",
    ),
    (
        "invalid-header",
        "a `-- gito:` header line gito does not understand",
        "use `-- gito: no-transaction`, `-- gito: lock_timeout=5s` or `-- gito: statement_timeout=30m`",
    ),
];

/// One hazard found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: PathBuf,
    /// The line of the statement; `None` for the file as a whole.
    pub line: Option<usize>,
    pub rule: &'static str,
    /// What exactly, e.g. `CREATE INDEX on existing table telemetry`.
    pub detail: String,
    /// The acknowledgement's reason, if the migration acknowledges it.
    pub acknowledged: Option<String>,
}

impl Finding {
    pub fn fix(&self) -> &'static str {
        RULES
            .iter()
            .find(|(id, _, _)| *id == self.rule)
            .map_or("", |(_, _, fix)| fix)
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: {}", self.rule, self.detail)?;
        match &self.acknowledged {
            Some(why) => write!(f, " (acknowledged: {why})"),
            None => write!(f, " → fix: {}", self.fix()),
        }
    }
}

/// Lints files as given; a directory means its `*.up.sql` files. An unreadable file is an error.
pub fn lint_paths(paths: &[PathBuf]) -> std::io::Result<Vec<Finding>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut ups: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".up.sql"))
                .collect();
            ups.sort();
            files.extend(ups);
        } else {
            files.push(path.clone());
        }
    }
    let mut findings = Vec::new();
    let mut queries: Option<(PathBuf, Option<Vec<String>>)> = None;
    for file in files {
        let sql = std::fs::read_to_string(&file)?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        if queries.as_ref().is_none_or(|(d, _)| *d != dir) {
            queries = Some((dir.clone(), code_queries(&dir)));
        }
        let code = queries.as_ref().and_then(|(_, q)| q.as_deref());
        findings.extend(lint_sql(&file, &sql, code));
    }
    Ok(findings)
}

/// The SQL of every compile-time checked query (`.sqlx/query-*.json`), found in the nearest
/// `.sqlx/` above `dir`; `None` when there is none (then every DROP is reported as unverified).
fn code_queries(dir: &Path) -> Option<Vec<String>> {
    let absolute = std::path::absolute(dir).ok()?;
    let sqlx = absolute
        .ancestors()
        .map(|a| a.join(".sqlx"))
        .find(|p| p.is_dir())?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(sqlx).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(query) = json.get("query").and_then(|q| q.as_str())
        {
            out.push(query.to_lowercase());
        }
    }
    Some(out)
}

fn has_word(haystack: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    haystack.match_indices(word).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let after = haystack[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Lints one migration's SQL. `code` holds the code's queries (lower-cased) for
/// `drop-still-referenced`, `None` when unknown.
pub fn lint_sql(file: &Path, sql: &str, code: Option<&[String]>) -> Vec<Finding> {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    let is_down = name.as_deref().is_some_and(|n| n.ends_with(".down.sql"));
    let parsed = sql::parse(sql);
    let mut raw: Vec<(Option<usize>, &'static str, String)> = Vec::new();

    let mut header = match Header::parse(sql) {
        Ok(header) => header,
        Err(reason) => {
            raw.push((None, "invalid-header", reason));
            Header::default()
        }
    };
    // sqlx's own first-line marker, which the runner honours too.
    header.no_transaction |= sql.starts_with("-- no-transaction");
    if let Some(n) = name.as_deref().and_then(|n| n.strip_suffix(".up.sql"))
        && !file.with_file_name(format!("{n}.down.sql")).exists()
    {
        raw.push((None, "irreversible", format!("{n}.down.sql does not exist")));
    }

    let created: BTreeSet<String> = parsed
        .statements
        .iter()
        .filter_map(|s| created_table(&s.tokens))
        .collect();
    let existing = |table: &str| !created.contains(table);
    let mut lock_timeout_off = header.lock_timeout == Some(std::time::Duration::ZERO);
    let mut lock_timeout_flagged = false;
    let mut seen_sql = String::new();

    for st in &parsed.statements {
        let t = &st.tokens;
        let line = Some(st.line);
        if let Some(off) = sets_lock_timeout(t) {
            lock_timeout_off = off;
        }
        let mut locks_existing: Option<String> = None;

        if let Some((table, concurrently)) = created_index(t) {
            if concurrently && !header.no_transaction {
                raw.push((
                    line,
                    "non-transactional-statement",
                    "CREATE INDEX CONCURRENTLY in a transactional migration".to_owned(),
                ));
            }
            // `ON ONLY` a partitioned table builds nothing (the index starts invalid, empty of
            // partitions): instant, whatever the table holds.
            if !concurrently && !on_only(t) && existing(&table) {
                raw.push((
                    line,
                    "create-index-not-concurrently",
                    format!("CREATE INDEX on existing table {table}"),
                ));
                locks_existing = Some(table);
            }
        } else if let Some(what) = non_transactional(t) {
            if !header.no_transaction {
                raw.push((
                    line,
                    "non-transactional-statement",
                    format!("{what} in a transactional migration"),
                ));
            }
        } else if let Some(table) = altered_table(t) {
            let new = !existing(&table);
            if !new {
                locks_existing = Some(table.clone());
            }
            for action in actions(t) {
                alter_action(
                    &table, new, &action, line, &seen_sql, is_down, code, &mut raw,
                );
            }
        } else if !is_down && t.len() >= 2 && t[0].is("drop") && t[1].is("table") {
            for table in dropped_tables(t) {
                if let Some(why) = referenced(code, &table, None) {
                    raw.push((
                        line,
                        "drop-still-referenced",
                        format!("DROP TABLE {table}: {why}"),
                    ));
                }
                locks_existing = Some(table);
            }
        } else if t.len() >= 2
            && t[0].is("create")
            && t.iter().any(|w| w.is("trigger"))
            && let Some(table) = after_on(t).filter(|t| existing(t))
        {
            locks_existing = Some(table);
        }
        if let Some(table) = locks_existing
            && lock_timeout_off
            && !lock_timeout_flagged
        {
            lock_timeout_flagged = true;
            raw.push((
                line,
                "missing-lock-timeout",
                format!("locks existing table {table} with lock_timeout off"),
            ));
        }
        seen_sql.push_str(&st.text.to_lowercase());
        seen_sql.push('\n');
    }

    let acks = acknowledgements(&parsed);
    raw.into_iter()
        .map(|(line, rule, detail)| {
            let acknowledged = acks
                .iter()
                .find(|a| {
                    a.rule == rule
                        && match line {
                            None => true,
                            Some(l) => a.statement_line == Some(l),
                        }
                })
                .map(|a| a.reason.clone());
            Finding {
                file: file.to_path_buf(),
                line,
                rule,
                detail,
                acknowledged,
            }
        })
        .collect()
}

struct Ack {
    rule: String,
    reason: String,
    /// The line of the statement right after the comment.
    statement_line: Option<usize>,
}

/// `-- gito-lint: allow RULE: reason`; one without a reason acknowledges nothing.
fn acknowledgements(parsed: &sql::Parsed) -> Vec<Ack> {
    parsed
        .comments
        .iter()
        .filter_map(|c| {
            let rest = c.text.strip_prefix("gito-lint:")?.trim();
            let rest = rest.strip_prefix("allow")?.trim();
            let (rule, reason) = rest
                .split_once(|ch: char| ch == ':' || ch.is_whitespace())
                .unwrap_or((rest, ""));
            let reason = reason.trim_start_matches([':', ' ', '-']).trim();
            if reason.is_empty() {
                return None;
            }
            let statement_line = parsed
                .statements
                .iter()
                .map(|s| s.line)
                .find(|l| *l > c.line);
            Some(Ack {
                rule: rule.trim().to_owned(),
                reason: reason.to_owned(),
                statement_line,
            })
        })
        .collect()
}

/// The last part of a possibly schema-qualified name starting at `i`, and the index after it.
fn name_at(t: &[Token], mut i: usize) -> Option<(String, usize)> {
    let mut name = t.get(i)?.ident()?.to_owned();
    while t.get(i + 1).is_some_and(|p| p.text == ".") {
        name = t.get(i + 2)?.ident()?.to_owned();
        i += 2;
    }
    Some((name, i + 1))
}

fn skip(t: &[Token], mut i: usize, words: &[&[&str]]) -> usize {
    for seq in words {
        if seq
            .iter()
            .enumerate()
            .all(|(k, w)| t.get(i + k).is_some_and(|x| x.is(w)))
        {
            i += seq.len();
        }
    }
    i
}

fn created_table(t: &[Token]) -> Option<String> {
    if !t.first()?.is("create") {
        return None;
    }
    let at = t.iter().take(4).position(|w| w.is("table"))?;
    let i = skip(t, at + 1, &[&["if", "not", "exists"]]);
    name_at(t, i).map(|(n, _)| n)
}

/// `CREATE [UNIQUE] INDEX [CONCURRENTLY] ... ON [ONLY] table`: the table and whether concurrently.
fn created_index(t: &[Token]) -> Option<(String, bool)> {
    if !t.first()?.is("create") {
        return None;
    }
    let i = skip(t, 1, &[&["unique"]]);
    if !t.get(i)?.is("index") {
        return None;
    }
    let concurrently = t.get(i + 1).is_some_and(|w| w.is("concurrently"));
    Some((after_on(t)?, concurrently))
}

/// `... ON ONLY table ...`.
fn on_only(t: &[Token]) -> bool {
    t.iter()
        .position(|w| w.is("on"))
        .is_some_and(|on| t.get(on + 1).is_some_and(|w| w.is("only")))
}

fn after_on(t: &[Token]) -> Option<String> {
    let on = t.iter().position(|w| w.is("on"))?;
    let i = skip(t, on + 1, &[&["only"]]);
    name_at(t, i).map(|(n, _)| n)
}

fn non_transactional(t: &[Token]) -> Option<&'static str> {
    let first = t.first()?;
    let has = |w: &str| t.iter().any(|x| x.is(w));
    if first.is("drop") && t.get(1)?.is("index") && has("concurrently") {
        Some("DROP INDEX CONCURRENTLY")
    } else if first.is("reindex") && has("concurrently") {
        Some("REINDEX CONCURRENTLY")
    } else if first.is("vacuum") {
        Some("VACUUM")
    } else if (first.is("create") || first.is("drop")) && t.get(1)?.is("database") {
        Some("CREATE/DROP DATABASE")
    } else if first.is("alter") && t.get(1)?.is("system") {
        Some("ALTER SYSTEM")
    } else {
        None
    }
}

/// `Some(true)` when the statement turns lock_timeout off, `Some(false)` when it sets one.
fn sets_lock_timeout(t: &[Token]) -> Option<bool> {
    let first = t.first()?;
    if first.is("reset") && t.get(1)?.is("lock_timeout") {
        return Some(true);
    }
    if !first.is("set") {
        return None;
    }
    let i = skip(t, 1, &[&["local"], &["session"]]);
    if !t.get(i)?.is("lock_timeout") {
        return None;
    }
    let value = t.get(i + 2)?.text.trim_matches('\'');
    Some(
        value == "0"
            || value.starts_with("0m")
            || value.starts_with("0s")
            || t[i + 2].is("default"),
    )
}

fn altered_table(t: &[Token]) -> Option<String> {
    if !(t.first()?.is("alter") && t.get(1)?.is("table")) {
        return None;
    }
    let i = skip(t, 2, &[&["if", "exists"], &["only"]]);
    name_at(t, i).map(|(n, _)| n)
}

/// The comma-separated actions of an ALTER TABLE, each as its tokens.
fn actions(t: &[Token]) -> Vec<Vec<Token>> {
    let i = skip(t, 2, &[&["if", "exists"], &["only"]]);
    let Some((_, mut i)) = name_at(t, i) else {
        return Vec::new();
    };
    let mut out = vec![Vec::new()];
    let mut depth = 0;
    while let Some(tok) = t.get(i) {
        match tok.text.as_str() {
            "(" => depth += 1,
            ")" => depth -= 1,
            "," if depth == 0 => {
                out.push(Vec::new());
                i += 1;
                continue;
            }
            _ => {}
        }
        out.last_mut().expect("one").push(tok.clone());
        i += 1;
    }
    out.retain(|a| !a.is_empty());
    out
}

const VOLATILE: &[&str] = &[
    "random",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "txid_current",
];

#[allow(clippy::too_many_arguments)]
fn alter_action(
    table: &str,
    new_table: bool,
    a: &[Token],
    line: Option<usize>,
    earlier: &str,
    is_down: bool,
    code: Option<&[String]>,
    raw: &mut Vec<(Option<usize>, &'static str, String)>,
) {
    let has = |w: &str| a.iter().any(|x| x.is(w));
    let Some(first) = a.first() else { return };
    if first.is("add") {
        let i = skip(a, 1, &[&["column"], &["if", "not", "exists"]]);
        let is_constraint = a
            .get(1)
            .is_some_and(|w| w.is("constraint") || w.is("foreign") || w.is("check"));
        if is_constraint {
            if (has("unique") || has("primary")) && !has("using") && !new_table {
                let name = a.get(2).map(|n| n.text.clone()).unwrap_or_default();
                raw.push((
                    line,
                    "unique-constraint-builds-index",
                    format!("ADD CONSTRAINT {name} on existing table {table} builds its index"),
                ));
            }
            if (has("foreign") || has("check") || has("references"))
                && !(has("not") && has("valid"))
                && !new_table
            {
                let name = if a[1].is("constraint") {
                    a.get(2).map(|n| n.text.clone()).unwrap_or_default()
                } else {
                    String::new()
                };
                raw.push((
                    line,
                    "constraint-not-valid",
                    format!("ADD CONSTRAINT {name} on existing table {table} without NOT VALID")
                        .replace("  ", " "),
                ));
            }
            return;
        }
        if !new_table && let Some(d) = a.iter().position(|w| w.is("default")) {
            let volatile = a[d + 1..].iter().find(|w| VOLATILE.iter().any(|v| w.is(v)));
            if let Some(f) = volatile {
                let column = a.get(i).map(|c| c.text.clone()).unwrap_or_default();
                raw.push((
                    line,
                    "volatile-default",
                    format!(
                        "ADD COLUMN {table}.{column} DEFAULT {}() (volatile)",
                        f.text
                    ),
                ));
            }
        }
    } else if first.is("alter") && !new_table {
        let i = skip(a, 1, &[&["column"]]);
        let column = a.get(i).map(|c| c.text.clone()).unwrap_or_default();
        let rest = &a[(i + 1).min(a.len())..];
        let is = |k: usize, w: &str| rest.get(k).is_some_and(|x| x.is(w));
        if is(0, "set") && is(1, "not") && is(2, "null") {
            let checked = earlier.contains("validate constraint")
                && (earlier.contains(&format!("check ({column} is not null)"))
                    || earlier.contains(&format!("check({column} is not null)")));
            if !checked {
                raw.push((
                    line,
                    "set-not-null",
                    format!("SET NOT NULL on {table}.{column} without a validated CHECK first"),
                ));
            }
        } else if is(0, "type") || (is(0, "set") && is(1, "data") && is(2, "type")) {
            raw.push((
                line,
                "alter-column-type",
                format!("ALTER COLUMN {table}.{column} TYPE"),
            ));
        }
    } else if first.is("drop") && !is_down && !new_table {
        if a.get(1).is_some_and(|w| w.is("constraint")) {
            return;
        }
        let i = skip(a, 1, &[&["column"], &["if", "exists"]]);
        if let Some(column) = a.get(i).and_then(Token::ident)
            && let Some(why) = referenced(code, table, Some(column))
        {
            raw.push((
                line,
                "drop-still-referenced",
                format!("DROP COLUMN {table}.{column}: {why}"),
            ));
        }
    } else if first.is("rename") && !is_down && !new_table {
        if a.get(1).is_some_and(|w| w.is("constraint")) {
            return;
        }
        let what = if a.get(1).is_some_and(|w| w.is("to")) {
            format!("RENAME TABLE {table}")
        } else {
            let i = skip(a, 1, &[&["column"]]);
            format!(
                "RENAME COLUMN {table}.{}",
                a.get(i).map(|c| c.text.as_str()).unwrap_or("?")
            )
        };
        raw.push((line, "rename", what));
    }
}

fn dropped_tables(t: &[Token]) -> Vec<String> {
    let mut i = skip(t, 2, &[&["if", "exists"]]);
    let mut out = Vec::new();
    while let Some((name, next)) = name_at(t, i) {
        if ["cascade", "restrict"].contains(&name.as_str()) {
            break;
        }
        out.push(name);
        if t.get(next).is_some_and(|c| c.text == ",") {
            i = next + 1;
        } else {
            break;
        }
    }
    out
}

/// Why a dropped table or column counts as still referenced, or `None` when the code's queries
/// do not use it.
fn referenced(code: Option<&[String]>, table: &str, column: Option<&str>) -> Option<String> {
    let Some(queries) = code else {
        return Some("cannot tell whether the code still uses it (no .sqlx/ query data found above the migration)".to_owned());
    };
    let users = queries
        .iter()
        .filter(|q| has_word(q, table) && column.is_none_or(|c| has_word(q, c)))
        .count();
    (users > 0).then(|| format!("{users} compile-time checked quer(y/ies) in .sqlx/ still use it"))
}

/// Every rule as `id: what → fix`, for `lint --rules` and the docs.
pub fn rules_text() -> String {
    RULES
        .iter()
        .map(|(id, what, fix)| format!("{id}: {what} → fix: {fix}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Statements of `sql`, for callers that run them one by one.
pub fn statements(sql: &str) -> Vec<Statement> {
    sql::parse(sql).statements
}
