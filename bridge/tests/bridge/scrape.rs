//! The bridge's `/metrics`, scraped from the real `gito-bridge` binary while messages flow (its
//! recorder is its own, so counts move by exactly what the test did) and parsed with a real
//! Prometheus text parser: the outcomes, the spool gauges, and series that do not multiply with
//! devices.

use std::process::Stdio;
use std::time::Duration;

use gito_testkit::Scrape;
use tokio::process::Command;

use crate::helpers::{Collector, Device, Stack, bridge_binary, reading, wait};

const DEADLINE: Duration = Duration::from_secs(30);

async fn scrape(port: u16) -> Option<Scrape> {
    Scrape::get(&format!("http://127.0.0.1:{port}/metrics"), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_messages_move_the_bridge_series_by_exactly_that_and_the_spool_is_measured() {
    let mut stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let port = gito_testkit::free_port();
    let mut bridge = Command::new(bridge_binary())
        .envs(stack.env())
        .env("GITO_BRIDGE_METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("gito-bridge starts");
    wait(DEADLINE, "bridge subscribed", || async {
        scrape(port)
            .await
            .is_some_and(|s| s.value("gito_bridge_external_connected", &[]) == 1.0)
    })
    .await;
    let before = scrape(port).await.expect("scrape");
    assert_eq!(
        before.value("gito_bridge_messages_total", &[("outcome", "republished")]),
        0.0
    );
    assert_eq!(
        before.value("gito_bridge_dropped_total", &[("reason", "invalid_utf8")]),
        0.0
    );
    assert_eq!(before.value("gito_bridge_spool_bytes", &[]), 0.0);

    let mut device = Device::connect(&stack.external.url()).await;
    for seq in 0..100 {
        device
            .publish(&format!("PLANT/D{:02}/v", seq % 10), reading(seq))
            .await;
    }
    device.publish("PLANT/D00/v", b"\xff\xfe".to_vec()).await;
    device.finish().await;
    wait(DEADLINE, "100 republished, 1 dropped", || async {
        scrape(port).await.is_some_and(|s| {
            s.value("gito_bridge_messages_total", &[("outcome", "republished")]) >= 100.0
                && s.value(
                    "gito_bridge_messages_total",
                    &[("outcome", "dropped_invalid_utf8")],
                ) >= 1.0
        })
    })
    .await;
    let after = scrape(port).await.expect("scrape");
    assert_eq!(collector.count(), 100);
    assert_eq!(after.value("gito_bridge_received_total", &[]), 101.0);
    assert_eq!(after.value("gito_bridge_republished_total", &[]), 100.0);
    assert_eq!(
        after.value("gito_bridge_messages_total", &[("outcome", "republished")]),
        100.0
    );
    assert_eq!(
        after.value(
            "gito_bridge_messages_total",
            &[("outcome", "dropped_invalid_utf8")]
        ),
        1.0
    );
    assert_eq!(
        after.value("gito_bridge_dropped_total", &[("reason", "invalid_utf8")]),
        1.0
    );
    assert_eq!(after.value("gito_bridge_devices_created_total", &[]), 10.0);
    // Ten new paths: found in batch calls, each timed, none of them failed.
    let calls = after.value("gito_bridge_batch_calls_total", &[]);
    assert!((1.0..=10.0).contains(&calls), "{calls} batch calls");
    assert_eq!(
        after.value("gito_bridge_api_request_duration_seconds_count", &[]),
        calls
    );
    assert_eq!(after.value("gito_bridge_batch_devices_sum", &[]), 10.0);
    assert_eq!(after.value("gito_bridge_paths_waiting", &[]), 0.0);
    assert_eq!(after.value("gito_bridge_local_connected", &[]), 1.0);

    // Ten more devices: no new series.
    let mut device = Device::connect(&stack.external.url()).await;
    for seq in 0..10 {
        device
            .publish(&format!("PLANT/E{seq:02}/v"), reading(seq))
            .await;
    }
    device.finish().await;
    wait(DEADLINE, "ten more republished", || async {
        scrape(port)
            .await
            .is_some_and(|s| s.value("gito_bridge_republished_total", &[]) >= 110.0)
    })
    .await;
    assert_eq!(scrape(port).await.expect("scrape").series(), after.series());

    // The API down: messages of new devices wait on disk (in the lane for new devices), and the
    // spool's gauges say so. (Every new path's messages pass through that lane, so the counter is
    // compared with its value before.)
    let spooled_before = scrape(port)
        .await
        .expect("scrape")
        .value("gito_bridge_spooled_total", &[]);
    stack.stop_api().await;
    let mut device = Device::connect(&stack.external.url()).await;
    for seq in 0..5 {
        device
            .publish(&format!("PLANT/F{seq:02}/v"), reading(seq))
            .await;
    }
    device.finish().await;
    wait(DEADLINE, "five messages spooled", || async {
        scrape(port)
            .await
            .is_some_and(|s| s.value("gito_bridge_spool_records", &[]) == 5.0)
    })
    .await;
    let spooled = scrape(port).await.expect("scrape");
    assert!(spooled.value("gito_bridge_spool_bytes", &[]) > 0.0);
    assert!(spooled.value("gito_bridge_spool_oldest_age_seconds", &[]) > 0.0);
    assert_eq!(
        spooled.value("gito_bridge_spooled_total", &[]) - spooled_before,
        5.0
    );
    stack.start_api().await;
    wait(DEADLINE, "the spool drained", || async {
        scrape(port).await.is_some_and(|s| {
            s.value("gito_bridge_spool_records", &[]) == 0.0
                && s.value("gito_bridge_republished_total", &[]) == 115.0
        })
    })
    .await;

    // The local broker bounced: one reconnect.
    stack.local.restart().await;
    wait(DEADLINE, "reconnected to the local broker", || async {
        scrape(port).await.is_some_and(|s| {
            s.value("gito_bridge_reconnects_total", &[("broker", "local")]) == 1.0
                && s.value("gito_bridge_local_connected", &[]) == 1.0
        })
    })
    .await;
    bridge.kill().await.expect("kill");
}
