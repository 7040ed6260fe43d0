//! `gito-api migrate ...`: the operators' commands and what they print. Results go to stdout,
//! progress ("Running upgrade ...") to the log on stderr, failures to one line and a non-zero exit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use time::format_description::well_known::Rfc3339;

use super::check::check;
use super::repair::{Action, repair};
use super::{
    Catalog, DownTarget, MigrateError, RunOptions, Status, down_with, lint, stamp_waiting, status,
    up_with,
};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: MigrateCommand,
}

#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Print the version the database is at, e.g. `005_nullable_device_hierarchy (head)`.
    #[command(after_help = "Example:\n  gito-api migrate current")]
    Current,
    /// List every migration, newest first, applied (with its date) or pending.
    #[command(after_help = "Example:\n  gito-api migrate history")]
    History,
    /// Apply pending migrations (all, or up to and including --to).
    #[command(after_help = "Example:\n  gito-api migrate up --to 005")]
    Up {
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
    /// Revert migrations: one step by default.
    #[command(after_help = "Example:\n  gito-api migrate down --steps 1")]
    Down {
        #[arg(long, conflicts_with = "to", value_name = "N")]
        steps: Option<usize>,
        /// Revert everything above VERSION (`base`: everything).
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
    /// Record the database as being at VERSION without running any SQL.
    #[command(after_help = "Example:\n  gito-api migrate stamp 006")]
    Stamp { version: String },
    /// Write the next NNN_NAME.up.sql / .down.sql pair into --dir.
    #[command(
        after_help = "Example:\n  gito-api migrate new add_device_serial   (no database needed)"
    )]
    New {
        name: String,
        #[arg(long, env = "GITO_MIGRATIONS_DIR", default_value = "migrations")]
        dir: PathBuf,
    },
    /// Compare the database's schema with what its applied migrations produce (replayed into a
    /// scratch database); print each difference with the SQL that fixes it. Exit 0 in sync,
    /// 1 drift, 2 could not check.
    #[command(after_help = "Example:\n  gito-api migrate check")]
    Check,
    /// Flag locking and safety hazards in migration files (default: every *.up.sql in --dir).
    /// Exit 0 when every finding is acknowledged (`-- gito-lint: allow RULE: why`), 1 otherwise,
    /// 2 when a file cannot be read.
    #[command(
        after_help = "Example:\n  gito-api migrate lint migrations/010_x.up.sql   (no database needed)"
    )]
    Lint {
        files: Vec<PathBuf>,
        #[arg(long, env = "GITO_MIGRATIONS_DIR", default_value = "migrations")]
        dir: PathBuf,
        /// Print every rule with its fix and exit.
        #[arg(long)]
        rules: bool,
    },
    /// Give a migration (both files) another number: the next free one, or TO. For two
    /// branches' migrations with one number; never for one applied to a shared database.
    #[command(
        after_help = "Example:\n  gito-api migrate renumber 008_add_rules   (no database needed)"
    )]
    Renumber {
        /// The migration's file stem, e.g. `008_add_rules`.
        name: String,
        /// The new number (default: one above the highest).
        to: Option<String>,
        #[arg(long, env = "GITO_MIGRATIONS_DIR", default_value = "migrations")]
        dir: PathBuf,
    },
    /// Show a partly applied (no-transaction) migration and what of it exists; with a flag,
    /// finish it or record it as applied.
    #[command(after_help = "Example:\n  gito-api migrate repair --roll-forward")]
    Repair {
        /// Run the statements that did not run.
        #[arg(long, conflicts_with = "stamp")]
        roll_forward: bool,
        /// Record the migration as applied as it stands (after finishing it by hand).
        #[arg(long)]
        stamp: bool,
    },
}

/// What a command prints and its exit code.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: Option<String>,
    pub exit: u8,
}

impl From<String> for Outcome {
    fn from(stdout: String) -> Self {
        Outcome {
            stdout,
            stderr: None,
            exit: 0,
        }
    }
}

