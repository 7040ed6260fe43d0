//! The processor: reads the bridge's envelopes from the local broker (a shared subscription, so
//! that several processors split the stream), writes them to PostgreSQL in batches bounded by
//! messages, rows and bytes, evaluates alert rules in the same transaction, and acknowledges each
//! message only after it was stored or kept as a dead letter. A redelivered message adds no row; a
//! message that cannot be stored (invalid, an unknown device, a row the database refuses) is kept
//! as a dead letter without holding back the rest (`batch`). Deleted devices are announced on
//! `{tenant_id}/device-events` for gito-bridge (`watch`).

pub mod alerts;
mod batch;
mod counters;
pub mod dead_letters;
pub mod devices;
mod failure;
mod heard;
mod intake;
mod metrics_seen;
pub mod store;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use gito_runtime::mqtt::{self, Ack};
use gito_wire::topic::PROCESSOR_SUBSCRIPTION;
use gito_wire::{AlertsTopic, DeviceEvent, DeviceEventsTopic, LiveEvent};
use rumqttc::{AsyncClient, MqttOptions, Publish, QoS};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use self::batch::{Batcher, Incoming};
use self::counters::Counters;
pub use self::devices::DeviceInfo;
pub use self::heard::HEARD_RESOLUTION;
use self::watch::{Deleted, DeviceWatch};
use crate::status::{self, Health};

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub mqtt: MqttOptions,
    /// Rows are written when this many messages are waiting...
    pub batch_size: usize,
    /// ...or they make this many rows (metrics)...
    pub max_rows: usize,
    /// ...or this many bytes of topics and payloads (a message larger than a bound alone is a
    /// batch of its own)...
    pub max_bytes: usize,
    /// ...or this long after the first of them arrived.
    pub flush_after: Duration,
    /// Days of telemetry kept for tenants without their own `retention_days`; `None`: forever.
    pub retention_days: Option<u32>,
    /// Batches stored at once, each by a worker of its own (one transaction at a time) that gets
    /// every message of its share of the devices: while one batch is in PostgreSQL, the next is
    /// collected and prepared beside it, and a device's values still meet its alert rules in the
    /// order they came.
    pub workers: usize,
}

/// How often the device listener is checked when no batch does it.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Runs until `shutdown`; then each worker finishes the batch at hand and acknowledges it. An
/// error when the broker connection ended for good (see `intake`).
pub async fn run(
    config: ProcessorConfig,
    pool: PgPool,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut options = config.mqtt.clone();
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let (client, eventloop) = AsyncClient::new(options, 10_000);
    let (tx, mut messages) = mpsc::channel(config.batch_size * 2);
    let intake = CancellationToken::new();
    let mut poller = tokio::spawn(intake::receive(
        eventloop,
        client.clone(),
        tx,
        intake.clone(),
        health.clone(),
    ));
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(mqtt::acker(client.clone(), acks_rx));
    let counters = Arc::new(Counters::default());
    let mut queues = Vec::new();
    let mut workers = JoinSet::new();
    for index in 0..config.workers.max(1) {
        let (queue, messages) = mpsc::channel(config.batch_size * 2);
        queues.push(queue);
        let worker = Worker {
            index,
            messages,
            client: client.clone(),
            acks: acks_tx.clone(),
            counters: counters.clone(),
        };
        workers.spawn(worker.run(
            config.clone(),
            pool.clone(),
            health.clone(),
            shutdown.clone(),
        ));
    }
    drop(acks_tx);
    health.up(status::PROCESSOR);
    tracing::info!(
        subscription = PROCESSOR_SUBSCRIPTION,
        workers = queues.len(),
        "processor running"
    );
    // Each device's messages go to one worker, in the order they came: its values meet its alert
    // rules in that order, as with a single loop.
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = messages.recv() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let queue = &queues[worker_of(&message.topic, queues.len())];
        tokio::select! {
            () = shutdown.cancelled() => break,
            sent = queue.send(message) => if sent.is_err() {
                break;
            },
        }
    }
    // Without shutdown (the broker connection ended for good), the workers store what they hold.
    drop(queues);
    let mut panicked = None;
    while let Some(ended) = workers.join_next().await {
        if let Err(e) = ended {
            panicked = Some(anyhow!("a processor worker panicked: {e}"));
        }
    }
    intake.cancel();
    // The poller may be blocked handing over a message (the queue holds two batches, the broker's
    // in-flight window can be larger): closing the queue frees it to send our acks and the
    // disconnect. What it held is redelivered to the next processor.
    drop(messages);
    let _ = acker.await;
    let _ = client.disconnect().await;
    let polled = match tokio::time::timeout(Duration::from_secs(2), &mut poller).await {
        Ok(joined) => joined.unwrap_or_else(|e| Err(anyhow!("the MQTT poller panicked: {e}"))),
        Err(_) => {
            poller.abort();
            Ok(())
        }
    };
    health.down(status::PROCESSOR, "stopped");
    tracing::info!(counters = counters.summary(), "processor stopped");
    match panicked {
        Some(e) => Err(e),
        None => polled,
    }
}

