//! A real `mosquitto` on a free port, with persistence in a directory of its own.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::wait::{free_port, wait_for};

/// A real `mosquitto` on a free port, with persistence in a directory of its own.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Appended to the generated configuration (e.g. a `connection` bridge section).
    extra_config: String,
}

impl Broker {
    pub async fn start() -> Broker {
        Broker::start_with("").await
    }

    pub async fn start_with(extra_config: &str) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        // Run as root, mosquitto switches to its own user, which must be able to write here.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .expect("chmod");
        }
        let mut broker = Broker {
            port: free_port(),
            dir,
            child: None,
            extra_config: extra_config.to_owned(),
        };
        broker.launch().await;

        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    async fn launch(&mut self) {
        let dir = self.dir.path().display();
        // Unlimited queues: these brokers stand in for ones configured not to drop, so that a
        // lost message in a test is the bridge's fault and nobody else's.
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {dir}/\n\
             autosave_interval 1\nmax_queued_messages 0\nmax_queued_bytes 0\nlog_dest file {dir}/mosquitto.log\n",
            port = self.port
        ) + &self.extra_config;

        std::fs::write(self.config_path(), config).expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto runs (scripts/test.sh installs it)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_for(
            Duration::from_secs(10),
            "mosquitto accepting connections",
            || async { tokio::net::TcpStream::connect(&addr).await.is_ok() },
        )
        .await;
    }

    /// Stops the broker the way an orchestrator does (SIGTERM: it saves its persistence file).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}
