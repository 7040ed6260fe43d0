//! The processes a benchmark runs (the release binaries, as deployed) and what they cost:
//! CPU seconds and peak resident memory, read from /proc.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// A release binary next to this one (`target/release/gito-api`, ...).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .context("exe dir")?
        .to_owned();
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} missing: run `cargo build --release --workspace`",
        path.display()
    );
    Ok(path)
}

pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn spawn(name: &'static str, env: &[(&str, String)]) -> anyhow::Result<Process> {
        Process::spawn_args(name, &[], env)
    }

    pub fn spawn_args(
        name: &'static str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Process> {
        let child = Command::new(binary(name)?)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("GITO_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process { child })
    }

    pub fn stats(&self) -> Stats {
        self.child.id().map(Stats::of).unwrap_or_default()
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// User plus system CPU time so far.
    pub cpu_secs: f64,
    /// Peak resident set size so far (VmHWM).
    pub peak_rss_mib: f64,
}

impl Stats {
    pub fn of(pid: u32) -> Stats {
        let ticks = 100.0; // USER_HZ on Linux
        let cpu_secs = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // Fields after the parenthesised command name; utime and stime are 14th and 15th.
                let rest = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = fields.get(11)?.parse().ok()?;
                let stime: f64 = fields.get(12)?.parse().ok()?;
                Some((utime + stime) / ticks)
            })
            .unwrap_or_default();
        let peak_rss_mib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib / 1024.0)
            })
            .unwrap_or_default();
        Stats {
            cpu_secs,
            peak_rss_mib,
        }
    }
}