/// The worker of a telemetry topic: the same topic (a device) always goes to the same one.
fn worker_of(topic: &str, workers: usize) -> usize {
    use std::hash::Hasher as _;
    // SipHash with fixed keys: the same answer for a topic for the life of the process.
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(topic.as_bytes());
    (hasher.finish() % workers as u64) as usize
}

/// One of the processor's loops: its devices' messages, in batches, one transaction at a time,
/// with its own device cache kept exact by its own listener.
struct Worker {
    index: usize,
    messages: mpsc::Receiver<Publish>,
    client: AsyncClient,
    acks: mpsc::UnboundedSender<Ack>,
    counters: Arc<Counters>,
}

impl Worker {
    async fn run(
        mut self,
        config: ProcessorConfig,
        pool: PgPool,
        health: Health,
        shutdown: CancellationToken,
    ) {
        let mut batcher = Batcher::new(
            pool.clone(),
            self.counters.clone(),
            shutdown.clone(),
            health,
            config.retention_days,
        );
        let mut watch = DeviceWatch::new(&pool);
        let deleted = watch.sync(&mut batcher.cache).await;
        self.announce(deleted);
        let mut stats = tokio::time::interval(Duration::from_secs(60));
        stats.tick().await;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        heartbeat.tick().await;
        // A message that did not fit into the previous batch starts the next one.
        let mut carried: Option<Incoming> = None;
        loop {
            let first = match carried.take() {
                Some(message) if !shutdown.is_cancelled() => message,
                Some(_) => break,
                None => tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = stats.tick() => {
                        // The counters are the process's: the first worker logs them.
                        if self.index == 0 {
                            tracing::info!(counters = self.counters.summary(), "processor counters");
                        }
                        batcher.new_interval();
                        continue;
                    }
                    _ = heartbeat.tick() => {
                        let deleted = watch.sync(&mut batcher.cache).await;
                        self.announce(deleted);
                        continue;
                    }
                    deleted = watch.next(&mut batcher.cache) => {
                        self.announce(deleted);
                        continue;
                    }
                    first = self.messages.recv() => match first {
                        Some(m) => Incoming::new(m),
                        None => break,
                    },
                },
            };
            let (batch, next) = collect(first, &mut self.messages, &config).await;
            carried = next;
            tracing::debug!(
                worker = self.index,
                messages = batch.len(),
                rows = batch.iter().map(Incoming::rows).sum::<usize>(),
                bytes = batch.iter().map(Incoming::bytes).sum::<usize>(),
                "batch"
            );
            // The cache as of now: a change committed before this batch applies to it.
            let deleted = watch.sync(&mut batcher.cache).await;
            self.announce(deleted);
            // Shutdown while retrying leaves the batch to the broker's redelivery.
            let Some(events) = batcher.process(&batch).await else {
                break;
            };
            for event in &events {
                publish(&self.client, event);
            }
            for message in &batch {
                let _ = self.acks.send(Ack::of(&message.publish));
            }
        }
    }

    /// Every worker's listener hears each deletion: the first worker announces it.
    fn announce(&self, deleted: Vec<Deleted>) {
        if self.index == 0 {
            announce(&self.client, &self.counters, deleted);
        }
    }
}

/// Announces a live event (an alert or connectivity change) on its tenant's events topic
/// (`{tenant_id}/alerts`), for every API replica's WebSocket clients. Best effort: live views
/// want the present, and the change itself is committed. A burst larger than the connection's
/// queue (100,000 devices coming online at once) drops events: counted
/// (`gito_live_events_dropped_total`), logged once per burst, not once per event.
pub fn publish(client: &AsyncClient, event: &LiveEvent) {
    static DROPPING: AtomicBool = AtomicBool::new(false);
    let topic = AlertsTopic {
        tenant_id: event.tenant_id(),
    };
    let payload = event.to_json().into_bytes();
    match client.try_publish(topic.to_string(), QoS::AtLeastOnce, false, payload) {
        Ok(()) => DROPPING.store(false, Ordering::Relaxed),
        Err(e) => {
            metrics::counter!("gito_live_events_dropped_total").increment(1);
            if !DROPPING.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "live events dropped until the broker connection's queue drains (gito_live_events_dropped_total)");
            }
        }
    }
}

/// Tells gito-bridge (QoS 1, not retained) that devices are gone, so that it forgets their paths.
/// Every processor announces what it hears; forgetting twice is harmless.
fn announce(client: &AsyncClient, counters: &Counters, deleted: Vec<Deleted>) {
    for device in deleted {
        Counters::add(&counters.devices_deleted, 1);
        let topic = DeviceEventsTopic {
            tenant_id: device.tenant_id,
        };
        let event = DeviceEvent::DeviceDeleted {
            tenant_id: device.tenant_id,
            device_id: device.id,
            external_id: device.external_id,
        };
        if let Err(e) = client.try_publish(
            topic.to_string(),
            QoS::AtLeastOnce,
            false,
            event.to_json().into_bytes(),
        ) {
            tracing::warn!(error = %e, device_id = %device.id, "could not announce a deleted device");
        }
    }
}

