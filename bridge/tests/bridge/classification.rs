//! End to end through the bridge (#16): a classification rule of the tenant classifies the
//! devices the bridge discovers as it creates them, with no change to the bridge.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Device, RunningBridge, Stack, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_bridge_discovers_arrives_classified_by_the_tenants_rule() {
    let stack = Stack::start().await;
    let api = stack.api.as_ref().expect("the API runs");
    let (status, kind) = api
        .post(
            &format!("/tenants/{}/device-types", stack.tenant),
            json!({ "name": "boiler" }),
        )
        .await;
    assert!(status.is_success(), "{kind}");
    let (status, rule) = api
        .post(
            &format!("/tenants/{}/classification-rules", stack.tenant),
            json!({ "pattern": "SDE11/+/UTILITIES/BOILER/+", "device_type_id": kind["id"] }),
        )
        .await;
    assert!(status.is_success(), "{rule}");
    let bridge = RunningBridge::start(stack.config()).await;

    let mut device = Device::connect(&stack.external.url()).await;
    device
        .publish("SDE11/B3/UTILITIES/BOILER/T1/CHIMNEY_TEMP", "72.5")
        .await;
    device
        .publish("SDE11/B3/UTILITIES/PUMP/P1/RPM", "1400")
        .await;
    device.finish().await;
    wait(
        Duration::from_secs(15),
        "two devices discovered",
        || async { stack.devices().await.len() == 2 },
    )
    .await;

    let devices = stack.devices().await;
    let type_of = |external_id: &str| {
        devices
            .iter()
            .find(|d| d["external_id"] == external_id)
            .map(|d| d["device_type_id"].clone())
            .unwrap_or_else(|| panic!("no {external_id} in {devices:#?}"))
    };
    assert_eq!(type_of("SDE11/B3/UTILITIES/BOILER/T1"), kind["id"]);
    assert_eq!(type_of("SDE11/B3/UTILITIES/PUMP/P1"), Value::Null);
    bridge.stop().await;
}
