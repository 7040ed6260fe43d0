//! PostgreSQL faults: gito-api's connections terminated under it, and the server restarted (a
//! private one: the shared test server is never touched).

use std::time::Duration;

use crate::publisher::{Plan, Publisher};
use crate::stack::{Options, Stack};
use crate::turn;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_terminated_mid_stream_lose_nothing() {
    let _turn = turn().await;
    let stack = Stack::start(Options::default()).await;
    let plan = Plan::new("PGTERM", 20, 2500, 500);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);

    let mut terminated = 0;
    for at in [400, 1000, 1600] {
        stack.wait_stored(plan.prefix, at).await;
        terminated += stack.terminate_api_connections().await;
    }

    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    let scenario =
        format!("PostgreSQL connections terminated (3 times, {terminated} backends in all)");
    report.print(&scenario);
    report.assert_exact(&scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_loses_nothing() {
    let _turn = turn().await;
    let mut stack = Stack::start(Options {
        private_postgres: true,
        ..Options::default()
    })
    .await;
    let plan = Plan::new("PGRESTART", 20, 2500, 500);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    stack.wait_stored(plan.prefix, 400).await;

    stack.stop_postgres("fast").await;
    // Down while the bridge receives another second's worth.
    stack
        .wait_bridge_metric_rise("gito_bridge_received_total", 500, Duration::from_secs(20))
        .await;
    stack.start_postgres().await;

    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;
    report.print("PostgreSQL restart");
    report.assert_exact("PostgreSQL restart");
}
