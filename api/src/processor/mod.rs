//! The processor: reads the bridge's envelopes from the local broker (a shared subscription, so
//! that several processors split the stream), writes them to PostgreSQL in batches, evaluates
//! alert rules in the same transaction, and acknowledges each message only after its batch
//! committed. A redelivered message adds no row; a message for an unknown device or the wrong
//! tenant is counted and dropped.

pub mod alerts;
pub mod devices;
pub mod envelope;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::alerts::{AlertEvent, Sample};
use self::devices::DeviceCache;
use self::envelope::{MetricValue, Telemetry};
use self::store::Rows;

/// The shared subscription every processor joins.
pub const SUBSCRIPTION: &str = "$share/gito-processor/+/devices/+/telemetry";

#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub mqtt: MqttOptions,
    /// Rows are written when this many messages are waiting...
    pub batch_size: usize,
    /// ...or this long after the first of them arrived.
    pub flush_after: Duration,
}

/// Builds client options from `mqtt://user:pass@host:port` and a client id.
pub fn mqtt_options(url: &str, client_id: &str) -> Result<MqttOptions, rumqttc::OptionError> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let with_id = if url.contains("client_id=") {
        url.to_owned()
    } else {
        format!("{url}{separator}client_id={client_id}")
    };
    let mut options = MqttOptions::parse_url(with_id)?;
    options.set_max_packet_size(268_435_455, 268_435_455);
    options.set_keep_alive(Duration::from_secs(15));
    Ok(options)
}

/// What the processor did, logged periodically and at shutdown.
#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub rows: AtomicU64,
    pub duplicate_rows: AtomicU64,
    pub flagged: AtomicU64,
    pub dropped: AtomicU64,
    pub db_errors: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "messages={} rows={} duplicate_rows={} flagged={} dropped={} db_errors={}",
            get(&self.messages),
            get(&self.rows),
            get(&self.duplicate_rows),
            get(&self.flagged),
            get(&self.dropped),
            get(&self.db_errors)
        )
    }
}

/// Runs until `shutdown`; then finishes the batch at hand and acknowledges it.
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
    let stop_loop = CancellationToken::new();
    let poller = tokio::spawn(poll(
        eventloop,
        client.clone(),
        tx,
        intake.clone(),
        stop_loop.clone(),
    ));
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack(client.clone(), acks_rx));
    let counters = Arc::new(Counters::default());
    let cache = DeviceCache::default();
    tracing::info!(subscription = SUBSCRIPTION, "processor running");

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
        let mut backoff = Duration::from_millis(100);
        // Retried until it commits: the messages stay unacknowledged meanwhile, so a database
        // restart loses nothing. Shutdown leaves the batch to the broker's redelivery.
        let events = loop {
            match process(&pool, &cache, &counters, &batch).await {
                Ok(events) => break Some(events),
                Err(e) => {
                    Counters::add(&counters.db_errors, 1);
                    tracing::warn!(error = %e, messages = batch.len(), "writing a batch failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break None,
                        () = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(5)),
                    }
                }
            }
        };
        let Some(events) = events else { break };
        for event in events {
            let topic = format!("{}/alerts", event.alert.tenant_id);
            let payload = serde_json::to_vec(&event).expect("alert events serialize");
            if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                tracing::warn!(error = %e, "could not publish an alert event");
            }
        }
        for message in &batch {
            let _ = acks_tx.send((message.pkid, message.qos));
        }
    }
    intake.cancel();
    drop(acks_tx);
    let _ = acker.await;
    let _ = client.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(2), poller)
        .await
        .is_err()
    {
        stop_loop.cancel();
    }
    tracing::info!(counters = counters.summary(), "processor stopped");
    Ok(())
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

