//! The two brokers of a deployment, as real `mosquitto` processes: the plant's (anonymous,
//! persistent, unbounded queue, as docs/BRIDGE.md asks of it) and gito's own, started exactly as
//! the `mosquitto` service is — `mosquitto/init.sh` writing users and ACL, then the shipped
//! `mosquitto/mosquitto.conf` with only its paths, port and log destination rewritten.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gito_testkit::free_port;
use tokio::process::Command;
use uuid::Uuid;

use crate::procs::Proc;

/// The local broker's users, as init.sh creates them.
#[derive(Debug, Clone)]
pub struct LocalUsers {
    pub tenant: Uuid,
    pub api_password: String,
    pub bridge_password: String,
}

enum Flavor {
    External,
    Shipped(LocalUsers),
}

pub struct Mosquitto {
    pub port: u16,
    name: &'static str,
    dir: PathBuf,
    log: PathBuf,
    flavor: Flavor,
    process: Option<Proc>,
}

impl Mosquitto {
    /// The plant broker the bridge subscribes to: anonymous, persistence on (saved at SIGTERM and
    /// every second), no queue limit (so a loss is never this broker's configuration's doing).
    pub async fn external(dir: &Path, logs: &Path) -> Mosquitto {
        Mosquitto::start("external-broker", dir, logs, Flavor::External).await
    }

    /// gito's broker, configured as shipped.
    pub async fn shipped(dir: &Path, logs: &Path, users: LocalUsers) -> Mosquitto {
        Mosquitto::start("local-broker", dir, logs, Flavor::Shipped(users)).await
    }

    async fn start(name: &'static str, dir: &Path, logs: &Path, flavor: Flavor) -> Mosquitto {
        let dir = dir.join(name);
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("broker dirs");
        // Started as root, mosquitto runs as its own user, which must write its persistence here.
        for d in [&dir, &data] {
            world_writable(d);
        }
        let mut broker = Mosquitto {
            port: free_port(),
            name,
            log: logs.join(format!("{name}.log")),
            dir,
            flavor,
            process: None,
        };
        // mosquitto appends to it as its own user.
        std::fs::write(&broker.log, "").expect("create the broker's log");
        world_writable(&broker.log);
        broker.write_config();
        broker.launch().await;
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The URL with credentials of `user` (local broker only).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("mqtt://{user}:{password}@127.0.0.1:{}", self.port)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("mosquitto.conf")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn write_config(&self) {
        let (dir, log) = (self.dir.display(), self.log.display());
        let config = match &self.flavor {
            Flavor::External => format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {dir}/data/\nautosave_interval 1\nmax_queued_messages 0\n\
                 max_queued_bytes 0\nlog_dest file {log}\nlog_type error\nlog_type warning\n\
                 log_type notice\nlog_type information\n",
                port = self.port
            ),
            Flavor::Shipped(_) => {
                let shipped = std::fs::read_to_string(repo_root().join("mosquitto/mosquitto.conf"))
                    .expect("read mosquitto/mosquitto.conf");
                assert!(
                    shipped.contains("listener 1883\n")
                        && shipped.contains("/mosquitto/")
                        && shipped.contains("log_dest stdout\n"),
                    "mosquitto/mosquitto.conf changed shape: update the fault matrix's rewrite"
                );
                // Logging to a file (stdout into a file is block-buffered, and lost at a
                // SIGKILL), connections included: the one change that is not a path or a port.
                shipped
                    .replace("/mosquitto/", &format!("{dir}/"))
                    .replace(
                        "listener 1883\n",
                        &format!("listener {} 127.0.0.1\n", self.port),
                    )
                    .replace(
                        "log_dest stdout\n",
                        &format!("log_dest file {log}\nlog_type information\n"),
                    )
            }
        };
        std::fs::write(self.config_path(), config).expect("write mosquitto.conf");
    }

    fn command(&self) -> Command {
        match &self.flavor {
            Flavor::External => {
                let mut command = Command::new("mosquitto");
                command.arg("-c").arg(self.config_path());
                command
            }
            Flavor::Shipped(users) => {
                // init.sh writes the password file and the ACL, then execs mosquitto (same pid).
                let mut command = Command::new("sh");
                command
                    .arg(repo_root().join("mosquitto/init.sh"))
                    .env("MQTT_API_PASSWORD", &users.api_password)
                    .env("MQTT_BRIDGE_PASSWORD", &users.bridge_password)
                    .env("GITO_TENANT_ID", users.tenant.to_string())
                    .env("MOSQUITTO_AUTH_DIR", self.dir.join("auth"))
                    .env("MOSQUITTO_CONF", self.config_path());
                command
            }
        }
    }

    async fn launch(&mut self) {
        self.process = Some(Proc::spawn(self.name, self.command(), &self.log));
        let addr = format!("127.0.0.1:{}", self.port);
        let what = format!("{} accepting connections on {addr}", self.name);
        let deadline = Duration::from_secs(10);
        let process = self.process.as_mut().expect("just started");
        let started = tokio::time::timeout(deadline, async {
            loop {
                if let Some(status) = process.exited() {
                    return Err(status);
                }
                if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match started {
            Ok(Ok(())) => {}
            Ok(Err(status)) => panic!(
                "{} exited with {status}:\n{}",
                self.name,
                crate::procs::tail(&self.log, 20)
            ),
            Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
        }
    }

    /// SIGKILL: whatever was not yet autosaved is gone, as after an OOM kill or a host crash.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// SIGTERM: mosquitto saves its persistence file and exits.
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate(Duration::from_secs(10)).await;
        }
    }

    /// Starts again on the same port with the same data directory.
    pub async fn start_again(&mut self) {
        assert!(self.process.is_none(), "{} is still running", self.name);
        self.launch().await;
    }

    /// Deletes the persistence (the broker must be stopped): a new disk, a new container.
    pub fn wipe_data(&self) {
        assert!(self.process.is_none(), "{} is still running", self.name);
        let data = self.data_dir();
        std::fs::remove_dir_all(&data).expect("wipe the broker's data");
        std::fs::create_dir_all(&data).expect("recreate the data dir");
        world_writable(&data);
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

pub fn world_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}
