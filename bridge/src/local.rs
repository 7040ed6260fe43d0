//! Publishes to the local broker at QoS 1 and tells each caller when *its* message was
//! acknowledged. rumqttc reports packet ids only as events, so we correlate: publishes enter the
//! request channel in the order we record them, and `Outgoing::Publish(pkid)` events come out in
//! that order. Every unacknowledged message stays here until the broker acks it; on any connection
//! error the connection is rebuilt and they are published again, in order (rumqttc itself would
//! drop them when the broker lost our session).
//!
//! MQTT 5, for one reason code: a broker acknowledges a message nobody subscribed to with "no
//! matching subscribers" — it went nowhere. That is the state of a local broker before any
//! processor has subscribed (a first start, or a Mosquitto restarted without the processor's
//! shared subscription). Such a message is not acknowledged to the caller: it is published again
//! every `NO_SUBSCRIBER_RETRY` until someone receives it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::metrics::Metrics;
use gito_runtime::Backoff;

/// How long a message the broker had no subscriber for waits before it is published again.
const NO_SUBSCRIBER_RETRY: Duration = Duration::from_millis(500);
/// At most one warning about missing subscribers per this long.
const NO_SUBSCRIBER_LOG_EVERY: Duration = Duration::from_secs(10);

/// A filter the local connection subscribes to, and where its messages' payloads go.
pub struct Subscription {
    pub filter: String,
    pub messages: mpsc::UnboundedSender<Bytes>,
}

/// Resolves when the broker acknowledged the message; errors when it was cancelled.
pub type Delivery = oneshot::Receiver<()>;

#[derive(Clone)]
pub struct LocalPublisher {
    shared: Arc<Mutex<Shared>>,
    permits: Arc<Semaphore>,
}

struct Shared {
    client: AsyncClient,
    /// Bumped by `cancel_all`: the connection task then starts a fresh connection.
    generation: u64,
    /// Bumped whenever the connection is rebuilt (which republishes everything unacknowledged).
    epoch: u64,
    /// Unacknowledged messages the broker had no subscriber for, to publish again.
    parked: Vec<u64>,
    /// When missing subscribers were last logged.
    no_subscriber_logged: Option<Instant>,
    /// Since when no connection was up (from the start, until the first connection).
    down_since: Option<Instant>,
    /// Connections lost so far: each loss may have been the broker's crash, which loses what it
    /// had not saved yet (the forwarder then replays its window).
    losses: u64,
    next_seq: u64,
    unacked: BTreeMap<u64, Entry>,
    /// Handed to the current client, not yet given a packet id, in channel order.
    awaiting_pkid: VecDeque<u64>,
    by_pkid: HashMap<u16, u64>,
}

struct Entry {
    topic: String,
    payload: Bytes,
    done: oneshot::Sender<()>,
    _permit: OwnedSemaphorePermit,
}

impl LocalPublisher {
    /// The publisher, and the connection to poll (until the disconnect went out; dropping it
    /// drops the connection). At most `capacity` messages are unacknowledged at once.
    ///
    /// With `subscription`, the connection also subscribes to that filter (QoS 1; for it to be
    /// kept while we are away, `options` must ask for a session that outlives the connection)
    /// and hands what arrives to its sender.
    pub fn start(
        mut options: MqttOptions,
        capacity: usize,
        metrics: Arc<Metrics>,
        subscription: Option<Subscription>,
    ) -> (LocalPublisher, impl Future<Output = ()> + Send + 'static) {
        options.set_outgoing_inflight_upper_limit(u16::try_from(capacity).unwrap_or(u16::MAX));
        let (client, eventloop) = connect(&options, capacity);
        let shared = Arc::new(Mutex::new(Shared {
            client,
            generation: 0,
            epoch: 0,
            parked: Vec::new(),
            no_subscriber_logged: None,
            down_since: Some(Instant::now()),
            losses: 0,
            next_seq: 0,
            unacked: BTreeMap::new(),
            awaiting_pkid: VecDeque::new(),
            by_pkid: HashMap::new(),
        }));
        let publisher = LocalPublisher {
            shared: shared.clone(),
            permits: Arc::new(Semaphore::new(capacity)),
        };
        let (filter, events) = subscription.map(|s| (s.filter, s.messages)).unzip();
        let connection = drive(
            eventloop, options, capacity, shared, metrics, filter, events,
        );
        (publisher, connection)
    }

