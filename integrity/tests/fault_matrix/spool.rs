//! The spool's disk fills up (ENOSPC) while the bridge cannot forward: it must stop
//! acknowledging what it cannot write (the external broker keeps it), never tear or strand an
//! acknowledged record, and deliver everything once it can forward again and the spool drains.
//!
//! The bridge is sent to its spool by stopping gito-api while new device paths keep appearing
//! (an unknown device cannot be resolved), not by stopping the local broker: a local broker
//! restart is a scenario of its own (processes.rs), and this one is about the spool alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::publisher::{Layout, Plan, Publisher};
use crate::stack::{Options, Stack};
use crate::turn;
use gito_testkit::wait_for;

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
    // A new device path every 5 messages, to the end of the stream.
    let plan = Plan::new("ENOSPC", 600, 3000, 600).layout(Layout::Blocks(5));
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    stack.wait_stored(plan.prefix, 200).await;

    // The API down: the next new device sends the bridge to its spool, and everything after
    // goes there too; 256 KiB hold about a thousand messages.
    stack.stop_api().await;
    wait_for(Duration::from_secs(30), "the spool's disk full", || async {
        tmpfs.used() >= 240 * 1024
    })
    .await;
    let spooled = stack.bridge_metric("gito_bridge_spooled_total").await;
    // The external broker acknowledged every message; those the bridge could not write stay
    // there, unacknowledged by the bridge.
    devices.finish().await;
    stack.start_api().await;

    let report = stack.settle(plan.prefix, &plan.all()).await;
    // Not received is not lost: the external broker still holds it. But it never came.
    let received = stack.bridge_metric("gito_bridge_received_total").await;
    let scenario = format!(
        "spool ENOSPC (256 KiB tmpfs filled: {} KiB written, {spooled:?} spooled, the bridge \
         received {received:?} in all, probes included)",
        tmpfs.used() / 1024
    );
    report.print(&scenario);
    report.assert_exact(&scenario);
    drop(stack);
}

/// The seam's source; compiled per run with the system C compiler.
const EIO_SHIM: &str = include_str!("eio_shim.c");

/// Builds the EIO seam into `dir`; returns the shared object's path.
fn build_eio_shim(dir: &Path) -> PathBuf {
    let source = dir.join("eio_shim.c");
    let library = dir.join("libfm_eio.so");
    std::fs::write(&source, EIO_SHIM).expect("write the seam's source");
    let output = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("cc runs (the spool EIO scenario needs a C compiler)");
    assert!(
        output.status.success(),
        "building the EIO seam: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    library
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_writes_failing_with_eio_mid_append_lose_nothing_acknowledged() {
    let _turn = turn().await;
    let work = tempfile::tempdir().expect("tempdir");
    let library = build_eio_shim(work.path());
    let spool_dir = work.path().join("spool");
    let (flag, faults) = (work.path().join("eio-on"), work.path().join("eio.log"));
    let mut stack = Stack::start(Options {
        spool_dir: Some(spool_dir.clone()),
        bridge_env: vec![
            ("LD_PRELOAD", library.display().to_string()),
            ("FM_EIO_DIR", spool_dir.display().to_string()),
            ("FM_EIO_FLAG", flag.display().to_string()),
            ("FM_EIO_LOG", faults.display().to_string()),
        ],
        ..Options::default()
    })
    .await;
    let plan = Plan::new("EIO", 600, 3000, 600).layout(Layout::Blocks(5));
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    stack.wait_stored(plan.prefix, 200).await;

    // To the spool (the API down, new devices keep coming), then its disk fails mid-append for
    // as long as the bridge takes to receive 300 more messages, then recovers.
    stack.stop_api().await;
    stack
        .wait_bridge_metric_rise("gito_bridge_spooled_total", 200, Duration::from_secs(20))
        .await;
    std::fs::write(&flag, "").expect("switch the seam on");
    // (At most 5 s: a bridge that stops taking messages while it cannot write stalls the count.)
    let received = "gito_bridge_received_total";
    let before = stack.bridge_metric(received).await.unwrap_or(0);
    let failing_since = std::time::Instant::now();
    while stack.bridge_metric(received).await.unwrap_or(0) < before + 300
        && failing_since.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(&flag).expect("switch the seam off");
    let injected = std::fs::read_to_string(&faults)
        .unwrap_or_default()
        .lines()
        .count();

    devices.finish().await;
    stack.start_api().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    let scenario = format!("spool EIO mid-append ({injected} faults injected)");
    report.print(&scenario);
    assert!(injected > 0, "the seam never fired: {scenario}");
    report.assert_exact(&scenario);
}
