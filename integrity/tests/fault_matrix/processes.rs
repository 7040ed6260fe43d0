//! Processes that die: the local broker (SIGKILL, with the processor away so that messages sit
//! in it; and a plain restart), the bridge (SIGKILL), the processor (SIGKILL), and the API
//! stopped while new devices keep appearing.

use std::time::{Duration, SystemTime};

use crate::publisher::{Layout, Plan, Publisher};
use crate::stack::{Options, Stack};
use crate::turn;

const REPUBLISHED: &str = "gito_bridge_republished_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_broker_sigkill_with_the_processor_away_loses_nothing_the_bridge_acknowledged() {
    let _turn = turn().await;
    let mut stack = Stack::start(Options::default()).await;
    // A broker that ran for a while has autosaved since the processor subscribed: wait for that
    // (the shipped autosave_interval is 5 s), so that the kill loses only what came after it.
    // (mosquitto 2.0.11 does not keep a $share subscription across a restart even then: the
    // processor must subscribe again on every connect.)
    stack.wait_local_broker_saved(SystemTime::now()).await;
    let plan = Plan::new("LBKILL", 20, 3000, 600);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    stack.wait_stored(plan.prefix, 300).await;

    // The processor away: what the bridge republishes now waits in the local broker's memory.
    stack.stop_api().await;
    let at_risk = stack
        .wait_bridge_metric_rise(REPUBLISHED, 1000, Duration::from_secs(20))
        .await;
    // Killed before its next autosave, as by the OOM killer; back on the same port and data.
    stack.kill_local_broker().await;
    stack.start_local_broker().await;
    stack.start_api().await;

    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    let scenario = format!(
        "local broker SIGKILL ({at_risk} acknowledged upstream and held by the broker at the kill)"
    );
    report.print(&scenario);
    report.assert_exact(&scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_broker_restart_mid_stream_loses_nothing() {
    let _turn = turn().await;
    let mut stack = Stack::start(Options::default()).await;
    let plan = Plan::new("LBRESTART", 20, 2500, 500);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    stack.wait_stored(plan.prefix, 300).await;

    // As an orchestrator restarts it (SIGTERM: it saves its persistence), the processor
    // connected throughout.
    stack.stop_local_broker().await;
    stack.start_local_broker().await;

    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    report.print("local broker restart (SIGTERM)");
    report.assert_exact("local broker restart (SIGTERM)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_sigkill_mid_stream_stores_every_bare_value_once() {
    let _turn = turn().await;
    let mut stack = Stack::start(Options::default()).await;
    let plan = Plan::new("BRKILL", 30, 4000, 1000);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    // Three times: each kill catches whatever was republished and not yet acknowledged upstream.
    for at in [500, 1500, 2500] {
        stack.wait_stored(plan.prefix, at).await;
        stack.kill_bridge().await;
        stack.start_bridge().await;
    }

    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    report.print("bridge SIGKILL (3 times)");
    report.assert_exact("bridge SIGKILL (3 times)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sigkill_mid_stream_stores_every_value_once() {
    let _turn = turn().await;
    let mut stack = Stack::start(Options::default()).await;
    let plan = Plan::new("PRKILL", 20, 2000, 500);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    stack.wait_stored(plan.prefix, 400).await;

    stack.kill_api().await;
    stack.start_api().await;

    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    report.print("processor (gito-api) SIGKILL");
    report.assert_exact("processor (gito-api) SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sigterm_under_a_backlog_acknowledges_every_batch_it_committed() {
    let _turn = turn().await;
    // Small batches: the intake's queue (two batches) is smaller than the broker's in-flight
    // window, so at the stop the MQTT poller is blocked handing over a message nobody takes.
    let mut stack = Stack::start(Options {
        api_env: vec![("GITO_PROCESSOR_BATCH_SIZE", "50".to_owned())],
        ..Options::default()
    })
    .await;
    let plan = Plan::new("PRTERM", 20, 3000, 1000);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    stack.wait_stored(plan.prefix, 300).await;

    // A backlog in the local broker: the processor frozen while the bridge republishes, then
    // stopped the moment it thaws, its intake full of messages it will not take.
    stack.pause_api().await;
    stack
        .wait_bridge_metric_rise(REPUBLISHED, 1000, Duration::from_secs(20))
        .await;
    stack.resume_api().await;
    stack.stop_api().await;
    stack.start_api().await;

    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    report.print("processor SIGTERM with a backlog");
    report.assert_exact("processor SIGTERM with a backlog");
    // What the stopped processor committed it acknowledged before it left: nothing of it came
    // back to the new one.
    let duplicates = stack
        .api_metric("gito_processor_rows_duplicate_total")
        .await;
    assert_eq!(
        duplicates,
        Some(0),
        "rows redelivered after a graceful stop (their acks did not go out)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_while_new_devices_keep_appearing_loses_nothing_and_creates_each_device_once() {
    let _turn = turn().await;
    let mut stack = Stack::start(Options::default()).await;
    // Five messages per device path, a new path every 12.5 ms, to the end of the stream.
    let plan = Plan::new("APIDOWN", 400, 2000, 400).layout(Layout::Blocks(5));
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    stack.wait_stored(plan.prefix, 300).await;

    stack.stop_api().await;
    // Down long enough for the bridge to meet many unknown devices: it spools them.
    stack
        .wait_bridge_metric_rise("gito_bridge_spooled_total", 400, Duration::from_secs(20))
        .await;
    stack.start_api().await;

    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    let devices_created = stack.device_count(plan.prefix).await;
    let scenario = format!("API down while new devices appear ({devices_created} devices of 400)");
    report.print(&scenario);
    report.assert_exact(&scenario);
    assert_eq!(devices_created, 400, "one device per path");
}