    /// Hands a message over, waiting while `capacity` messages are unacknowledged.
    pub async fn publish(&self, topic: String, payload: Bytes) -> Delivery {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let (done, delivery) = oneshot::channel();
        let mut shared = self.shared.lock().expect("publisher lock");
        let seq = shared.next_seq;
        shared.next_seq += 1;
        send(&shared.client, &topic, &payload);
        shared.awaiting_pkid.push_back(seq);
        shared.unacked.insert(
            seq,
            Entry {
                topic,
                payload,
                done,
                _permit: permit,
            },
        );
        delivery
    }

    /// How long no connection has been up (zero while connected).
    pub fn down_for(&self) -> Duration {
        let shared = self.shared.lock().expect("publisher lock");
        shared
            .down_since
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// How many times the connection was lost so far.
    pub fn losses(&self) -> u64 {
        self.shared.lock().expect("publisher lock").losses
    }

    pub fn unacked(&self) -> usize {
        self.shared.lock().expect("publisher lock").unacked.len()
    }

    /// Forgets every unacknowledged message (their deliveries fail) and reconnects afresh, so
    /// that nothing handed over before is published later. For when the caller has stored them
    /// elsewhere (the spool).
    pub fn cancel_all(&self) {
        let mut shared = self.shared.lock().expect("publisher lock");
        shared.parked.clear();
        shared.unacked.clear();
        shared.awaiting_pkid.clear();
        shared.by_pkid.clear();
        shared.generation += 1;
    }

    pub async fn disconnect(&self) {
        let client = self.shared.lock().expect("publisher lock").client.clone();
        let _ = client.disconnect().await;
    }
}

fn connect(options: &MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    // Room for every message we may hand over, so `try_publish` never finds the channel full.
    AsyncClient::new(options.clone(), capacity + 16)
}

fn send(client: &AsyncClient, topic: &str, payload: &Bytes) {
    // Fails only when the connection is being replaced; the entry is then republished on the
    // new connection, so the error carries no information.
    let _ = client.try_publish(topic, QoS::AtLeastOnce, false, payload.clone());
}

/// Publishes the parked messages again after `NO_SUBSCRIBER_RETRY`, unless the connection was
/// rebuilt meanwhile: the rebuild republished what was parked then, and what parked since belongs
/// to the new connection's own retry — taking it here would leave it unacknowledged for good.
fn retry_parked(shared: Arc<Mutex<Shared>>, epoch: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(NO_SUBSCRIBER_RETRY).await;
        let mut guard = shared.lock().expect("publisher lock");
        if guard.epoch != epoch {
            return;
        }
        let parked = std::mem::take(&mut guard.parked);
        let guard = &mut *guard;
        for seq in parked {
            if let Some(entry) = guard.unacked.get(&seq) {
                send(&guard.client, &entry.topic, &entry.payload);
                guard.awaiting_pkid.push_back(seq);
            }
        }
    });
}

