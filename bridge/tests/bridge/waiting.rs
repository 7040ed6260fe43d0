//! The waiting lane: messages of paths the bridge cannot resolve now (the API down, the creation
//! budget spent) wait on disk in a lane of their own while the messages of known devices keep
//! flowing; once the paths can be resolved, every waiting message is stored once, in order per
//! device — across a SIGKILL too.

use std::process::Stdio;
use std::time::Duration;

use gito_testkit::Scrape;
use tokio::process::{Child, Command};

use crate::helpers::{Collector, Device, RunningBridge, Stack, bridge_binary, reading, wait};

const DEADLINE: Duration = Duration::from_secs(60);
const KNOWN: &str = "LANE/KNOWN/v";
const NEW_PATHS: u64 = 3;

fn new_topic(path: u64) -> String {
    format!("LANE/NEW{path}/v")
}

/// Publishes seqs `seqs` of the known device and of every new path, interleaved; returns the
/// keys of the known device's messages and of the new paths' ones.
async fn publish_interleaved(
    device: &mut Device,
    seqs: std::ops::RangeInclusive<u64>,
) -> (Vec<(String, u64)>, Vec<(String, u64)>) {
    let (mut known, mut new) = (Vec::new(), Vec::new());
    for seq in seqs {
        device.publish(KNOWN, reading(seq)).await;
        known.push((KNOWN.to_owned(), seq));
        for path in 0..NEW_PATHS {
            device.publish(&new_topic(path), reading(seq)).await;
            new.push((new_topic(path), seq));
        }
    }
    (known, new)
}

fn stored_of_new_paths(collector: &Collector) -> usize {
    collector
        .all()
        .iter()
        .filter(|r| r.key().0.starts_with("LANE/NEW"))
        .count()
}

/// The `gito-bridge` binary on this stack with this creation budget, serving its metrics on a
/// free port.
async fn start_binary(stack: &Stack, max_new_devices_per_minute: &str) -> (Child, u16) {
    let port = gito_testkit::free_port();
    let bridge = Command::new(bridge_binary())
        .envs(stack.env())
        .env("GITO_BRIDGE_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "GITO_BRIDGE_MAX_NEW_DEVICES_PER_MINUTE",
            max_new_devices_per_minute,
        )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_device_flows_while_new_paths_wait_for_the_budget_even_across_a_sigkill() {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    // One device a minute, spent on the known device.
    let (mut bridge, port) = start_binary(&stack, "1").await;
    let mut device = Device::connect(&stack.external.url()).await;
    device.publish(KNOWN, reading(0)).await;
    collector
        .wait_for_all(&[(KNOWN.to_owned(), 0)], DEADLINE)
        .await;

    let (mut known, mut new) = publish_interleaved(&mut device, 1..=20).await;
    collector.wait_for_all(&known, DEADLINE).await;
    let now = scrape(port).await.expect("scrape");
    assert!(
        now.value("gito_bridge_spool_records", &[("lane", "waiting")]) > 0.0,
        "the new paths' messages wait in their lane"
    );
    assert!(now.value("gito_bridge_device_budget_waits_total", &[]) > 0.0);
    // The budget refills one device a minute: at most one new path may have got through.
    assert!(
        stored_of_new_paths(&collector) < new.len(),
        "the new paths waited"
    );

    // Killed while they wait; more messages of every path arrive meanwhile.
    bridge.kill().await.expect("SIGKILL");
    let (more_known, more_new) = publish_interleaved(&mut device, 21..=25).await;
    known.extend(more_known);
    new.extend(more_new);
    // Restarted without a bound: the lane is resolved and republished, and what arrives now
    // goes behind what waited.
    let (mut bridge, _port) = start_binary(&stack, "0").await;
    let (more_known, more_new) = publish_interleaved(&mut device, 26..=30).await;
    known.extend(more_known);
    new.extend(more_new);
    device.finish().await;
    known.extend(new);
    collector.wait_for_all(&known, DEADLINE).await;
    collector.assert_one_identity_per_message();
    collector.assert_ordered_per_source();
    assert_eq!(stack.devices().await.len(), 1 + NEW_PATHS as usize);
    bridge.kill().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_device_flows_while_new_paths_wait_for_the_api() {
    let mut stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let bridge = RunningBridge::start(stack.config()).await;
    let mut device = Device::connect(&stack.external.url()).await;
    device.publish(KNOWN, reading(0)).await;
    collector
        .wait_for_all(&[(KNOWN.to_owned(), 0)], DEADLINE)
        .await;

    stack.stop_api().await;
    let (mut known, new) = publish_interleaved(&mut device, 1..=20).await;
    device.finish().await;
    collector.wait_for_all(&known, DEADLINE).await;
    assert_eq!(stored_of_new_paths(&collector), 0, "the new paths waited");

    stack.start_api().await;
    known.extend(new);
    collector.wait_for_all(&known, DEADLINE).await;
    collector.assert_one_identity_per_message();
    collector.assert_ordered_per_source();
    assert_eq!(stack.devices().await.len(), 1 + NEW_PATHS as usize);
    bridge.stop().await;
}
