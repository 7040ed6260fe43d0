//! gito-bridge: subscribes to an external MQTT broker, creates a gito device the first time it
//! sees a device path, and republishes each message to the local broker as
//! `{tenant_id}/devices/{device_id}/telemetry` — at least once, in order per device, surviving
//! outages of the API and of either broker. `main.rs` only hands the command line to `cli::run`.

pub mod api;
pub mod cli;
pub mod config;
pub mod drain;
pub mod external;
pub mod forwarder;
pub mod identity;
pub mod known;
pub mod local;
pub mod mapping;
pub mod metrics;
pub mod paths;
pub mod payload;
pub mod replay;
pub mod simulate;
pub mod spool;
pub mod waiting;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use gito_runtime::{Supervisor, mqtt};
use gito_wire::{DeviceEvent, DeviceEventsTopic};
use tokio_util::sync::CancellationToken;

use crate::api::DeviceResolver;
use crate::config::BridgeConfig;
use crate::forwarder::Context;
use crate::identity::Receipts;
use crate::known::KnownDevices;
use crate::local::{LocalPublisher, Subscription};
use crate::mapping::Mapping;
use crate::metrics::Metrics;
use crate::replay::ReplayWindow;
use crate::spool::{Spool, SpoolHandle};
use crate::waiting::Waiting;

/// Messages the local publisher keeps unacknowledged at most.
const LOCAL_INFLIGHT: usize = 1024;
/// How long the local broker keeps our session (and the device events for it) after a disconnect.
const LOCAL_SESSION_EXPIRY: Duration = Duration::from_secs(3600);
/// How often the device map is marked as kept up to date by the device events (see `known`).
const ALIVE_EVERY: Duration = Duration::from_secs(60);
/// A device map not kept up to date for this long is not trusted at start: the local broker may
/// have dropped our session, and the deletions announced in it, by then.
const MAP_TRUSTED_FOR: Duration = LOCAL_SESSION_EXPIRY.saturating_sub(Duration::from_secs(300));
/// How long shutdown waits for in-flight messages to be acknowledged.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long a broker connection may take to send its disconnect at shutdown.
const DISCONNECT_DEADLINE: Duration = Duration::from_secs(2);

/// Runs the bridge until `shutdown` fires, then finishes what is in flight.
pub async fn run(config: BridgeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_metrics(config, shutdown, Arc::new(Metrics::default())).await
}

