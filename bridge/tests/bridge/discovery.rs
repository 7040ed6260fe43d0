//! Discovery at fleet scale: new device paths are found or created through the batch endpoint, a
//! thousand per call, and the path → device map outlives the bridge, so that a restart (graceful
//! or SIGKILL) asks the API for none of the devices it knew.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gito_testkit::Scrape;
use tokio::process::{Child, Command};

use crate::helpers::{Collector, Device, RunningBridge, Stack, bridge_binary, reading, wait};

const DEVICES: u64 = 2000;
const DEADLINE: Duration = Duration::from_secs(60);

fn topic(device: u64) -> String {
    format!("FLEET/D{device:04}/v")
}

/// One message per device, seq `round`; the keys the collector will see.
async fn publish_round(stack: &Stack, round: u64) -> Vec<(String, u64)> {
    let mut device = Device::connect(&stack.external.url()).await;
    let mut keys = Vec::new();
    for d in 0..DEVICES {
        device.publish(&topic(d), reading(round)).await;
        keys.push((topic(d), round));
    }
    device.finish().await;
    keys
}

/// The `gito-bridge` binary on this stack, serving its metrics (its own recorder: counts start
/// at zero) on a free port.
async fn start_binary(stack: &Stack) -> (Child, u16) {
    let port = gito_testkit::free_port();
    let bridge = Command::new(bridge_binary())
        .envs(stack.env())
        .env("GITO_BRIDGE_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("gito-bridge starts");
    wait(Duration::from_secs(15), "bridge subscribed", || async {
        scrape(port)
            .await
            .is_some_and(|s| s.value("gito_bridge_external_connected", &[]) == 1.0)
    })
    .await;
    (bridge, port)
}

async fn scrape(port: u16) -> Option<Scrape> {
    Scrape::get(&format!("http://127.0.0.1:{port}/metrics"), None).await
}

/// A round through a restarted binary arrives with no call to the API at all.
async fn round_without_api_calls(stack: &Stack, collector: &Collector, port: u16, round: u64) {
    let keys = publish_round(stack, round).await;
    collector.wait_for_all(&keys, DEADLINE).await;
    // The bridge counts a republish once the local broker acknowledges it, which can come after
    // the collector has the message (a clean-clone CI run scraped one message short).
    wait(DEADLINE, "every republish counted", || async {
        scrape(port)
            .await
            .is_some_and(|s| s.value("gito_bridge_republished_total", &[]) >= DEVICES as f64)
    })
    .await;
    let after = scrape(port).await.expect("scrape");
    assert_eq!(after.value("gito_bridge_batch_calls_total", &[]), 0.0);
    assert_eq!(after.value("gito_bridge_api_errors_total", &[]), 0.0);
    assert_eq!(after.value("gito_bridge_devices_created_total", &[]), 0.0);
    assert_eq!(
        after.value("gito_bridge_api_request_duration_seconds_count", &[]),
        0.0,
        "no request to the API"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_new_devices_are_found_in_a_few_batch_calls_and_a_restart_asks_for_none_again()
{
    let mut stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;

    // Discovered while the API is down: every message waits in the spool, then the drainer asks
    // for the new paths a thousand at a time.
    stack.stop_api().await;
    let bridge = RunningBridge::start(stack.config()).await;
    let mut sent = publish_round(&stack, 0).await;
    sent.extend(publish_round(&stack, 1).await);
    let metrics = bridge.metrics.clone();
    wait(DEADLINE, "everything spooled", || async {
        metrics.spooled.load(Ordering::SeqCst) >= 2 * DEVICES
    })
    .await;
    stack.start_api().await;
    collector.wait_for_all(&sent, DEADLINE).await;
    let created = metrics.devices_created.load(Ordering::SeqCst);
    let calls = metrics.batch_calls.load(Ordering::SeqCst);
    assert_eq!(created, DEVICES);
    assert!(
        (2..=4).contains(&calls),
        "{DEVICES} new paths in {calls} batch calls (1000 per call, give or take a spool read cut short)"
    );
    assert_eq!(stack.devices().await.len(), DEVICES as usize);
    collector.assert_one_identity_per_message();
    collector.assert_ordered_per_source();
    bridge.stop().await;

    // Restarted after a graceful stop: every device is known.
    let (mut bridge, port) = start_binary(&stack).await;
    round_without_api_calls(&stack, &collector, port, 2).await;
    // And after a SIGKILL.
    bridge.kill().await.expect("SIGKILL");
    let (mut bridge, port) = start_binary(&stack).await;
    round_without_api_calls(&stack, &collector, port, 3).await;
    collector.assert_one_identity_per_message();
    collector.assert_ordered_per_source();
    assert_eq!(stack.devices().await.len(), DEVICES as usize);
    bridge.kill().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_the_api_refuses_in_a_batch_is_dropped_alone_and_the_others_are_created() {
    let mut stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    stack.stop_api().await;
    let bridge = RunningBridge::start(stack.config()).await;
    let mut device = Device::connect(&stack.external.url()).await;
    let mut good = Vec::new();
    for seq in 0..20 {
        let topic = format!("BATCH/D{seq:02}/v");
        device.publish(&topic, reading(seq)).await;
        good.push((topic, seq));
        if seq % 10 == 5 {
            // A device name with a leading space: the API refuses it (422), so the whole batch.
            device.publish(" BATCH/BAD/v", reading(seq)).await;
        }
    }
    device.finish().await;
    let metrics = bridge.metrics.clone();
    wait(DEADLINE, "everything spooled", || async {
        metrics.spooled.load(Ordering::SeqCst) >= 22
    })
    .await;
    stack.start_api().await;
    collector.wait_for_all(&good, DEADLINE).await;
    wait(DEADLINE, "the refused path's messages counted", || async {
        metrics.dropped_total(gito_bridge::metrics::DropReason::ApiRejected) >= 2
    })
    .await;
    assert_eq!(
        metrics.dropped_total(gito_bridge::metrics::DropReason::ApiRejected),
        2
    );
    assert_eq!(metrics.devices_created.load(Ordering::SeqCst), 20);
    assert_eq!(stack.devices().await.len(), 20);
    assert!(
        collector.all().iter().all(|r| r.key().0 != " BATCH/BAD/v"),
        "nothing of the refused path"
    );
    collector.assert_one_identity_per_message();
    collector.assert_ordered_per_source();
    bridge.stop().await;
}
