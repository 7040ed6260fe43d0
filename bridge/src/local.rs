//! Publishes to the local broker at QoS 1 and tells each caller when *its* message was
//! acknowledged. rumqttc's v4 client reports packet ids only as events, so we correlate: publishes
//! enter the request channel in the order we record them, and `Outgoing::Publish(pkid)` events
//! come out in that order. Every unacknowledged message stays here until the broker acks it; on
//! any connection error the connection is rebuilt and they are published again, in order (rumqttc
//! itself would drop them when the broker lost our session).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::metrics::Metrics;
use gito_runtime::Backoff;

/// A filter the local connection subscribes to, and where its messages go.
pub struct Subscription {
    pub filter: String,
    pub messages: mpsc::UnboundedSender<Publish>,
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
    /// With `subscription`, the connection also subscribes to that filter (QoS 1, in a session
    /// the broker keeps while we are away) and hands what arrives to its sender.
    pub fn start(
        mut options: MqttOptions,
        capacity: usize,
        metrics: Arc<Metrics>,
        subscription: Option<Subscription>,
    ) -> (LocalPublisher, impl Future<Output = ()> + Send + 'static) {
        options.set_clean_session(subscription.is_none());
        let (client, eventloop) = connect(&options, capacity);
        let shared = Arc::new(Mutex::new(Shared {
            client,
            generation: 0,
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
    let _ = client.try_publish(topic, QoS::AtLeastOnce, false, payload.to_vec());
}

async fn drive(
    mut eventloop: EventLoop,
    options: MqttOptions,
    capacity: usize,
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
    subscription: Option<String>,
    events: Option<mpsc::UnboundedSender<Publish>>,
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
                        let _ = events.send(publish.clone());
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
        for entry in guard.unacked.values() {
            send(&client, &entry.topic, &entry.payload);
        }
        guard.client = client;
        generation = guard.generation;
        eventloop = fresh;
    }
}
