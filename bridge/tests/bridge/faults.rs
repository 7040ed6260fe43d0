//! Faults the bridge must survive without losing a message: the API down, the local broker
//! restarted, the bridge itself killed.

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gito_testkit::Scrape;
use tokio::process::Command;

use crate::helpers::{Collector, Device, RunningBridge, Stack, bridge_binary, reading, wait};

/// Publishes `count` messages over `devices` device paths at about `per_second`, in the background.
fn stream(
    url: String,
    prefix: &'static str,
    devices: u64,
    count: u64,
    per_second: u64,
) -> tokio::task::JoinHandle<Vec<(String, u64)>> {
    tokio::spawn(async move {
        let mut device = Device::connect(&url).await;
        let mut sent = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
        for seq in 0..count {
            tick.tick().await;
            let topic = format!("{prefix}/D{:03}/v", seq % devices);
            device.publish(&topic, reading(seq)).await;
            sent.push((topic, seq));
        }
        device.finish().await;
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_down_for_five_seconds_mid_stream_loses_nothing() {
    let mut stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let bridge = RunningBridge::start(stack.config()).await;

    // 400 device paths over 8 s: new devices keep appearing throughout the outage.
    let sent = stream(stack.external.url(), "OUTAGE", 400, 1600, 200);
    wait(Duration::from_secs(10), "traffic flowing", || async {
        collector.count() >= 100
    })
    .await;
    stack.stop_api().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stack.start_api().await;

    let sent = sent.await.expect("publisher");
    collector.wait_for_all(&sent, Duration::from_secs(60)).await;
    collector.assert_ordered_per_source();
    assert!(
        bridge.metrics.spooled.load(Ordering::Relaxed) > 0,
        "the outage went through the spool"
    );
    assert!(bridge.metrics.api_errors.load(Ordering::Relaxed) > 0);
    assert_eq!(
        stack.devices().await.len(),
        400,
        "one device per path, none duplicated by retries"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_local_broker_mid_stream_loses_nothing() {
    let mut stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let bridge = RunningBridge::start(stack.config()).await;

    let sent = stream(stack.external.url(), "RESTART", 20, 1500, 300);
    wait(Duration::from_secs(10), "traffic flowing", || async {
        collector.count() >= 200
    })
    .await;
    stack.local.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.local.restart().await;

    let sent = sent.await.expect("publisher");
    collector.wait_for_all(&sent, Duration::from_secs(60)).await;
    collector.assert_ordered_per_source();
    assert!(
        bridge.metrics.broker_errors.load(Ordering::Relaxed) > 0,
        "the restart was noticed"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_with_sigkill_mid_stream_and_restarted_loses_nothing() {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let metrics_port = gito_testkit::free_port();
    let start_bridge = || {
        let mut command = Command::new(bridge_binary());
        command
            .envs(stack.env())
            .env(
                "GITO_BRIDGE_METRICS_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command.spawn().expect("gito-bridge starts")
    };
    // Read with a real exposition parser: a substring search also matched the gauge's HELP line,
    // so the stream could start before the subscription and its first message went to nobody.
    let subscribed = || async move {
        Scrape::get(&format!("http://127.0.0.1:{metrics_port}/metrics"), None)
            .await
            .is_some_and(|s| s.value("gito_bridge_external_connected", &[]) == 1.0)
    };

    let mut bridge = start_bridge();
    wait(Duration::from_secs(15), "bridge subscribed", subscribed).await;
    let sent = stream(stack.external.url(), "KILL", 30, 3000, 1000);
    wait(Duration::from_secs(10), "traffic flowing", || async {
        collector.count() >= 500
    })
    .await;
    bridge.kill().await.expect("SIGKILL");
    let mut bridge = start_bridge();
    wait(
        Duration::from_secs(15),
        "restarted bridge subscribed",
        subscribed,
    )
    .await;

    let sent = sent.await.expect("publisher");
    collector.wait_for_all(&sent, Duration::from_secs(60)).await;
    let copies = collector.assert_one_identity_per_message();
    println!(
        "SIGKILL mid-stream: {} messages, {copies} republished again after the restart, each with its first identity",
        sent.len()
    );
    collector.assert_ordered_per_source();
    bridge.kill().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_tenant_spools_everything_until_the_right_token_is_configured() {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let api_url = format!("http://{}", stack.api_addr);
    let elsewhere = gito_testkit::create_tenant(&api_url, "elsewhere").await;
    let mut config = stack.config();
    config.api_token = gito_testkit::create_tenant_token(&api_url, elsewhere)
        .await
        .into();
    let bridge = RunningBridge::start(config).await;

    let sent = stream(stack.external.url(), "WRONG", 5, 50, 500)
        .await
        .expect("publisher");
    wait(Duration::from_secs(15), "all spooled", || async {
        bridge.metrics.spooled.load(Ordering::Relaxed) >= 50
    })
    .await;
    assert_eq!(collector.count(), 0);
    assert!(stack.devices().await.is_empty());
    bridge.stop().await;

    // Fixed: the same spool, the right token. Everything arrives, nothing was dropped.
    let bridge = RunningBridge::start(stack.config()).await;
    collector.wait_for_all(&sent, Duration::from_secs(30)).await;
    collector.assert_ordered_per_source();
    assert_eq!(stack.devices().await.len(), 5);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_local_broker_has_no_subscriber_for_are_held_until_one_subscribes() {
    let stack = Stack::start().await;
    let bridge = RunningBridge::start(stack.config()).await;
    // Nobody reads the local broker yet (a first start, or a processor not subscribed again
    // after a broker restart): MQTT 5 acknowledges these with "no matching subscribers".
    let sent = stream(stack.external.url(), "NOBODY", 5, 50, 200);
    let sent = sent.await.expect("publisher");
    wait(
        Duration::from_secs(10),
        "the broker said nobody listens",
        || async { bridge.metrics.no_subscribers.load(Ordering::Relaxed) >= 5 },
    )
    .await;

    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    collector.wait_for_all(&sent, Duration::from_secs(30)).await;
    collector.assert_one_identity_per_message();
    bridge.stop().await;
}
