//! The happy path: discovery, the envelope contract, concurrency, bad input.

use std::collections::HashSet;
use std::time::Duration;

use gito_bridge::metrics::{DropReason, Metrics};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{Collector, Device, RunningBridge, Stack, reading, wait};

const BOILER: &str = "SDE11/JAX/UTILITIES/BOILER/OPT_G";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_path_becomes_one_untyped_device_and_messages_follow_the_envelope_contract() {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let bridge = RunningBridge::start(stack.config()).await;
    let started = OffsetDateTime::now_utc();

    let mut device = Device::connect(&stack.external.url()).await;
    device
        .publish(&format!("{BOILER}/CHIMNEY_TEMP"), "72.5")
        .await;
    device
        .publish(
            &format!("{BOILER}/STACK"),
            r#"{"o2": 3.1, "fan": true, "ts": "2026-11-24T10:00:00Z"}"#,
        )
        .await;
    device.publish("thermostat", "open").await;
    device.finish().await;
    wait(
        Duration::from_secs(15),
        "three messages republished",
        || async { collector.count() >= 3 },
    )
    .await;

    let devices = stack.devices().await;
    assert_eq!(devices.len(), 2, "{devices:#?}");
    let boiler = devices
        .iter()
        .find(|d| d["external_id"] == BOILER)
        .expect("boiler device");
    assert_eq!(boiler["name"], BOILER);
    assert_eq!(boiler["device_type"], "SDE11");
    assert_eq!(boiler["device_type_id"], Value::Null);
    let thermostat = devices
        .iter()
        .find(|d| d["external_id"] == "thermostat")
        .expect("thermostat device");
    assert_eq!(thermostat["device_type"], "thermostat");

    let received = collector.all();
    let topic_of = |d: &Value| {
        format!(
            "{}/devices/{}/telemetry",
            stack.tenant,
            d["id"].as_str().expect("id")
        )
    };
    let temp = received
        .iter()
        .find(|r| r.envelope["metrics"].get("CHIMNEY_TEMP").is_some())
        .expect("temp");
    assert_eq!(temp.topic, topic_of(boiler));
    assert_eq!(
        temp.envelope["source_topic"],
        format!("{BOILER}/CHIMNEY_TEMP")
    );
    assert_eq!(temp.envelope["metrics"], json!({ "CHIMNEY_TEMP": 72.5 }));
    let ts = OffsetDateTime::parse(temp.envelope["ts"].as_str().expect("ts"), &Rfc3339)
        .expect("RFC 3339");
    assert!(
        ts >= started - Duration::from_secs(1) && ts <= OffsetDateTime::now_utc(),
        "receive time when the payload has none"
    );
    let stack_reading = received
        .iter()
        .find(|r| r.envelope["metrics"].get("o2").is_some())
        .expect("stack");
    assert_eq!(stack_reading.topic, topic_of(boiler));
    assert_eq!(
        stack_reading.envelope["ts"], "2026-11-24T10:00:00Z",
        "event time from the payload"
    );
    assert_eq!(
        stack_reading.envelope["metrics"],
        json!({ "o2": 3.1, "fan": true })
    );
    let text = received
        .iter()
        .find(|r| r.topic == topic_of(thermostat))
        .expect("thermostat");
    assert_eq!(text.envelope["metrics"], json!({ "value": "open" }));

    assert_eq!(
        bridge
            .metrics
            .devices_created
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_publishers_fifty_new_devices_two_thousand_messages_yield_fifty_devices_and_every_message()
 {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let bridge = RunningBridge::start(stack.config()).await;

    // Every publisher walks the same 50 new device paths, so first sightings race each other.
    let publishers = (0..4u64).map(|p| {
        let url = stack.external.url();
        tokio::spawn(async move {
            let mut device = Device::connect(&url).await;
            for i in 0..500u64 {
                let topic = format!("SDE11/SITE/AREA/SYS/DEV{:02}/P{p}", i % 50);
                device.publish(&topic, reading(i)).await;
            }
            device.finish().await;
        })
    });
    for publisher in futures::future::join_all(publishers).await {
        publisher.expect("publisher");
    }
    let expected: Vec<(String, u64)> = (0..4u64)
        .flat_map(|p| {
            (0..500u64).map(move |i| (format!("SDE11/SITE/AREA/SYS/DEV{:02}/P{p}", i % 50), i))
        })
        .collect();
    collector
        .wait_for_all(&expected, Duration::from_secs(60))
        .await;

    assert_eq!(collector.count(), 2000, "no duplicates on the happy path");
    collector.assert_ordered_per_source();
    let devices = stack.devices().await;
    assert_eq!(devices.len(), 50);
    let ids: HashSet<&str> = devices
        .iter()
        .map(|d| d["external_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 50);
    assert_eq!(
        bridge
            .metrics
            .devices_created
            .load(std::sync::atomic::Ordering::Relaxed),
        50
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_counted_by_reason_and_skipped_while_valid_traffic_continues() {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let mut config = stack.config();
    config.max_payload_bytes = 1024;
    let metrics_port = gito_testkit::free_port();
    config.metrics_addr = Some(format!("127.0.0.1:{metrics_port}").parse().expect("addr"));
    let bridge = RunningBridge::start(config).await;

    let mut device = Device::connect(&stack.external.url()).await;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("plant/d1/v", vec![0xff, 0xfe, 0xfd]),
        ("plant/d1/v", b"NaN".to_vec()),
        ("plant/d1/v", vec![b'7'; 2048]),
        ("plant/d1/v", br#"{"v": 1, "ts": "not a time"}"#.to_vec()),
        ("plant/d1/v", br#"{"label": "no numbers"}"#.to_vec()),
        ("plant//v", b"1".to_vec()),
    ];
    for seq in 0..20u64 {
        device.publish("plant/d1/v", reading(seq)).await;
        if let Some((topic, payload)) = bad.get(seq as usize) {
            device.publish(topic, payload.clone()).await;
        }
    }
    device.finish().await;
    let expected: Vec<(String, u64)> = (0..20).map(|seq| ("plant/d1/v".to_owned(), seq)).collect();
    collector
        .wait_for_all(&expected, Duration::from_secs(20))
        .await;
    assert_eq!(
        collector.count(),
        20,
        "only the valid messages are republished"
    );

    for reason in [
        DropReason::InvalidUtf8,
        DropReason::NonFinite,
        DropReason::TooLarge,
        DropReason::InvalidTimestamp,
        DropReason::NoMetrics,
        DropReason::InvalidTopic,
    ] {
        assert_eq!(
            bridge.metrics.dropped_total(reason),
            1,
            "{}",
            reason.as_str()
        );
    }
    let republished = bridge.metrics.clone();
    wait(Duration::from_secs(10), "the last PUBACKs counted", || {
        let republished = republished.clone();
        async move {
            republished
                .republished
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 20
        }
    })
    .await;
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("metrics endpoint")
        .text()
        .await
        .expect("text");
    // The page is the process's (other bridges of this test binary count into it too): the
    // series are there; the exact amounts are this bridge's own counts, and scrape.rs checks
    // the page's amounts against a bridge process of its own.
    for series in [
        "gito_bridge_dropped_total{reason=\"invalid_utf8\"}",
        "gito_bridge_received_total",
        "gito_bridge_republished_total",
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
    let count = |c: &gito_bridge::metrics::Count| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(count(&bridge.metrics.received), 26);
    assert_eq!(count(&bridge.metrics.republished), 20);
    assert!(Metrics::is(&bridge.metrics.external_connected));
    bridge.stop().await;
}

/// A burst three times larger than any queue inside the bridge arrives completely and in order.
/// (The bench found acks dropped when rumqttc's request channel was full, which stalled the
/// session; acks now wait for room in their own task, so that cannot happen by construction.)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_every_internal_queue_arrives_completely() {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let bridge = RunningBridge::start(stack.config()).await;
    let mut device = Device::connect(&stack.external.url()).await;
    let expected: Vec<(String, u64)> = (0..12_000u64)
        .map(|seq| (format!("BURST/D{}/v", seq % 10), seq))
        .collect();
    for (topic, seq) in &expected {
        device.publish(topic, reading(*seq)).await;
    }
    device.finish().await;
    collector
        .wait_for_all(&expected, Duration::from_secs(90))
        .await;
    collector.assert_ordered_per_source();
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_with_sql_metacharacters_and_unicode_become_devices_verbatim() {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let bridge = RunningBridge::start(stack.config()).await;
    let paths = [
        "plant/'; DROP TABLE devices; --/PUMP",
        "usine/chaudière Ünïcödé 🚀/雨水",
        r#"a/%_\"quoted\"/x"#,
    ];
    let mut device = Device::connect(&stack.external.url()).await;
    for path in paths {
        device.publish(&format!("{path}/TEMP"), "1.5").await;
    }
    device.finish().await;
    wait(
        Duration::from_secs(15),
        "three messages republished",
        || async { collector.count() >= 3 },
    )
    .await;
    let devices = stack.devices().await;
    let mut external_ids: Vec<&str> = devices
        .iter()
        .map(|d| d["external_id"].as_str().expect("external_id"))
        .collect();
    external_ids.sort_unstable();
    let mut expected = paths.to_vec();
    expected.sort_unstable();
    assert_eq!(external_ids, expected, "stored exactly as published");
    assert!(
        collector
            .all()
            .iter()
            .all(|r| r.envelope["metrics"] == json!({ "TEMP": 1.5 }))
    );
    bridge.stop().await;
}
