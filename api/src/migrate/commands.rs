//! `gito-api migrate ...`: the operators' commands and what they print. Results go to stdout,
//! progress ("Running upgrade ...") to the log on stderr, failures to one line and a non-zero exit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use time::format_description::well_known::Rfc3339;

use super::{
    Catalog, DownTarget, MigrateError, Status, down_waiting, stamp_waiting, status, up_waiting,
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
}

/// Runs one command; `Ok` holds what to print on stdout. `lock_wait` bounds the wait for another
/// process's migration lock.
pub async fn run(
    command: &MigrateCommand,
    database_url: Option<&str>,
    lock_wait: Duration,
    catalog: &Catalog,
) -> Result<String, MigrateError> {
    // `new` only writes files: it needs no database.
    if let MigrateCommand::New { name, dir } = command {
        return create(dir, name).await;
    }
    let database_url = database_url.ok_or(MigrateError::NoDatabase)?;
    match command {
        MigrateCommand::Current => Ok(current_line(&status(database_url, catalog).await?, catalog)),
        MigrateCommand::History => Ok(history(&status(database_url, catalog).await?, catalog)),
        MigrateCommand::Up { to } => {
            let target = to
                .as_deref()
                .map(|spec| catalog.resolve(spec))
                .transpose()?;
            let target = target.flatten().map(|m| m.version);
            let applied = up_waiting(database_url, catalog, target, lock_wait).await?;
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
            let reverted = down_waiting(database_url, catalog, target, lock_wait).await?;
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
        MigrateCommand::New { name, dir } => create(dir, name).await,
    }
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