/// Parses, checks and stores one batch in one transaction; returns the alert changes.
async fn process(
    pool: &PgPool,
    cache: &DeviceCache,
    counters: &Counters,
    batch: &[Publish],
) -> anyhow::Result<Vec<AlertEvent>> {
    Counters::add(&counters.messages, batch.len() as u64);
    let parsed: Vec<Telemetry> = batch
        .iter()
        .filter_map(|m| match envelope::parse(&m.topic, &m.payload) {
            Ok(t) => Some(t),
            Err(reason) => {
                drop_message(counters, reason.as_str(), &m.topic);
                None
            }
        })
        .collect();
    let ids: Vec<Uuid> = parsed.iter().map(|t| t.device_id).collect();
    let known = cache
        .lookup(pool, &ids)
        .await
        .context("looking up devices")?;
    let mut rows = Rows::default();
    let mut newest: HashMap<Uuid, OffsetDateTime> = HashMap::new();
    let mut samples = Vec::new();
    let mut tenants = BTreeSet::new();
    for t in &parsed {
        let Some(device) = known
            .get(&t.device_id)
            .and_then(Option::as_ref)
            .filter(|d| d.tenant_id == t.tenant_id)
        else {
            // Unknown device, or a device of another tenant: a publisher may never write there.
            drop_message(
                counters,
                "unknown_device",
                &format!("{}/devices/{}/telemetry", t.tenant_id, t.device_id),
            );

            continue;
        };
        tenants.insert(t.tenant_id);
        let seen = newest.entry(t.device_id).or_insert(t.ts);
        *seen = (*seen).max(t.ts);
        for (metric, value) in &t.metrics {
            let number = value.numeric();
            let flagged = device.is_unexpected(metric, number);
            rows.device_id.push(t.device_id);
            rows.ts.push(t.ts);
            rows.metric.push(metric.clone());
            rows.flagged.push(flagged);
            match value {
                MetricValue::Number(n) => {
                    rows.value.push(Some(*n));
                    rows.value_json.push(None);
                }
                MetricValue::Bool(b) => {
                    rows.value.push(number);
                    rows.value_json.push(Some((*b).into()));
                }
                MetricValue::Text(s) => {
                    rows.value.push(None);
                    rows.value_json.push(Some(s.clone().into()));
                }
            }
            if let Some(value) = number {
                samples.push(Sample {
                    device_id: t.device_id,
                    device,
                    ts: t.ts,
                    metric,
                    value,
                });
            }
        }
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let inserted = store::insert(&mut tx, &rows).await?;
    let (devices, times): (Vec<Uuid>, Vec<OffsetDateTime>) = newest.into_iter().unzip();
    store::touch(&mut tx, &devices, &times).await?;
    let tenants: Vec<Uuid> = tenants.into_iter().collect();
    let rules = alerts::rules_for(&mut tx, &tenants).await?;
    let events = if rules.is_empty() {
        Vec::new()
    } else {
        alerts::evaluate(&mut tx, &rules, &samples).await?
    };
    tx.commit().await?;
    Counters::add(&counters.rows, inserted);
    Counters::add(&counters.duplicate_rows, rows.len() as u64 - inserted);
    Counters::add(
        &counters.flagged,
        rows.flagged.iter().filter(|f| **f).count() as u64,
    );
    Ok(events)
}

fn drop_message(counters: &Counters, reason: &str, topic: &str) {
    Counters::add(&counters.dropped, 1);
    tracing::warn!(reason, topic, "message dropped");
}

/// Owns the event loop and only polls it.
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::Sender<Publish>,
    intake: CancellationToken,
    stop: CancellationToken,
) {
    let mut tx = Some(tx);
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            () = intake.cancelled(), if tx.is_some() => {
                tx = None;
                continue;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                tracing::info!(
                    session_present = ack.session_present,
                    "processor connected to the broker"
                );
                if !ack.session_present
                    && let Err(e) = client.try_subscribe(SUBSCRIPTION, QoS::AtLeastOnce)
                {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(sender) = &tx {
                    let _ = sender.send(publish).await;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "processor lost the broker; reconnecting");
                let delay = backoff.mul_f64(fastrand_unit());
                backoff = (backoff * 2).min(Duration::from_secs(10));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Sends acks in order, waiting for room rather than dropping one.
async fn ack(client: AsyncClient, mut acks: mpsc::UnboundedReceiver<(u16, QoS)>) {
    while let Some((pkid, qos)) = acks.recv().await {
        let mut publish = Publish::new("", qos, Vec::new());
        publish.pkid = pkid;
        if client.ack(&publish).await.is_err() {
            return;
        }
    }
}

/// Jitter in [0.5, 1): enough to spread reconnects without another dependency.
fn fastrand_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    0.5 + f64::from(nanos % 1000) / 2000.0
}
