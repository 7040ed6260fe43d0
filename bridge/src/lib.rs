//! gito-bridge: subscribes to an external MQTT broker, creates a gito device the first time it
//! sees a device path, and republishes each message to the local broker as
//! `{tenant_id}/devices/{device_id}/telemetry` — at least once, in order per device, surviving
//! outages of the API and of either broker. `main.rs` only parses configuration and calls `run`.

pub mod api;
pub mod backoff;
pub mod config;
pub mod drain;
pub mod envelope;
pub mod external;
pub mod forwarder;
pub mod local;
pub mod logging;
pub mod mapping;
pub mod metrics;
pub mod payload;
pub mod simulate;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::api::DeviceResolver;
use crate::config::BridgeConfig;
use crate::forwarder::{Context, SpoolHandle};
use crate::local::LocalPublisher;
use crate::mapping::Mapping;
use crate::metrics::Metrics;
use crate::spool::Spool;

/// Messages the local publisher keeps unacknowledged at most.
const LOCAL_INFLIGHT: usize = 1024;
/// How long shutdown waits for in-flight messages to be acknowledged.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the bridge until `shutdown` fires, then finishes what is in flight.
pub async fn run(config: BridgeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_metrics(config, shutdown, Arc::new(Metrics::default())).await
}

/// `run`, with the counters in the caller's hands (tests read them).
pub async fn run_with_metrics(
    config: BridgeConfig,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let mapping = match &config.mapping {
        Some(path) => Mapping::load(path)?,
        None => Mapping::default(),
    };
    let spool = Spool::open(&config.spool_dir, config.spool_max_bytes)
        .with_context(|| format!("opening the spool in {}", config.spool_dir.display()))?;
    if !spool.is_empty() {
        tracing::info!(
            messages = spool.len(),
            "resuming with messages left in the spool"
        );
    }
    let resolver =
        DeviceResolver::new(&config.api_url, config.tenant_id, config.api_token.clone())?;
    let client_id = format!("gito-bridge-{}", config.tenant_id);

    let stop_local = CancellationToken::new();
    let mut local_options = config.local_mqtt_url.options(&format!("{client_id}-local"));
    local_options.set_max_packet_size(268_435_455, 268_435_455);
    let (publisher, local_task) = LocalPublisher::start(
        local_options,
        LOCAL_INFLIGHT,
        metrics.clone(),
        stop_local.clone(),
    );

    let intake = CancellationToken::new();
    let stop_external = CancellationToken::new();
    let external = external::start(
        config.external_mqtt_url.options(&client_id),
        config.topics.clone(),
        metrics.clone(),
        intake.clone(),
        stop_external.clone(),
    );

    let (acks_tx, acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let acker = tokio::spawn(forwarder::acker(external.client.clone(), acks_rx));
    let ctx = Arc::new(Context {
        tenant_id: config.tenant_id,
        mapping,
        max_payload_bytes: config.max_payload_bytes,
        resolver,
        publisher: publisher.clone(),
        spool: SpoolHandle::new(spool, metrics.clone()),
        acks: acks_tx,

        metrics: metrics.clone(),
    });
    let stop_drainer = CancellationToken::new();
    let drainer = tokio::spawn(drain::drain(ctx.clone(), stop_drainer.clone()));
    let forwarder = tokio::spawn(forwarder::forward(
        ctx.clone(),
        external.messages,
        DRAIN_DEADLINE,
    ));
    let side_tasks = CancellationToken::new();
    tokio::spawn(log_stats(
        metrics.clone(),
        config.stats_interval(),
        side_tasks.clone(),
    ));
    if let Some(addr) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let metrics = metrics.clone();
        let app =
            axum::Router::new().route("/metrics", get(move || async move { metrics.render() }));
        let stop = side_tasks.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
    }
    tracing::info!(tenant_id = %config.tenant_id, topics = ?config.topics, "gito-bridge running");

    shutdown.cancelled().await;
    tracing::info!("shutting down: finishing in-flight messages");
    intake.cancel();
    if let Err(e) = forwarder.await {
        tracing::error!(error = %e, "the forwarder task failed");
    }
    stop_drainer.cancel();
    let _ = drainer.await;
    drop(ctx);
    let _ = acker.await;

    // The acks are queued ahead of the disconnect, so the broker gets them first; each
    // connection task ends once its disconnect went out (or, with a broker gone, at the deadline).
    let _ = external.client.disconnect().await;
    publisher.disconnect().await;
    for (task, stop) in [(external.task, stop_external), (local_task, stop_local)] {
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            stop.cancel();
            abort.abort();
        }
    }
    side_tasks.cancel();
    tracing::info!(counters = metrics.summary(), "gito-bridge stopped");
    Ok(())
}

async fn log_stats(metrics: Arc<Metrics>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => tracing::info!(counters = metrics.summary(), "bridge counters"),
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