/// Runs one command; `Ok` holds what to print and the exit code. `options` bound the waits;
/// `runtime_dir`, when given, replaces the compiled-in migrations.
pub async fn run(
    command: &MigrateCommand,
    database_url: Option<&str>,
    options: &RunOptions,
    runtime_dir: Option<&Path>,
) -> Result<Outcome, MigrateError> {
    // These only read or write files: they need no database.
    match command {
        MigrateCommand::New { name, dir } => return create(dir, name).await.map(Outcome::from),
        MigrateCommand::Lint { files, dir, rules } => return Ok(run_lint(files, dir, *rules)),
        MigrateCommand::Renumber { name, to, dir } => {
            return renumber(dir, name, to.as_deref()).await.map(Outcome::from);
        }
        _ => {}
    }
    let catalog = &Catalog::load(runtime_dir).await?;
    let Some(database_url) = database_url else {
        return Err(MigrateError::NoDatabase);
    };
    if let MigrateCommand::Check = command {
        return Ok(match check(database_url, catalog, options).await {
            Ok(report) => Outcome {
                stdout: report.render(),
                stderr: None,
                exit: u8::from(!report.in_sync()),
            },
            Err(e) => Outcome {
                stdout: String::new(),
                stderr: Some(format!("could not check: {e}")),
                exit: 2,
            },
        });
    }
    run_on_database(command, database_url, options, catalog)
        .await
        .map(Outcome::from)
}

async fn run_on_database(
    command: &MigrateCommand,
    database_url: &str,
    options: &RunOptions,
    catalog: &Catalog,
) -> Result<String, MigrateError> {
    let lock_wait = options.lock_wait;
    match command {
        MigrateCommand::Current => Ok(current_line(&status(database_url, catalog).await?, catalog)),
        MigrateCommand::History => Ok(history(&status(database_url, catalog).await?, catalog)),
        MigrateCommand::Up { to } => {
            let target = to
                .as_deref()
                .map(|spec| catalog.resolve(spec))
                .transpose()?;
            let target = target.flatten().map(|m| m.version);
            let applied = up_with(database_url, catalog, target, options).await?;
            let now = current_line(&status(database_url, catalog).await?, catalog);
            Ok(format!(
                "applied {} migration(s); now at {now}",
                applied.len()
            ))
        }
        MigrateCommand::Down { steps, to } => {
            let target = match to {
                Some(spec) => DownTarget::To(catalog.resolve(spec)?.map(|m| m.version)),
                None => DownTarget::Steps(steps.unwrap_or(1)),
            };
            let reverted = down_with(database_url, catalog, target, options).await?;
            let now = current_line(&status(database_url, catalog).await?, catalog);
            Ok(format!(
                "reverted {} migration(s); now at {now}",
                reverted.len()
            ))
        }
        MigrateCommand::Stamp { version } => {
            let target = catalog.resolve(version)?;
            stamp_waiting(database_url, catalog, target.map(|m| m.version), lock_wait).await?;
            let at = target.map_or("base", |m| m.name.as_str());
            tracing::warn!(
                "stamped the database as {at} without running any SQL: its schema must already match"
            );
            Ok(format!("stamped {at}"))
        }
        MigrateCommand::Repair {
            roll_forward,
            stamp,
        } => {
            let action = match (roll_forward, stamp) {
                (true, _) => Action::RollForward,
                (_, true) => Action::Stamp,
                _ => Action::Show,
            };
            repair(database_url, catalog, action, options).await
        }
        MigrateCommand::New { .. }
        | MigrateCommand::Lint { .. }
        | MigrateCommand::Renumber { .. }
        | MigrateCommand::Check => unreachable!("handled in run"),
    }
}

fn run_lint(files: &[PathBuf], dir: &Path, rules: bool) -> Outcome {
    if rules {
        return Outcome::from(lint::rules_text());
    }
    let paths = if files.is_empty() {
        vec![dir.to_path_buf()]
    } else {
        files.to_vec()
    };
    match lint::lint_paths(&paths) {
        Err(e) => Outcome {
            stdout: String::new(),
            stderr: Some(format!("cannot read migrations: {e}")),
            exit: 2,
        },
        Ok(findings) => {
            let open = findings.iter().filter(|f| f.acknowledged.is_none()).count();
            let mut out: Vec<String> = findings.iter().map(ToString::to_string).collect();
            out.push(format!(
                "{} finding(s), {open} unacknowledged (acknowledge one with `-- gito-lint: allow RULE: why` before its statement)",
                findings.len()
            ));
            Outcome {
                stdout: out.join("\n"),
                stderr: None,
                exit: u8::from(open > 0),
            }
        }
    }
}