/// Waits for more messages until the batch is full (messages, rows or bytes) or `flush_after`
/// passed. A message that would overflow the rows or bytes is returned to start the next batch.
async fn collect(
    first: Incoming,
    messages: &mut mpsc::Receiver<Publish>,
    config: &ProcessorConfig,
) -> (Vec<Incoming>, Option<Incoming>) {
    let (mut rows, mut bytes) = (first.rows(), first.bytes());
    let mut batch = vec![first];
    let deadline = tokio::time::sleep(config.flush_after);
    tokio::pin!(deadline);
    while batch.len() < config.batch_size && rows < config.max_rows && bytes < config.max_bytes {
        tokio::select! {
            () = &mut deadline => break,
            next = messages.recv() => match next {
                Some(m) => {
                    let message = Incoming::new(m);
                    if rows + message.rows() > config.max_rows
                        || bytes + message.bytes() > config.max_bytes
                    {
                        return (batch, Some(message));
                    }
                    rows += message.rows();
                    bytes += message.bytes();
                    batch.push(message);
                }
                None => break,
            },
        }
    }
    (batch, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(batch_size: usize, max_rows: usize, max_bytes: usize) -> ProcessorConfig {
        ProcessorConfig {
            mqtt: MqttOptions::new("test", "127.0.0.1", 1883),
            batch_size,
            max_rows,
            max_bytes,
            flush_after: Duration::from_millis(50),
            retention_days: None,
            workers: 1,
        }
    }

    /// A valid envelope with `metrics` metrics.
    fn message(metrics: usize) -> Publish {
        let metrics: serde_json::Map<String, serde_json::Value> = (0..metrics)
            .map(|i| (format!("m{i}"), serde_json::json!(i)))
            .collect();
        let payload = serde_json::json!({ "ts": "2026-11-24T10:00:00Z", "metrics": metrics });
        let topic = format!(
            "{}/devices/{}/telemetry",
            uuid::Uuid::now_v7(),
            uuid::Uuid::now_v7()
        );
        Publish::new(topic, QoS::AtLeastOnce, payload.to_string())
    }

    /// Batches as `collect` cuts them: the rows of each message.
    async fn batches(config: &ProcessorConfig, sizes: &[usize]) -> Vec<Vec<usize>> {
        let (tx, mut rx) = mpsc::channel(100);
        for size in sizes {
            tx.send(message(*size)).await.expect("send");
        }
        drop(tx);
        let mut cut = Vec::new();
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(m) => m,
                None => match rx.recv().await {
                    Some(m) => Incoming::new(m),
                    None => break,
                },
            };
            let (batch, next) = collect(first, &mut rx, config).await;
            carried = next;
            cut.push(batch.iter().map(Incoming::rows).collect());
        }
        cut
    }

    #[test]
    fn a_devices_topic_always_goes_to_the_same_worker_and_devices_spread_over_all() {
        let topics: Vec<String> = (0..1000)
            .map(|_| {
                format!(
                    "{}/devices/{}/telemetry",
                    uuid::Uuid::now_v7(),
                    uuid::Uuid::now_v7()
                )
            })
            .collect();
        for workers in [1, 2, 3] {
            let mut per_worker = vec![0; workers];
            for topic in &topics {
                let worker = worker_of(topic, workers);
                assert_eq!(worker, worker_of(topic, workers), "{topic}");
                per_worker[worker] += 1;
            }
            let fair = 1000 / workers;
            assert!(
                per_worker
                    .iter()
                    .all(|n| n * 10 > fair * 8 && n * 10 < fair * 12),
                "{workers} workers: {per_worker:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_batch_ends_at_the_message_row_or_byte_bound_and_a_huge_message_is_alone() {
        let by_messages = batches(&config(2, 1000, 1 << 20), &[1, 1, 1, 1, 1]).await;
        assert_eq!(by_messages, [vec![1, 1], vec![1, 1], vec![1]]);

        let by_rows = batches(&config(100, 10, 1 << 20), &[4, 4, 4, 25, 3, 3, 4, 1]).await;
        assert_eq!(
            by_rows,
            [vec![4, 4], vec![4], vec![25], vec![3, 3, 4], vec![1]],
            "never more than 10 rows, unless one message has more"
        );

        let size = Incoming::new(message(1)).bytes();
        let by_bytes = batches(&config(100, 1000, size * 2 + 1), &[1, 1, 1, 1, 1]).await;
        assert_eq!(by_bytes, [vec![1, 1], vec![1, 1], vec![1]]);
    }
}
