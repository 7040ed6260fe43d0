//! The devices: one MQTT client on the external broker publishing a planned stream of bare values
//! at QoS 1 at a steady rate. Each payload is its sequence number and nothing else (no
//! timestamp, the seed's main format), so every message is told apart by its value alone, and a
//! stored value twice is a duplicate whatever its `ts`.
//!
//! The stream can be held: no new message goes out and every one sent is acknowledged by the
//! broker, so that restarting the external broker never makes the publisher itself send a
//! message twice (MQTT 3.1.1 QoS 1 would) and blur what the bridge did.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use uuid::Uuid;

use gito_testkit::wait_for;

/// What was sent, by device path (the `external_id` the bridge gives it): the values.
pub type Expected = BTreeMap<String, BTreeSet<u64>>;

/// Which device a message goes to.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// Message `seq` to device `seq % devices`: every device from the start.
    RoundRobin,
    /// `n` consecutive messages per device: a new device every `n` messages, to the end.
    Blocks(u64),
}

/// A stream: `count` messages over `devices` device paths `{prefix}/D000`..., at `per_second`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub prefix: &'static str,
    pub devices: u64,
    pub count: u64,
    pub per_second: u64,
    pub layout: Layout,
}

impl Plan {
    pub fn new(prefix: &'static str, devices: u64, count: u64, per_second: u64) -> Plan {
        Plan {
            prefix,
            devices,
            count,
            per_second,
            layout: Layout::RoundRobin,
        }
    }

    pub fn layout(mut self, layout: Layout) -> Plan {
        self.layout = layout;
        self
    }

    pub fn device(&self, seq: u64) -> u64 {
        match self.layout {
            Layout::RoundRobin => seq % self.devices,
            Layout::Blocks(n) => (seq / n) % self.devices,
        }
    }

    pub fn external_id(&self, device: u64) -> String {
        format!("{}/D{device:03}", self.prefix)
    }

    pub fn topic(&self, seq: u64) -> String {
        format!("{}/v", self.external_id(self.device(seq)))
    }

    /// The messages `seqs` of this plan, by device.
    pub fn expected(&self, seqs: impl IntoIterator<Item = u64>) -> Expected {
        let mut expected = Expected::new();
        for seq in seqs {
            expected
                .entry(self.external_id(self.device(seq)))
                .or_default()
                .insert(seq);
        }
        expected
    }

    pub fn all(&self) -> Expected {
        self.expected(0..self.count)
    }
}

#[derive(Default)]
struct Counters {
    /// Publishes handed to the client (stream and one-offs).
    issued: AtomicU64,
    /// PUBACKs from the broker.
    acked: AtomicU64,
    /// Stream messages handed to the client: seqs `0..streamed` went out.
    streamed: AtomicU64,
    /// The stream is parked by a hold (or done).
    parked: AtomicBool,
}

pub struct Publisher {
    client: AsyncClient,
    counters: Arc<Counters>,
    held: watch::Sender<bool>,
    stream: Option<tokio::task::JoinHandle<()>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(broker_url: &str) -> Publisher {
        let port: u16 = broker_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("broker URL with a port");
        let mut options = MqttOptions::new(
            format!("fault-matrix-devices-{}", Uuid::new_v4().simple()),
            "127.0.0.1",
            port,
        );
        options.set_max_packet_size(1 << 24, 1 << 24);
        options.set_inflight(200);
        options.set_keep_alive(Duration::from_secs(15));
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let counters = Arc::new(Counters::default());
        let acks = counters.clone();
        let driver = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acks.acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    // The broker is being restarted: the next poll reconnects.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let (held, _) = watch::channel(false);
        Publisher {
            client,
            counters,
            held,
            stream: None,
            driver,
        }
    }

    /// Starts publishing `plan` in the background, one message per tick.
    pub fn stream(&mut self, plan: &Plan) {
        assert!(self.stream.is_none(), "one stream per publisher");
        let (client, counters, plan) = (self.client.clone(), self.counters.clone(), plan.clone());
        let mut held = self.held.subscribe();
        self.stream = Some(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / plan.per_second));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for seq in 0..plan.count {
                tick.tick().await;
                if *held.borrow_and_update() {
                    counters.parked.store(true, Ordering::SeqCst);
                    let _ = held.wait_for(|h| !*h).await;
                    counters.parked.store(false, Ordering::SeqCst);
                }
                client
                    .publish(plan.topic(seq), QoS::AtLeastOnce, false, seq.to_string())
                    .await
                    .expect("publish");
                counters.issued.fetch_add(1, Ordering::SeqCst);
                counters.streamed.fetch_add(1, Ordering::SeqCst);
            }
            counters.parked.store(true, Ordering::SeqCst);
        }));
    }

    /// Publishes one message outside the stream (QoS 1).
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
        self.counters.issued.fetch_add(1, Ordering::SeqCst);
    }

    /// Stream messages handed to the client so far: seqs `0..streamed()`.
    pub fn streamed(&self) -> u64 {
        self.counters.streamed.load(Ordering::SeqCst)
    }

    /// Parks the stream before its next message and waits until the broker acknowledged
    /// everything sent. Returns `streamed()` at that point.
    pub async fn hold(&self) -> u64 {
        self.held.send_replace(true);
        let counters = self.counters.clone();
        wait_for(
            Duration::from_secs(30),
            "the publisher parked, every message acknowledged by the external broker",
            || {
                let c = counters.clone();
                async move {
                    c.parked.load(Ordering::SeqCst)
                        && c.acked.load(Ordering::SeqCst) >= c.issued.load(Ordering::SeqCst)
                }
            },
        )
        .await;
        self.streamed()
    }

    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Waits until the stream reached `seqs` messages.
    pub async fn wait_streamed(&self, seqs: u64) {
        let counters = self.counters.clone();
        wait_for(
            Duration::from_secs(60),
            &format!("{seqs} messages published"),
            || {
                let c = counters.clone();
                async move { c.streamed.load(Ordering::SeqCst) >= seqs }
            },
        )
        .await;
    }

    /// Waits for the end of the stream and for every publish to be acknowledged.
    pub async fn finish(mut self) {
        if let Some(stream) = self.stream.take() {
            tokio::time::timeout(Duration::from_secs(120), stream)
                .await
                .expect("the stream ends in time")
                .expect("the stream task");
        }
        let counters = self.counters.clone();
        wait_for(
            Duration::from_secs(30),
            "every publish acknowledged by the external broker",
            || {
                let c = counters.clone();
                async move { c.acked.load(Ordering::SeqCst) >= c.issued.load(Ordering::SeqCst) }
            },
        )
        .await;
        let _ = self.client.disconnect().await;
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if let Some(stream) = &self.stream {
            stream.abort();
        }
        self.driver.abort();
    }
}