/// `run`, with the counters in the caller's hands (tests read them).
///
/// Every task is supervised and stopped in this order at shutdown: the forwarder (the external
/// broker stops handing messages over, what is in flight is acknowledged), the drainers (of the
/// spool, then of the waiting lane), the acker (once all are done, every ack is queued), the external connection (acks first, then
/// the disconnect), the local connection, the counters' log and the metrics page. If any of them
/// ends on its own, the rest are stopped the same way and the error names it.
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
    let waiting = Waiting::open(&config.spool_dir, config.spool_max_bytes, metrics.clone())
        .with_context(|| format!("opening the waiting lane in {}", config.spool_dir.display()))?;
    let known = KnownDevices::open(&config.spool_dir, config.device_cache_max, MAP_TRUSTED_FOR)
        .with_context(|| {
            format!(
                "opening the devices journal in {}",
                config.spool_dir.display()
            )
        })?;
    tracing::info!(
        devices = known.len(),
        "device paths known from earlier runs"
    );
    let resolver = DeviceResolver::new(
        &config.api_url,
        config.tenant_id,
        config.api_token.clone(),
        known,
        config.max_new_devices_per_minute,
    )?;
    let client_id = format!("gito-bridge-{}", config.tenant_id);
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        None => None,
    };

    let receipts = Receipts::open(&config.spool_dir).with_context(|| {
        format!(
            "opening the receipts journal in {}",
            config.spool_dir.display()
        )
    })?;
    let receipts = Arc::new(Mutex::new(receipts));
    // A session the broker keeps for a while, so that device events published while the
    // connection is down are not missed.
    let local_options = config
        .local_mqtt_url
        .options_v5(&format!("{client_id}-local"), Some(LOCAL_SESSION_EXPIRY));
    let (device_events_tx, device_events) = tokio::sync::mpsc::unbounded_channel();
    let (publisher, local) = LocalPublisher::start(
        local_options,
        LOCAL_INFLIGHT,
        metrics.clone(),
        Some(Subscription {
            filter: DeviceEventsTopic {
                tenant_id: config.tenant_id,
            }
            .to_string(),
            messages: device_events_tx,
        }),
    );
    let intake = CancellationToken::new();
    let external = external::start(
        config.external_mqtt_url.options(&client_id),
        config.topics.clone(),
        metrics.clone(),
        receipts.clone(),
        intake.clone(),
    );
    let (acks_tx, acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        tenant_id: config.tenant_id,
        mapping,
        max_payload_bytes: config.max_payload_bytes,
        resolver,
        publisher: publisher.clone(),
        spool: SpoolHandle::new(spool, "spool", metrics.clone()),
        waiting,
        acks: acks_tx,
        replay: Mutex::new(ReplayWindow::new(
            Duration::from_secs(config.replay_window_secs),
            config.replay_max_bytes,
        )),
        metrics: metrics.clone(),
    });

    let spool = ctx.spool.clone();
    let mut tasks = Supervisor::new();
    tasks.spawn("forwarder", |stop| {
        let forward = forwarder::forward(ctx.clone(), external.messages, receipts, DRAIN_DEADLINE);
        async move {
            tokio::pin!(forward);
            tokio::select! {
                // The external connection is gone: the supervisor reports it.
                () = &mut forward => return Ok(()),
                () = stop.cancelled() => {}
            }
            intake.cancel();
            forward.await;
            Ok(())
        }
    });
    tasks.spawn("drainer", |stop| {
        let drained = drain::drain(ctx.clone(), drain::Lane::Spool, stop);
        async move {
            drained.await;
            Ok(())
        }
    });
    tasks.spawn("waiting drainer", |stop| {
        let drained = drain::drain(ctx.clone(), drain::Lane::Waiting, stop);
        async move {
            drained.await;
            Ok(())
        }
    });
    tasks.spawn("device events", |stop| {
        forget_deleted_devices(ctx.clone(), device_events, stop)
    });
    // The forwarder and the drainers hold the only other senders of acks now.
    drop(ctx);
    let external_client = external.client.clone();
    tasks.spawn("acker", |_stop| async move {
        mqtt::acker(external_client, acks_rx).await;
        Ok(())
    });
    let client = external.client;
    tasks.spawn("external connection", |stop| {
        until_disconnected(external.connection, stop, async move {
            let _ = client.disconnect().await;
        })
    });
    tasks.spawn("local connection", |stop| {
        until_disconnected(local, stop, async move { publisher.disconnect().await })
    });
    let every = config.stats_interval();
    let counters = metrics.clone();
    tasks.spawn("stats", move |stop| log_stats(counters, every, stop));
    if let Some(listener) = metrics_listener {
        let app = axum::Router::new().route(
            "/metrics",
            get(move || async move {
                let spool = spool.clone();
                // The age of the oldest spooled message is read from disk, off the runtime.
                let _ = tokio::task::spawn_blocking(move || spool.observe()).await;
                (
                    [(CONTENT_TYPE, gito_runtime::metrics::CONTENT_TYPE)],
                    gito_runtime::metrics::handle().render(),
                )
            }),
        );
        tasks.spawn("metrics", |stop| async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("serving metrics")
        });
    }
    tracing::info!(tenant_id = %config.tenant_id, topics = ?config.topics, "gito-bridge running");

    let stopped = tasks.run(shutdown).await;
    tracing::info!(counters = metrics.summary(), "gito-bridge stopped");
    stopped
}

/// Polls `connection` until `stop`; then sends the disconnect (behind anything queued, such as
/// acks) and polls until it went out, or for `DISCONNECT_DEADLINE` with a broker gone.
async fn until_disconnected(
    connection: impl Future<Output = ()> + Send,
    stop: CancellationToken,
    disconnect: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(connection);
    tokio::select! {
        () = &mut connection => return Ok(()),
        () = stop.cancelled() => {}
    }
    let _ = tokio::time::timeout(DISCONNECT_DEADLINE, async {
        tokio::join!(disconnect, &mut connection)
    })
    .await;
    Ok(())
}

/// Forgets each device gito-api announces as deleted, so that its path's next message creates a
/// new (unassigned) device instead of going to an id that no longer exists; and marks the device
/// map as kept up to date meanwhile, so that a restart within the local session's expiry trusts it.
async fn forget_deleted_devices(
    ctx: Arc<Context>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut alive = tokio::time::interval(ALIVE_EVERY);
    loop {
        let payload = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = alive.tick() => {
                ctx.resolver.alive();
                continue;
            }
            next = events.recv() => match next {
                Some(payload) => payload,
                None => return Ok(()),
            },
        };
        match DeviceEvent::from_json(&payload) {
            Ok(DeviceEvent::DeviceDeleted {
                tenant_id,
                device_id,
                external_id,
            }) if tenant_id == ctx.tenant_id => {
                if ctx.resolver.forget(device_id, external_id.as_deref()) {
                    Metrics::add(&ctx.metrics.devices_forgotten, 1);
                    tracing::info!(%device_id, external_id, "device deleted: its path will create a new device");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "unreadable device event"),
        }
    }
}

async fn log_stats(
    metrics: Arc<Metrics>,
    every: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => tracing::info!(counters = metrics.summary(), "bridge counters"),
        }
    }
}
