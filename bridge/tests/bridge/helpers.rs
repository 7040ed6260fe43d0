//! The stack a bridge test runs against, and MQTT clients that publish and collect like devices
//! and the processor would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gito_bridge::config::BridgeConfig;
use gito_bridge::metrics::Metrics;
use gito_testkit::{Broker, TestApi, TestDb, wait_for};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use gito_testkit::wait_for as wait;

pub struct Stack {
    pub db: TestDb,
    pub api: Option<TestApi>,
    pub api_addr: SocketAddr,
    pub external: Broker,
    pub local: Broker,
    pub tenant: Uuid,
    pub spool: tempfile::TempDir,
    /// The tenant token the bridge uses.
    pub token: String,
    http: reqwest::Client,
}

impl Stack {
    pub async fn start() -> Stack {
        let db = TestDb::migrated().await;
        let api = TestApi::start(&db.url, "127.0.0.1:0".parse().expect("address")).await;
        let tenant = gito_testkit::create_tenant(&api.url(""), "plant").await;
        // The bridge works with a token of its own tenant, as deployed.
        let token = gito_testkit::create_tenant_token(&api.url(""), tenant).await;
        let http = gito_testkit::client_with_token(&token);
        Stack {
            api_addr: api.addr,
            api: Some(api),
            db,
            external: Broker::start().await,
            local: Broker::start().await,
            tenant,
            token,
            spool: tempfile::tempdir().expect("spool dir"),
            http,
        }
    }

    pub fn config(&self) -> BridgeConfig {
        BridgeConfig {
            external_mqtt_url: self.external.url().parse().expect("url"),
            topics: vec!["#".to_owned()],
            local_mqtt_url: self.local.url().parse().expect("url"),
            api_url: format!("http://{}", self.api_addr).parse().expect("url"),
            tenant_id: self.tenant,
            api_token: self.token.as_str().into(),
            mapping: None,
            spool_dir: self.spool.path().to_owned(),
            spool_max_bytes: 64 << 20,
            max_payload_bytes: 256 * 1024,
            metrics_addr: None,
            stats_interval_secs: 60,
            replay_window_secs: 15,
            device_cache_max: 1_000_000,
            max_new_devices_per_minute: 60_000,
            replay_max_bytes: 64 << 20,
        }
    }

    /// The environment the `gito-bridge` binary gets for this stack.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GITO_EXTERNAL_MQTT_URL", self.external.url()),
            ("GITO_LOCAL_MQTT_URL", self.local.url()),
            ("GITO_API_URL", format!("http://{}", self.api_addr)),
            ("GITO_TENANT_ID", self.tenant.to_string()),
            ("GITO_API_TOKEN", self.token.clone()),
            (
                "GITO_BRIDGE_SPOOL_DIR",
                self.spool.path().display().to_string(),
            ),
        ]
    }

    pub async fn stop_api(&mut self) {
        if let Some(api) = self.api.take() {
            api.stop().await;
        }
    }

    pub async fn start_api(&mut self) {
        self.api = Some(TestApi::start(&self.db.url, self.api_addr).await);
    }

    /// Every device of the tenant, through the API.
    pub async fn devices(&self) -> Vec<Value> {
        let mut devices = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "http://{}/tenants/{}/devices?limit=1000",
                self.api_addr, self.tenant
            );
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Value = self
                .http
                .get(url)
                .send()
                .await
                .expect("list")
                .json()
                .await
                .expect("json");
            devices.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return devices,
            }
        }
    }

    pub fn telemetry_filter(&self) -> String {
        format!("{}/devices/+/telemetry", self.tenant)
    }
}

/// gito-bridge running in-process.
pub struct RunningBridge {
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningBridge {
    pub async fn start(config: BridgeConfig) -> RunningBridge {
        init_logs();
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gito_bridge::run_with_metrics(
            config,
            shutdown.clone(),
            metrics.clone(),
        ));
        let ready = metrics.clone();
        wait_for(Duration::from_secs(10), "bridge subscribed", || {
            let ready = ready.clone();
            let failed = task.is_finished();
            async move {
                assert!(!failed, "the bridge stopped during start-up");
                Metrics::is(&ready.external_connected)
            }
        })
        .await;
        RunningBridge {
            metrics,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(20), self.task).await;
        result
            .expect("bridge stops in time")
            .expect("bridge task")
            .expect("bridge ran cleanly");
    }
}

/// One message as the processor would receive it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub envelope: Value,
}

