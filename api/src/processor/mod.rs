//! The processor: reads the bridge's envelopes from the local broker (a shared subscription, so
//! that several processors split the stream), writes them to PostgreSQL in batches, evaluates
//! alert rules in the same transaction, and acknowledges each message only after its batch
//! committed. A redelivered message adds no row; a message for an unknown device or the wrong
//! tenant is counted and dropped.

pub mod alerts;
mod batch;
mod counters;
pub mod devices;
mod intake;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use gito_runtime::Backoff;
use gito_runtime::mqtt::{self, Ack};
use gito_wire::topic::PROCESSOR_SUBSCRIPTION;
use gito_wire::{AlertsTopic, LiveEvent};
use rumqttc::{AsyncClient, MqttOptions, Publish, QoS};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::counters::Counters;
use self::devices::DeviceCache;

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub mqtt: MqttOptions,
    /// Rows are written when this many messages are waiting...
    pub batch_size: usize,
    /// ...or this long after the first of them arrived.
    pub flush_after: Duration,
}

/// Runs until `shutdown`; then finishes the batch at hand and acknowledges it. An error when the
/// broker connection ended for good (see `intake`).
pub async fn run(
    config: ProcessorConfig,
    pool: PgPool,
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
    ));
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(mqtt::acker(client.clone(), acks_rx));
    let counters = Arc::new(Counters::default());
    let cache = DeviceCache::default();
    tracing::info!(subscription = PROCESSOR_SUBSCRIPTION, "processor running");

    let mut stats = tokio::time::interval(Duration::from_secs(60));
    stats.tick().await;
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = stats.tick() => {
                tracing::info!(counters = counters.summary(), "processor counters");
                continue;
            }
            first = messages.recv() => match first { Some(m) => m, None => break },
        };
        let batch = collect(first, &mut messages, &config).await;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // Retried until it commits: the messages stay unacknowledged meanwhile, so a database
        // restart loses nothing. Shutdown leaves the batch to the broker's redelivery.
        let events = loop {
            match batch::process(&pool, &cache, &counters, &batch).await {
                Ok(events) => break Some(events),
                Err(e) => {
                    Counters::add(&counters.db_errors, 1);
                    tracing::warn!(error = %e, messages = batch.len(), "writing a batch failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break None,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        };
        let Some(events) = events else { break };
        for event in events {
            let topic = AlertsTopic {
                tenant_id: event.alert.tenant_id,
            };
            let payload = LiveEvent::Alert(event).to_json().into_bytes();
            if let Err(e) = client.try_publish(topic.to_string(), QoS::AtLeastOnce, false, payload)
            {
                tracing::warn!(error = %e, "could not publish an alert event");
            }
        }
        for message in &batch {
            let _ = acks_tx.send(Ack::of(message));
        }
    }
    intake.cancel();
    drop(acks_tx);
    let _ = acker.await;
    let _ = client.disconnect().await;
    let polled = match tokio::time::timeout(Duration::from_secs(2), &mut poller).await {
        Ok(joined) => joined.unwrap_or_else(|e| Err(anyhow!("the MQTT poller panicked: {e}"))),
        Err(_) => {
            poller.abort();
            Ok(())
        }
    };
    tracing::info!(counters = counters.summary(), "processor stopped");
    polled
}

/// Waits for more messages until the batch is full or `flush_after` passed.
async fn collect(
    first: Publish,
    messages: &mut mpsc::Receiver<Publish>,
    config: &ProcessorConfig,
) -> Vec<Publish> {
    let mut batch = vec![first];
    let deadline = tokio::time::sleep(config.flush_after);
    tokio::pin!(deadline);
    while batch.len() < config.batch_size {
        tokio::select! {
            () = &mut deadline => break,
            next = messages.recv() => match next {
                Some(m) => batch.push(m),
                None => break,
            },
        }
    }
    batch
}
