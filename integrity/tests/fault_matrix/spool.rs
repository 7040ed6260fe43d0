//! The spool's disk fills up (ENOSPC) while the local broker is down: the bridge must stop
//! acknowledging what it cannot write (the external broker keeps it), never tear or strand an
//! acknowledged record, and deliver everything once the broker is back and the spool drains.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::publisher::{Plan, Publisher};
use crate::stack::{Options, Stack};
use crate::turn;
use crate::wait::wait_for;

/// A tmpfs of `size` mounted at `path` (root only); unmounted (lazily) when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let output = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("mount runs");
        assert!(
            output.status.success(),
            "cannot mount a tmpfs at {} (the spool ENOSPC scenario needs root): {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Bytes in the files under it.
    fn used(&self) -> u64 {
        std::fs::read_dir(&self.path)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_loses_nothing_acknowledged() {
    let _turn = turn().await;
    let mount = tempfile::tempdir().expect("tempdir");
    let tmpfs = Tmpfs::mount(&mount.path().join("spool"), "256k");
    let mut stack = Stack::start(Options {
        spool_dir: Some(tmpfs.path.clone()),
        ..Options::default()
    })
    .await;
    let plan = Plan::new("ENOSPC", 10, 3000, 600);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    stack.wait_stored(plan.prefix, 200).await;

    // The local broker down: the bridge spools, and 256 KiB hold about a thousand messages.
    stack.stop_local_broker().await;
    wait_for(Duration::from_secs(30), "the spool's disk full", || async {
        tmpfs.used() >= 240 * 1024
    })
    .await;
    let spooled = stack.bridge_metric("gito_bridge_spooled_total").await;
    // The external broker acknowledged every message; those the bridge could not write stay
    // there, unacknowledged by the bridge.
    devices.finish().await;
    stack.start_local_broker().await;

    let report = stack.settle(plan.prefix, &plan.all()).await;
    let scenario = format!(
        "spool ENOSPC (256 KiB tmpfs filled: {} KiB written, {spooled:?} spooled)",
        tmpfs.used() / 1024
    );
    report.print(&scenario);
    report.assert_exact(&scenario);
    drop(stack);
}
