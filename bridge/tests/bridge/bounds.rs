//! What keeps the bridge bounded, and how it learns that a device is gone: a device cache with
//! a size, a budget of new devices per minute, deletions announced on `{tenant}/device-events`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use gito_wire::{DeviceEvent, DeviceEventsTopic};
use uuid::Uuid;

use crate::helpers::{Collector, Device, RunningBridge, Stack, reading, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_cache_and_a_spent_budget_delay_new_devices_but_lose_nothing() {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let mut config = stack.config();
    config.device_cache_max = 8;
    config.max_new_devices_per_minute = 60;
    let bridge = RunningBridge::start(config).await;

    // 66 new paths against a budget of 60 at once (then one a second), each publishing twice,
    // interleaved so that the cache of 8 keeps evicting.
    let mut device = Device::connect(&stack.external.url()).await;
    let mut sent = Vec::new();
    for round in 0..2u64 {
        for path in 0..66u64 {
            let topic = format!("BOUND/P{path:02}/v");
            let seq = round * 100 + path;
            device.publish(&topic, reading(seq)).await;
            sent.push((topic, seq));
        }
    }
    device.finish().await;
    collector.wait_for_all(&sent, Duration::from_secs(60)).await;
    collector.assert_ordered_per_source();
    // Spilling can republish a message twice: with one identity, stored once.
    collector.assert_one_identity_per_message();
    assert_eq!(
        stack.devices().await.len(),
        66,
        "evicted paths find their device again"
    );
    assert!(
        bridge.metrics.device_budget_waits.load(Ordering::Relaxed) > 0,
        "the paths over the budget waited"
    );
    assert!(bridge.metrics.spooled.load(Ordering::Relaxed) > 0);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_announced_as_deleted_comes_back_as_a_new_device_on_its_next_message() {
    let stack = Stack::start().await;
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let bridge = RunningBridge::start(stack.config()).await;
    let mut device = Device::connect(&stack.external.url()).await;
    device.publish("GONE/PUMP/v", reading(1)).await;
    wait(Duration::from_secs(10), "first message", || async {
        collector.count() >= 1
    })
    .await;
    let first = collector.all()[0].topic.clone();
    let devices = stack.devices().await;
    let old: Uuid = devices[0]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("id");

    // What gito-api does when the device is deleted: DELETE, then the announcement.
    let status = reqwest::Client::new()
        .delete(format!(
            "http://{}/tenants/{}/devices/{old}",
            stack.api_addr, stack.tenant
        ))
        .bearer_auth(&stack.token)
        .send()
        .await
        .expect("delete")
        .status();
    assert_eq!(status, 204);
    let event = DeviceEvent::DeviceDeleted {
        tenant_id: stack.tenant,
        device_id: old,
        external_id: Some("GONE/PUMP".into()),
    };
    gito_testkit::publish_all(
        &stack.local.url(),
        vec![(
            DeviceEventsTopic {
                tenant_id: stack.tenant,
            }
            .to_string(),
            event.to_json().into_bytes(),
        )],
    )
    .await;
    wait(
        Duration::from_secs(10),
        "the bridge forgot the device",
        || async { bridge.metrics.devices_forgotten.load(Ordering::Relaxed) == 1 },
    )
    .await;

    device.publish("GONE/PUMP/v", reading(2)).await;
    device.finish().await;
    wait(Duration::from_secs(10), "second message", || async {
        collector.count() >= 2
    })
    .await;
    let second = collector.all()[1].topic.clone();
    assert_ne!(first, second, "published under the new device's id");
    let devices = stack.devices().await;
    assert_eq!(devices.len(), 1);
    assert_ne!(devices[0]["id"].as_str(), Some(old.to_string().as_str()));
    assert!(devices[0]["device_type_id"].is_null(), "unassigned");
    bridge.stop().await;
}