async fn drive(
    mut eventloop: EventLoop,
    options: MqttOptions,
    capacity: usize,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
    subscription: Option<String>,
    events: Option<mpsc::UnboundedSender<Bytes>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut generation = 0;
    loop {
        let event = eventloop.poll().await;
        let rebuild = {
            let mut guard = shared.lock().expect("publisher lock");
            let stale = guard.generation != generation;
            match &event {
                _ if stale => {}
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    guard.down_since = None;
                    if let (Some(filter), false) = (&subscription, ack.session_present) {
                        let _ = guard.client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Metrics::set(&metrics.local_connected, true);

                    backoff.reset();
                    tracing::info!(broker = ?options.broker_address(), "connected to the local broker");
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(seq) = guard.awaiting_pkid.pop_front() {
                        guard.by_pkid.insert(*pkid, seq);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack)))
                    if ack.reason == PubAckReason::NoMatchingSubscribers =>
                {
                    if let Some(seq) = guard.by_pkid.remove(&ack.pkid) {
                        Metrics::add(&metrics.no_subscribers, 1);
                        let first = guard.parked.is_empty();
                        guard.parked.push(seq);
                        if first {
                            retry_parked(shared.clone(), guard.epoch);
                        }
                        if guard
                            .no_subscriber_logged
                            .is_none_or(|at| at.elapsed() >= NO_SUBSCRIBER_LOG_EVERY)
                        {
                            guard.no_subscriber_logged = Some(Instant::now());
                            tracing::warn!(
                                "the local broker has no subscriber for our messages (is a processor running and subscribed?): holding them and retrying"
                            );
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let seq = guard.by_pkid.remove(&ack.pkid);
                    if let Some(entry) = seq.and_then(|seq| guard.unacked.remove(&seq)) {
                        Metrics::add(&metrics.republished, 1);
                        let _ = entry.done.send(());
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if let Some(events) = &events {
                        let _ = events.send(publish.payload.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if guard.down_since.is_none() {
                        guard.losses += 1;
                    }
                    guard.down_since.get_or_insert_with(Instant::now);
                    Metrics::set(&metrics.local_connected, false);
                    Metrics::add(&metrics.broker_errors, 1);
                    tracing::warn!(error = %e, unacked = guard.unacked.len(), "local broker connection lost; reconnecting");
                }
            }
            stale || event.is_err()
        };
        if !rebuild {
            continue;
        }
        if event.is_err() {
            tokio::time::sleep(backoff.next_delay()).await;
        }
        // A fresh connection with everything unacknowledged published again, in order.
        let (client, fresh) = connect(&options, capacity);
        let mut guard = shared.lock().expect("publisher lock");
        guard.awaiting_pkid = guard.unacked.keys().copied().collect();
        guard.by_pkid.clear();
        guard.parked.clear();
        guard.epoch += 1;
        for entry in guard.unacked.values() {
            send(&client, &entry.topic, &entry.payload);
        }
        guard.client = client;
        generation = guard.generation;
        eventloop = fresh;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use gito_runtime::mqtt::MqttUrl;
    use gito_testkit::{Broker, wait_for};

    use super::*;

    /// A message parked for want of a subscriber, then a rebuilt connection (the forwarder's
    /// `cancel_all` after a lost connection) whose first message parks before the old retry
    /// fires: that message must still be retried and delivered once someone subscribes. (The old
    /// retry took it and dropped it, and the drainer waited for its delivery for ever: the fault
    /// matrix saw everything after a local broker SIGKILL stay in the spool.)
    #[tokio::test]
    async fn a_message_parked_after_a_rebuild_is_retried_until_someone_subscribes() {
        let broker = Broker::start().await;
        let url: MqttUrl = broker.url().parse().expect("broker url");
        let metrics = Arc::new(Metrics::default());
        let (publisher, connection) = LocalPublisher::start(
            url.options_v5("parked-test", None),
            8,
            metrics.clone(),
            None,
        );
        tokio::spawn(connection);
        let parked = |n: u64| {
            let metrics = metrics.clone();
            async move { metrics.no_subscribers.load(Ordering::Relaxed) >= n }
        };

        let first = publisher
            .publish("t/parked".into(), Bytes::from_static(b"1"))
            .await;
        wait_for(Duration::from_secs(5), "the first message parked", || {
            parked(1)
        })
        .await;
        publisher.cancel_all();
        assert!(first.await.is_err(), "cancelled with the old connection");
        let second = publisher
            .publish("t/parked".into(), Bytes::from_static(b"2"))
            .await;
        wait_for(Duration::from_secs(5), "the second message parked", || {
            parked(2)
        })
        .await;

        let mut options = url.options_v5("parked-test-subscriber", None);
        options.set_keep_alive(Duration::from_secs(5));
        let (subscriber, mut events) = AsyncClient::new(options, 10);
        subscriber
            .subscribe("t/parked", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let received = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => return p.payload,
                    Ok(_) => {}
                    Err(e) => panic!("subscriber connection: {e}"),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the parked message was retried and acknowledged")
            .expect("delivered, not cancelled");
        let payload = tokio::time::timeout(Duration::from_secs(5), received)
            .await
            .expect("the subscriber received it")
            .expect("subscriber task");
        assert_eq!(&payload[..], b"2");
    }
}