/// Renames `NNN_name.{up,down}.sql` to the next free number (or `to`); reads file names only, so
/// it works while two files share a number.
pub async fn renumber(dir: &Path, name: &str, to: Option<&str>) -> Result<String, MigrateError> {
    let mut versions = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(v) = file.split('_').next().and_then(|n| n.parse::<i64>().ok())
            && file.ends_with(".sql")
        {
            versions.push(v);
        }
    }
    let (_, description) = name
        .split_once('_')
        .ok_or_else(|| MigrateError::UnknownVersion(name.to_owned()))?;
    let up = dir.join(format!("{name}.up.sql"));
    if !tokio::fs::try_exists(&up).await? {
        return Err(MigrateError::UnknownVersion(name.to_owned()));
    }
    let next = match to {
        Some(to) => to
            .parse::<i64>()
            .map_err(|_| MigrateError::UnknownVersion(to.to_owned()))?,
        None => versions.iter().max().copied().unwrap_or(0) + 1,
    };
    let stem = format!("{next:03}_{description}");
    let mut out = Vec::new();
    for kind in ["up", "down"] {
        let from = dir.join(format!("{name}.{kind}.sql"));
        let target = dir.join(format!("{stem}.{kind}.sql"));
        if !tokio::fs::try_exists(&from).await? {
            continue;
        }
        if tokio::fs::try_exists(&target).await? {
            return Err(MigrateError::Source(format!(
                "{} already exists: pick another number",
                target.display()
            )));
        }
        tokio::fs::rename(&from, &target).await?;
        out.push(format!(
            "renamed {} -> {}",
            from.display(),
            target.display()
        ));
    }
    out.push(
        "rebuild gito-api to embed it; never renumber a migration already applied to a shared database"
            .to_owned(),
    );
    Ok(out.join("\n"))
}

async fn create(dir: &Path, name: &str) -> Result<String, MigrateError> {
    let (up, down) = new_migration(dir, name).await?;
    Ok(format!(
        "created {}\ncreated {}\nrebuild gito-api to embed it",
        up.display(),
        down.display()
    ))
}

/// `005_nullable_device_hierarchy (head)`, `003_device_types (2 pending)`, `base (5 pending)`.
pub fn current_line(status: &Status, catalog: &Catalog) -> String {
    let at = status.current().map_or("base", |a| a.name.as_str());
    let is_head = status.current().map(|a| a.version) == catalog.head().map(|m| m.version);
    match status.pending.len() {
        0 if is_head => format!("{at} (head)"),
        0 => format!("{at} (unknown to this gito-api: database newer than code)"),
        n => format!("{at} ({n} pending)"),
    }
}

fn history(status: &Status, catalog: &Catalog) -> String {
    let head = catalog.head().map(|m| m.version);
    let mut versions: Vec<i64> = catalog.iter().map(|m| m.version).collect();
    versions.extend(status.applied.iter().map(|a| a.version));
    versions.sort_unstable();
    versions.dedup();
    let width = catalog.iter().map(|m| m.name.len()).max().unwrap_or(0) + 7;
    let mut out = String::new();
    for version in versions.into_iter().rev() {
        let applied = status.applied.iter().find(|a| a.version == version);
        let known = catalog.get(version);
        let name = known
            .map(|m| m.name.as_str())
            .or(applied.map(|a| a.name.as_str()));
        let mut label = name.unwrap_or_default().to_owned();
        if Some(version) == head {
            label.push_str(" (head)");
        }
        let state = match (applied, known) {
            (Some(a), Some(_)) => {
                let at = a.applied_at.format(&Rfc3339).unwrap_or_default();
                if a.stamped {
                    format!("applied {at} (stamped)")
                } else {
                    format!("applied {at}")
                }
            }
            (Some(_), None) => "applied, unknown to this gito-api".to_owned(),
            (None, _) => "pending".to_owned(),
        };
        let _ = writeln!(out, "{label:<width$} {state}");
    }
    out.trim_end().to_owned()
}

/// Writes the next migration pair into `dir` and returns their paths.
pub async fn new_migration(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), MigrateError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(MigrateError::InvalidName(name.to_owned()));
    }
    let catalog = Catalog::from_dir(dir).await?;
    let next = catalog.head().map_or(1, |m| m.version + 1);
    let stem = format!("{next:03}_{name}");
    let up = dir.join(format!("{stem}.up.sql"));
    let down = dir.join(format!("{stem}.down.sql"));
    tokio::fs::write(&up, format!("-- {stem}: say why this change exists.\n")).await?;
    tokio::fs::write(&down, format!("-- Revert {stem}.\n")).await?;
    Ok((up, down))
}