impl Received {
    /// (source topic, the `seq` metric the test publishers put in every payload)
    pub fn key(&self) -> (String, u64) {
        let source = self.envelope["source_topic"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (
            source,
            self.envelope["metrics"]["seq"].as_f64().unwrap_or(-1.0) as u64,
        )
    }
}

/// A QoS 1 subscriber with a persistent session, collecting everything it receives.
pub struct Collector {
    received: Arc<Mutex<Vec<Received>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn subscribe(broker_url: &str, filter: &str) -> Collector {
        let url: gito_runtime::mqtt::MqttUrl = broker_url.parse().expect("url");
        let mut options = url.options(&format!("collector-{}", Uuid::new_v4().simple()));
        options.set_clean_session(false);
        options.set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let received = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicUsize::new(0));
        let (sink, ready, filter) = (received.clone(), subscribed.clone(), filter.to_owned());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                        client
                            .subscribe(&filter, QoS::AtLeastOnce)
                            .await
                            .expect("subscribe");
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        ready.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let envelope =
                            serde_json::from_slice(&p.payload).expect("envelope is JSON");
                        sink.lock().expect("lock").push(Received {
                            topic: p.topic.clone(),
                            envelope,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        wait_for(Duration::from_secs(10), "collector subscribed", || {
            let ready = subscribed.clone();
            async move { ready.load(Ordering::SeqCst) > 0 }
        })
        .await;
        Collector {
            received,
            _task: task,
        }
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    /// How often each (source topic, seq) arrived.
    pub fn tally(&self) -> HashMap<(String, u64), usize> {
        let mut tally = HashMap::new();
        for r in self.all() {
            *tally.entry(r.key()).or_default() += 1;
        }
        tally
    }

    /// Waits until every key of `expected` arrived at least once.
    pub async fn wait_for_all(&self, expected: &[(String, u64)], deadline: Duration) {
        let result = tokio::time::timeout(deadline, async {
            loop {
                let tally = self.tally();
                if expected.iter().all(|k| tally.contains_key(k)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if result.is_err() {
            let tally = self.tally();
            let missing: Vec<_> = expected
                .iter()
                .filter(|k| !tally.contains_key(*k))
                .take(10)
                .collect();
            let total_missing = expected.iter().filter(|k| !tally.contains_key(*k)).count();
            panic!(
                "{total_missing} of {} messages never arrived, e.g. {missing:?}",
                expected.len()
            );
        }
    }

    /// Every copy of a message carries the identity of its first receipt: one `ts` per (source,
    /// seq), so that the processor stores it once. Returns how many copies were extra.
    pub fn assert_one_identity_per_message(&self) -> usize {
        let mut stamps: HashMap<(String, u64), std::collections::HashSet<String>> = HashMap::new();
        let all = self.all();
        for r in &all {
            let ts = r.envelope["ts"].as_str().unwrap_or_default().to_owned();
            stamps.entry(r.key()).or_default().insert(ts);
        }
        let split: Vec<_> = stamps
            .iter()
            .filter(|(_, ts)| ts.len() > 1)
            .take(5)
            .collect();
        assert!(
            split.is_empty(),
            "messages republished with more than one identity (stored twice): {split:?}"
        );
        all.len() - stamps.len()
    }

    /// Per source topic, the seqs must never go backwards except to repeat (a redelivery).
    pub fn assert_ordered_per_source(&self) {
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut seen: HashMap<String, std::collections::HashSet<u64>> = HashMap::new();
        for r in self.all() {
            let (source, seq) = r.key();
            let seen = seen.entry(source.clone()).or_default();
            if let Some(prev) = last.get(&source) {
                assert!(
                    seq > *prev || seen.contains(&seq),
                    "{source}: seq {seq} arrived after {prev}"
                );
            }
            seen.insert(seq);
            last.insert(source, seq);
        }
    }
}

/// A device on the external broker: publishes at QoS 1 and waits for every PUBACK.
pub struct Device {
    client: AsyncClient,
    acked: Arc<AtomicUsize>,
    sent: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    pub async fn connect(broker_url: &str) -> Device {
        let url: gito_runtime::mqtt::MqttUrl = broker_url.parse().expect("url");
        let mut options: MqttOptions = url.options(&format!("device-{}", Uuid::new_v4().simple()));
        options.set_max_packet_size(1 << 24, 1 << 24);
        options.set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let acked = Arc::new(AtomicUsize::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Device {
            client,
            acked,
            sent: 0,
            task,
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
        self.sent += 1;
    }

    /// Waits until the broker acknowledged everything published, then disconnects.
    pub async fn finish(self) {
        let (acked, sent) = (self.acked.clone(), self.sent);
        wait_for(
            Duration::from_secs(30),
            "broker acked every publish",
            || {
                let acked = acked.clone();
                async move { acked.load(Ordering::SeqCst) >= sent }
            },
        )
        .await;
        let _ = self.client.disconnect().await;
        self.task.abort();
    }
}

/// `{"seq": n, "v": ...}`: every test payload carries a sequence number to find it again.
pub fn reading(seq: u64) -> Vec<u8> {
    json!({ "seq": seq, "v": seq as f64 / 10.0 })
        .to_string()
        .into_bytes()
}

pub fn bridge_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gito-bridge"))
}

/// The bridge's logs in the test output (shown for failing tests), `RUST_LOG` to filter.
fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=warn"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .init();
    });
}
