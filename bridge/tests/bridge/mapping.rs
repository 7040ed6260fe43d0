//! Mapping files with named segments, and the operators' dry run.

use std::time::Duration;

use tokio::process::Command;

use crate::helpers::{Collector, Device, RunningBridge, Stack, bridge_binary, reading};

const RULES: &str = r#"
[[rule]]
filter = "SDE11/#"
pattern = "{site}/{plant}/{area}/{system}/{device}/{metric}"
device = "{site}/{plant}/{area}/{system}/{device}"
device_type = "{system}"
name = "{plant} {device}"

[[rule]]
pattern = "legacy/{device}/{rest+}"
device = "legacy/{device}"
metric = "{rest}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_file_with_named_segments_decides_device_type_and_name() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mapping.toml");
    std::fs::write(&path, RULES).expect("write mapping");
    let mut config = stack.config();
    config.mapping = Some(path);
    let collector = Collector::subscribe(&stack.local.url(), &stack.telemetry_filter()).await;
    let bridge = RunningBridge::start(config).await;

    let mut device = Device::connect(&stack.external.url()).await;
    device
        .publish("SDE11/JAX/UTILITIES/BOILER/OPT_G/CHIMNEY_TEMP", reading(1))
        .await;
    device.publish("legacy/pump7/a/b", "3.5").await;
    device.publish("unmatched/topic", reading(3)).await;
    device.finish().await;
    collector
        .wait_for_all(
            &[("SDE11/JAX/UTILITIES/BOILER/OPT_G/CHIMNEY_TEMP".into(), 1)],
            Duration::from_secs(15),
        )
        .await;
    gito_testkit::wait_for(Duration::from_secs(15), "legacy message", || async {
        collector.count() >= 2
    })
    .await;

    let devices = stack.devices().await;
    assert_eq!(
        devices.len(),
        2,
        "the unmatched topic made no device: {devices:#?}"
    );
    let boiler = devices
        .iter()
        .find(|d| d["external_id"] == "SDE11/JAX/UTILITIES/BOILER/OPT_G")
        .expect("boiler");
    assert_eq!(boiler["device_type"], "BOILER");
    assert_eq!(boiler["name"], "JAX OPT_G");
    let pump = devices
        .iter()
        .find(|d| d["external_id"] == "legacy/pump7")
        .expect("pump");
    assert_eq!(pump["device_type"], serde_json::Value::Null);
    let legacy = collector
        .all()
        .into_iter()
        .find(|r| r.envelope["source_topic"] == "legacy/pump7/a/b")
        .expect("legacy");
    assert_eq!(
        legacy.envelope["metrics"],
        serde_json::json!({ "a/b": 3.5 })
    );
    assert_eq!(
        bridge
            .metrics
            .dropped_total(gito_bridge::metrics::DropReason::NoRule),
        1
    );
    bridge.stop().await;
}

#[tokio::test]
async fn check_mapping_prints_what_each_topic_maps_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mapping.toml");
    std::fs::write(&path, RULES).expect("write mapping");
    let output = Command::new(bridge_binary())
        .env_clear()
        .args(["check-mapping", "--mapping"])
        .arg(&path)
        .args([
            "SDE11/JAX/UTILITIES/BOILER/OPT_G/CHIMNEY_TEMP",
            "nothing/here",
        ])
        .output()
        .await
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8");
    assert_eq!(
        stdout,
        "SDE11/JAX/UTILITIES/BOILER/OPT_G/CHIMNEY_TEMP\n\
         \x20 device:      SDE11/JAX/UTILITIES/BOILER/OPT_G\n\
         \x20 name:        JAX OPT_G\n\
         \x20 device_type: BOILER\n\
         \x20 metric:      CHIMNEY_TEMP\n\
         \x20 rule:        #1 (filter SDE11/#, pattern {site}/{plant}/{area}/{system}/{device}/{metric})\n\
         nothing/here\n\
         \x20 skipped:     no rule matches\n"
    );

    let default = Command::new(bridge_binary())
        .env_clear()
        .args(["check-mapping", "a/b/c"])
        .output()
        .await
        .expect("runs");
    let stdout = String::from_utf8(default.stdout).expect("UTF-8");
    assert!(
        stdout.contains("device:      a/b")
            && stdout.contains("metric:      c")
            && stdout.contains("rule:        default"),
        "{stdout}"
    );

    std::fs::write(&path, "[[rule]]\npattern = \"{a}\"\ndevice = \"{b}\"\n").expect("write");
    let broken = Command::new(bridge_binary())
        .env_clear()
        .args(["check-mapping", "--mapping"])
        .arg(&path)
        .arg("x")
        .output()
        .await
        .expect("runs");
    assert!(!broken.status.success());
    assert!(
        String::from_utf8_lossy(&broken.stderr)
            .contains("mapping rule 1: device: {b} is not a segment of the pattern")
    );
}
