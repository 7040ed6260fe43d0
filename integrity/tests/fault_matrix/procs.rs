//! Child processes as an operator (or the kernel) treats them: started with their output in a
//! log file of their own, stopped with SIGTERM, killed with SIGKILL, frozen with SIGSTOP. Every
//! child is killed when its handle is dropped, so a failing test leaves nothing running.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use tokio::process::{Child, Command};

/// The built `gito-api` / `gito-bridge` next to this test binary (`target/debug/deps/..`), or in
/// `$GITO_BIN_DIR`. `cargo test --workspace` builds them; `cargo test -p gito-integrity` does not.
pub fn binary(name: &str) -> PathBuf {
    let chosen = std::env::var_os("GITO_BIN_DIR");
    let dir = match &chosen {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .expect("the test binary's path")
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps")
            .to_owned(),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p gito-api -p gito-bridge` \
         (`cargo test --workspace` builds it too), or point GITO_BIN_DIR at a directory holding it",
        path.display()
    );
    // Binaries chosen on purpose (e.g. built from another commit) are not this tree's.
    if chosen.is_none() {
        warn_if_stale(&path);
    }
    path
}

/// A binary older than the sources it is built from tests yesterday's code: say so once.
fn warn_if_stale(binary: &Path) {
    static WARNED: OnceLock<()> = OnceLock::new();
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = [
        "api/src",
        "bridge/src",
        "wire/src",
        "runtime/src",
        "migrations",
    ]
    .iter()
    .filter_map(|dir| newest_file(&root.join(dir)))
    .max();
    if let (Some(built), Some(newest)) = (built, newest)
        && newest > built
    {
        WARNED.get_or_init(|| {
            eprintln!(
                "fault-matrix: warning: {} is older than its sources; run `cargo build -p gito-api -p gito-bridge`",
                binary.display()
            );
        });
    }
}

fn newest_file(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let modified = if path.is_dir() {
            newest_file(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(modified);
    }
    newest
}

/// A running child process whose stdout and stderr go to `log` (appended across restarts).
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Proc {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the child's log");
        let _ = writeln!(file, "=== fault-matrix: starting {name} at {}", now());
        let err = file.try_clone().expect("clone the log handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`, ...).
    pub async fn signal(&self, signal: &str) {
        let Some(pid) = self.pid() else { return };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid} ({})", self.name);
    }

    /// SIGKILL, as the OOM killer or a crashed host would, and reaps it.
    pub async fn kill(&mut self) {
        self.note("SIGKILL");
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM, as an orchestrator stops it; SIGKILL if it has not exited within `deadline`.
    /// Returns the exit status.
    pub async fn terminate(&mut self, deadline: Duration) -> Option<ExitStatus> {
        self.note("SIGTERM");
        self.signal("TERM").await;
        let mut child = self.child.take()?;
        match tokio::time::timeout(deadline, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.note(&format!(
                    "still running {deadline:?} after SIGTERM: SIGKILL"
                ));
                let _ = child.kill().await;
                None
            }
        }
    }

    /// Freezes the process (SIGSTOP): its sockets stay open, nothing is read or sent.
    pub async fn pause(&self) {
        self.note("SIGSTOP");
        self.signal("STOP").await;
    }

    pub async fn resume(&self) {
        self.note("SIGCONT");
        self.signal("CONT").await;
    }

    /// Marks an event in the log, so the child's lines around it can be read in context.
    pub fn note(&self, what: &str) {
        if let Ok(mut file) = OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(file, "=== fault-matrix: {what} {} at {}", self.name, now());
        }
    }
}

/// Seconds since the first call, for the markers in the logs.
pub fn now() -> String {
    static START: OnceLock<Instant> = OnceLock::new();
    format!(
        "+{:.3}s",
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    )
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
