//! The external broker restarted while it holds messages for the bridge: with its persistence
//! (the session and its queue survive: nothing may be lost or stored twice) and without it (the
//! queue is gone: the bridge must say so, and lose nothing it had acknowledged).
//!
//! To have a queue at the broker when it restarts, the bridge is frozen (SIGSTOP) while a burst
//! is published: the broker pushes its in-flight window into the frozen bridge's socket and
//! queues the rest. The publisher is held (everything it sent acknowledged) whenever the broker
//! goes down, so that it never sends a message twice itself.

use std::time::Duration;

use crate::publisher::{Plan, Publisher};
use crate::stack::{Options, Stack, metric_of};
use crate::turn;
use gito_testkit::wait_for;

const BURST: u64 = 500;
const BROKER_ERRORS: &str = "gito_bridge_broker_errors_total";
const SESSIONS_LOST: &str = "gito_bridge_upstream_sessions_lost_total";

/// Streams until `at` values are stored, freezes the bridge, publishes a burst for it and holds
/// the publisher. Returns (first seq of the burst, first seq after it).
async fn burst_for_a_frozen_bridge(stack: &Stack, devices: &Publisher, plan: &Plan) -> (u64, u64) {
    stack.wait_stored(plan.prefix, 300).await;
    let a = devices.hold().await;
    // Everything before the burst is stored: the bridge acknowledged it all.
    stack.wait_stored(plan.prefix, a).await;
    stack.pause_bridge().await;
    devices.release();
    devices.wait_streamed(a + BURST).await;
    let b = devices.hold().await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_broker_restart_keeping_its_session_loses_nothing() {
    let _turn = turn().await;
    let mut stack = Stack::start(Options::default()).await;
    let plan = Plan::new("EXTKEEP", 20, 3000, 600);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    let (a, b) = burst_for_a_frozen_bridge(&stack, &devices, &plan).await;

    // SIGTERM: mosquitto saves the session, its queue and its in-flight window.
    stack.external.stop().await;
    stack.external.start_again().await;
    stack.resume_bridge().await;
    devices.release();

    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    let scenario = format!(
        "external broker restart, session kept ({} queued for the bridge at the restart)",
        b - a
    );
    report.print(&scenario);
    // Mosquitto may deliver what it restored in another order than it was published (seen:
    // a few messages of its queue after newer ones of its in-flight window).
    report.assert_exact_in_any_order(&scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_broker_losing_its_session_is_reported_and_nothing_acknowledged_is_lost() {
    let _turn = turn().await;
    let mut stack = Stack::start(Options::default()).await;
    let plan = Plan::new("EXTLOST", 20, 3000, 600);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    let (a, b) = burst_for_a_frozen_bridge(&stack, &devices, &plan).await;

    // A crash and a new disk: the burst queued for the bridge is gone with the session.
    let errors_before = stack.bridge_metric(BROKER_ERRORS).await.unwrap_or(0);
    stack.external.kill().await;
    stack.external.wipe_data();
    stack.external.start_again().await;
    stack.resume_bridge().await;
    // What is published before the bridge subscribed again has no subscriber at all on a broker
    // that forgot the session (inside the loss window the bridge reports): start after it.
    wait_for(
        Duration::from_secs(20),
        "the bridge reconnected and subscribed",
        || async {
            let metrics = stack.bridge_metrics().await;
            metric_of(&metrics, BROKER_ERRORS).unwrap_or(0) > errors_before
                && metric_of(&metrics, "gito_bridge_external_connected") == Some(1)
        },
    )
    .await;
    devices.release();
    devices.finish().await;

    // Everything outside the burst was acknowledged by the broker while the bridge's session
    // lived (before) or after it was re-established (after): all of it must be stored once.
    let kept = plan.expected((0..a).chain(b..plan.count));
    let report_kept = stack.settle(plan.prefix, &kept).await;
    let report = crate::ledger::count(&stack.pool, stack.tenant, plan.prefix, &plan.all()).await;
    let sessions_lost = stack.bridge_metric(SESSIONS_LOST).await;
    let said = stack.bridge_log().lines().any(|line| {
        let line = line.to_lowercase();
        line.contains("session") && line.contains("lost")
    });
    let scenario = format!(
        "external broker restart, session lost ({} queued upstream for the frozen bridge, {} of \
         them lost; the bridge reported it: log {said}, upstream_sessions_lost {sessions_lost:?})",
        b - a,
        report.lost
    );
    report.print(&scenario);
    assert_eq!(
        (report_kept.lost, report.duplicated, report.unexpected),
        (0, 0, 0),
        "{}; outside the lost burst: {}",
        report.line(&scenario),
        report_kept.line("outside the burst")
    );
    assert!(
        report.out_of_order == 0 && report.stale_latest == 0 && report.last_seen_wrong == 0,
        "{}",
        report.line(&scenario)
    );
    assert!(
        said,
        "the bridge never logged the loss of its upstream session (a line with 'session' and 'lost')"
    );
}
