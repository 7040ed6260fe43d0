//! A PostgreSQL server of the test's own, for the scenario that restarts it: the machine's shared
//! server carries every other test's database and must never be touched. `initdb` and `pg_ctl`
//! run as the `postgres` OS user (the server refuses to run as root), in a directory under the
//! test's tempdir, on a free port, trust authentication on 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::process::Command;

use gito_testkit::free_port;

pub struct PrivatePostgres {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    running: bool,
}

impl PrivatePostgres {
    /// `initdb`s a cluster under `dir` and starts it; `log` receives the server's output.
    pub async fn start(dir: &Path, log: &Path) -> PrivatePostgres {
        let bin = pg_bin_dir();
        let data = dir.join("pgdata");
        std::fs::create_dir_all(dir).expect("postgres dir");
        run_checked(
            Command::new("chown").arg("-R").arg("postgres:").arg(dir),
            "chown the private PostgreSQL's directory",
        )
        .await;
        // The log is appended by the server, running as postgres.
        std::fs::write(log, "").expect("create the PostgreSQL log");
        run_checked(
            Command::new("chown").arg("postgres:").arg(log),
            "chown the PostgreSQL log",
        )
        .await;
        run_checked(
            as_postgres(&bin.join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "-D",
                ])
                .arg(&data),
            "initdb",
        )
        .await;
        let mut server = PrivatePostgres {
            port: free_port(),
            data,
            log: log.to_owned(),
            running: false,
        };
        server.start_again().await;
        server
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub async fn start_again(&mut self) {
        let options = format!(
            "-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            port = self.port,
            sockets = self.data.display()
        );
        run_checked(
            as_postgres(&pg_bin_dir().join("pg_ctl"))
                .arg("start")
                .arg("-w")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .arg("-o")
                .arg(options),
            "pg_ctl start",
        )
        .await;
        self.running = true;
    }

    /// `pg_ctl stop -m <mode>`: `fast` as an orchestrator does, `immediate` as a crash.
    pub async fn stop(&mut self, mode: &str) {
        run_checked(
            as_postgres(&pg_bin_dir().join("pg_ctl"))
                .args(["stop", "-w", "-m", mode, "-D"])
                .arg(&self.data),
            "pg_ctl stop",
        )
        .await;
        self.running = false;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin_dir().join("pg_ctl"))
                .args(["stop", "-w", "-m", "immediate", "-D"])
                .arg(&self.data)
                .output();
        }
    }
}

/// `/usr/lib/postgresql/<newest>/bin`, where Debian installs the server binaries.
fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|bin| bin.join("initdb").is_file());
    versions.sort();
    versions.pop().expect(
        "PostgreSQL server binaries in /usr/lib/postgresql/*/bin (scripts/test.sh installs them)",
    )
}

fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

async fn run_checked(command: &mut Command, what: &str) -> Output {
    let output = command
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
