//! The processes a benchmark runs (the release binaries, as deployed) and what they cost:
//! CPU seconds and peak resident memory, read from /proc, for one process or for every process
//! of a stack (`Meter`).

use std::collections::HashMap;
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

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
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

/// CPU seconds per 1000 messages: how every bench states a process's cost.
pub fn per_1000(cpu_secs: f64, messages: u64) -> f64 {
    cpu_secs / messages.max(1) as f64 * 1000.0
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

/// Where the processes of one part of a stack are found.
#[derive(Debug, Clone)]
pub enum Source {
    /// One process we started.
    Pid(u32),
    /// The process listening on this TCP port of 127.0.0.1 (a Mosquitto testkit started).
    Listener(u16),
    /// PostgreSQL: every backend connected to this database, and the server's own background
    /// processes (checkpointer, WAL writer, ...; shared with whatever else uses the server).
    Postgres { database: String },
}

impl Source {
    fn pids(&self) -> Vec<u32> {
        match self {
            Source::Pid(pid) => vec![*pid],
            Source::Listener(port) => listener_pid(*port).into_iter().collect(),
            Source::Postgres { database } => postgres_pids(database),
        }
    }
}

/// CPU and memory of the named parts of a stack between two snapshots: CPU is summed over a
/// part's processes (a process that exits between the snapshots takes its CPU with it), peak RSS
/// is the largest process's.
pub struct Meter {
    parts: Vec<(&'static str, Source)>,
}

/// Per part, per process: the counters at one moment.
pub struct Snapshot(Vec<(&'static str, HashMap<u32, Stats>)>);

/// One part's cost over an interval.
#[derive(Debug, Clone)]
pub struct Usage {
    pub part: &'static str,
    pub cpu_secs: f64,
    pub peak_rss_mib: f64,
}

impl Meter {
    pub fn new(parts: Vec<(&'static str, Source)>) -> Meter {
        Meter { parts }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.parts
                .iter()
                .map(|(name, source)| {
                    let stats = source
                        .pids()
                        .into_iter()
                        .map(|p| (p, Stats::of(p)))
                        .collect();
                    (*name, stats)
                })
                .collect(),
        )
    }
}

impl Snapshot {
    /// What each part cost since `before` (matched by part name: a restarted process counts
    /// from its start).
    pub fn since(&self, before: &Snapshot) -> Vec<Usage> {
        self.0
            .iter()
            .map(|(part, now)| {
                let then = before.0.iter().find(|(p, _)| p == part).map(|(_, s)| s);
                let cpu_secs = now
                    .iter()
                    .map(|(pid, s)| {
                        let earlier = then.and_then(|t| t.get(pid)).map_or(0.0, |e| e.cpu_secs);
                        s.cpu_secs - earlier
                    })
                    .sum();
                let peak_rss_mib = now.values().map(|s| s.peak_rss_mib).fold(0.0, f64::max);
                Usage {
                    part,
                    cpu_secs,
                    peak_rss_mib,
                }
            })
            .collect()
    }
}

/// The pid whose open sockets include the one listening on `port` (from /proc/net/tcp).
fn listener_pid(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit_once(':')?.1;
        let listening = fields.get(3) == Some(&"0A");
        (listening && u16::from_str_radix(local_port, 16).ok()? == port)
            .then(|| fields.get(9).map(|i| format!("socket:[{i}]")))
            .flatten()
    })?;
    all_pids().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == inode.as_str())
            })
        })
    })
}

/// PostgreSQL processes by their titles: `postgres: [cluster:] user database host(port) state`
/// for backends, `postgres: [cluster:] checkpointer` and the like for the server's own.
fn postgres_pids(database: &str) -> Vec<u32> {
    const SERVER: [&str; 4] = [
        "checkpointer",
        "background writer",
        "walwriter",
        "autovacuum launcher",
    ];
    all_pids()
        .into_iter()
        .filter(|pid| {
            let Ok(title) = std::fs::read_to_string(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let title = title.trim_end_matches('\0').trim_end();
            title.starts_with("postgres: ")
                && (title.split_whitespace().any(|w| w == database)
                    || SERVER.iter().any(|s| title.ends_with(s)))
        })
        .collect()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
