//! Bringing up gito's own processes for a benchmark: gito-api on a fresh database, a tenant,
//! gito-bridge between two brokers; and all of it at once as a `Fleet`, the pipeline as deployed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gito_testkit::{Broker, Scrape, TestDb, free_port, publish_all};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::bridge::{external_id, topic};
use crate::procs::{Meter, Process, Source};

pub struct Api {
    pub process: Process,
    pub url: String,
}

pub async fn start_api(db_url: &str, extra_env: &[(&str, String)]) -> anyhow::Result<Api> {
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut env = vec![
        ("DATABASE_URL", db_url.to_owned()),
        ("GITO_ADMIN_TOKEN", gito_testkit::ADMIN_TOKEN.to_owned()),
        (
            "GITO_API_ADDR",
            url.trim_start_matches("http://").to_owned(),
        ),
    ];
    env.extend(extra_env.iter().cloned());
    let process = Process::spawn("gito-api", &env)?;
    wait_http_ok(&format!("{url}/ready"), Duration::from_secs(30))
        .await
        .context("gito-api ready")?;
    Ok(Api { process, url })
}

pub async fn wait_http_ok(url: &str, deadline: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let client = reqwest::Client::new();
    while started.elapsed() < deadline {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    anyhow::bail!("{url} not OK within {deadline:?}")
}

/// A tenant and a token of it, as the bridge and the benchmarks' clients use.
pub struct Tenant {
    pub id: Uuid,
    pub token: String,
}

pub async fn create_tenant(api_url: &str) -> anyhow::Result<Tenant> {
    let id = gito_testkit::create_tenant(api_url, "bench").await;
    let token = gito_testkit::create_tenant_token(api_url, id).await;
    Ok(Tenant { id, token })
}

pub async fn start_bridge(
    external_port: u16,
    local_port: u16,
    api_url: &str,
    tenant: &Tenant,
    spool: &std::path::Path,
    extra_env: &[(&'static str, String)],
) -> anyhow::Result<Process> {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut env = vec![
        (
            "GITO_EXTERNAL_MQTT_URL",
            format!("mqtt://127.0.0.1:{external_port}"),
        ),
        (
            "GITO_LOCAL_MQTT_URL",
            format!("mqtt://127.0.0.1:{local_port}"),
        ),
        ("GITO_API_URL", api_url.to_owned()),
        ("GITO_TENANT_ID", tenant.id.to_string()),
        ("GITO_API_TOKEN", tenant.token.clone()),
        ("GITO_BRIDGE_SPOOL_DIR", spool.display().to_string()),
        ("GITO_BRIDGE_METRICS_ADDR", metrics.clone()),
    ];
    env.extend_from_slice(extra_env);
    let process = Process::spawn("gito-bridge", &env)?;
    let started = Instant::now();
    loop {
        let connected = Scrape::get(&format!("http://{metrics}/metrics"), None)
            .await
            .is_some_and(|s| s.value("gito_bridge_external_connected", &[]) == 1.0);
        if connected {
            return Ok(process);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "gito-bridge did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The whole pipeline as deployed: external Mosquitto → gito-bridge → local Mosquitto →
/// gito-api's processor → PostgreSQL, on a fresh database with one tenant.
pub struct Fleet {
    pub external: Broker,
    pub local: Broker,
    pub db: TestDb,
    pub api: Api,
    pub tenant: Tenant,
    bridge: Option<Process>,
    /// What gito-bridge gets beside the fleet's own settings, at start and at every restart.
    bridge_env: Vec<(&'static str, String)>,
    spool: PathBuf,
    /// The event times published messages carry.
    pub clock: EventClock,
}

/// Event times (ms since the epoch) for the messages a bench publishes, as a live fleet's: a
/// device's next is now, or a millisecond after its previous one if that is later, so that every
/// message is a row of its own. Not a counter running ahead of or behind the clock: a row older
/// than the rollup follower's edge (a minute back) is late data and costs a recompute, which a
/// bench of live ingest must not measure.
#[derive(Clone, Default)]
pub struct EventClock(Arc<tokio::sync::Mutex<Vec<u64>>>);

/// One publisher's hold on the clock.
pub struct EventTimes(tokio::sync::OwnedMutexGuard<Vec<u64>>);

impl EventClock {
    /// For one publisher at a time.
    pub async fn take(&self) -> EventTimes {
        EventTimes(self.0.clone().lock_owned().await)
    }
}

impl EventTimes {
    pub fn next(&mut self, device: u64) -> u64 {
        let device = device as usize;
        if device >= self.0.len() {
            self.0.resize(device + 1, 0);
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let ts = (now as u64).max(self.0[device] + 1);
        self.0[device] = ts;
        ts
    }
}

impl Fleet {
    pub async fn start() -> anyhow::Result<Fleet> {
        Fleet::start_with_bridge_env(Vec::new()).await
    }

    /// As `start`, with these variables for gito-bridge on top (e.g. its creation budget).
    pub async fn start_with_bridge_env(
        bridge_env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<Fleet> {
        let external = Broker::start().await;
        let local =
            Broker::start_with("max_inflight_messages 2000\nmax_queued_messages 1000000\n").await;
        let db = TestDb::migrated().await;
        // As deployed: the live fan-out on (it takes telemetry only while a WebSocket watches).
        let api = start_api(&db.url, &[("GITO_MQTT_URL", local.url())]).await?;
        let tenant = create_tenant(&api.url).await?;
        let spool = std::env::temp_dir().join(format!(
            "gito-bench-spool-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let bridge = start_bridge(
            external.port,
            local.port,
            &api.url,
            &tenant,
            &spool,
            &bridge_env,
        )
        .await?;
        Ok(Fleet {
            external,
            local,
            db,
            api,
            tenant,
            bridge: Some(bridge),
            bridge_env,
            spool,
            clock: EventClock::default(),
        })
    }

    /// Creates devices `0..n` (as the bridge would name them) through the batch endpoint, a few
    /// batches at a time, so that a large fleet is set up in seconds.
    pub async fn create_devices(&self, n: u64) -> anyhow::Result<()> {
        const BATCH: u64 = 1000;
        const CONCURRENT: usize = 4;
        let http = gito_testkit::client_with_token(&self.tenant.token);
        let url = format!("{}/tenants/{}/devices/batch", self.api.url, self.tenant.id);
        let mut starts = (0..n).step_by(BATCH as usize);
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < CONCURRENT
                && let Some(first) = starts.next()
            {
                let devices: Vec<Value> = (first..(first + BATCH).min(n))
                    .map(|d| json!({ "external_id": external_id(d), "device_type": "SDE11" }))
                    .collect();
                let request = http.post(&url).json(&json!({ "devices": devices }));
                running.spawn(async move {
                    let response = request.send().await?;
                    let status = response.status();
                    anyhow::ensure!(
                        status.is_success(),
                        "devices/batch: {status} {}",
                        response.text().await.unwrap_or_default()
                    );
                    Ok(())
                });
            }
            match running.join_next().await {
                Some(done) => done??,
                None => return Ok(()),
            }
        }
    }

    /// Every device `0..n` publishes once (creating the ones the API does not know yet) and the
    /// rows are awaited: afterwards every cache on the way knows every device.
    pub async fn warm_up(&self, n: u64) -> anyhow::Result<()> {
        let before = self.stored().await?;
        let warm: Vec<(String, Vec<u8>)> = (0..n).map(|d| (topic(d), b"1".to_vec())).collect();
        publish_all(&self.external.url(), warm).await;
        self.wait_stored(before + n, Duration::from_secs(3600))
            .await
    }

    /// Rows the processor committed so far (`gito_processor_rows_stored_total`: counted after the
    /// commit, and cheap to read where `count(*)` would scan a table of millions of rows).
    pub async fn stored(&self) -> anyhow::Result<u64> {
        stored_rows(&reqwest::Client::new(), &self.metrics_url()).await
    }

    /// Waits until `n` rows are stored; gives up at `deadline`, or once the count stood still
    /// for a minute (messages were lost or taken for duplicates: waiting longer shows nothing).
    pub async fn wait_stored(&self, n: u64, deadline: Duration) -> anyhow::Result<()> {
        const STALL: Duration = Duration::from_secs(60);
        let until = Instant::now() + deadline;
        let (mut last, mut moved) = (0, Instant::now());
        loop {
            let stored = self.stored().await?;
            if stored >= n {
                return Ok(());
            }
            if stored != last {
                (last, moved) = (stored, Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < until && moved.elapsed() < STALL,
                "only {stored} of {n} rows stored (no progress for {:.0} s)",
                moved.elapsed().as_secs_f64()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The rows in the table: the ground truth, for counting losses once a run is over.
    pub async fn rows(&self) -> anyhow::Result<u64> {
        let mut conn = PgConnection::connect(&self.db.url).await?;
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry")
            .fetch_one(&mut conn)
            .await?;
        Ok(rows as u64)
    }

    /// The metrics URL the stored-rows counter is read from.
    pub fn metrics_url(&self) -> String {
        format!("{}/metrics", self.api.url)
    }

    /// SIGTERM to gito-bridge, wait for it to exit, start it again on the same spool directory;
    /// returns once the new one is subscribed.
    pub async fn restart_bridge(&mut self) -> anyhow::Result<()> {
        if let Some(bridge) = self.bridge.take() {
            bridge.stop().await;
        }
        self.bridge = Some(
            start_bridge(
                self.external.port,
                self.local.port,
                &self.api.url,
                &self.tenant,
                &self.spool,
                &self.bridge_env,
            )
            .await?,
        );
        Ok(())
    }

    /// Every process of the pipeline, for CPU and memory.
    pub fn meter(&self) -> Meter {
        let pid = |p: Option<&Process>| Source::Pid(p.and_then(Process::pid).unwrap_or(0));
        Meter::new(vec![
            ("gito-bridge", pid(self.bridge.as_ref())),
            ("gito-api", pid(Some(&self.api.process))),
            ("mosquitto (external)", Source::Listener(self.external.port)),
            ("mosquitto (local)", Source::Listener(self.local.port)),
            (
                "postgres",
                Source::Postgres {
                    database: self.db.name.clone(),
                },
            ),
        ])
    }

    pub async fn stop(mut self) {
        if let Some(bridge) = self.bridge.take() {
            bridge.stop().await;
        }
        self.api.process.stop().await;
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

/// `gito_processor_rows_stored_total` from gito-api's `/metrics`.
pub async fn stored_rows(http: &reqwest::Client, metrics_url: &str) -> anyhow::Result<u64> {
    let response = http
        .get(metrics_url)
        .bearer_auth(gito_testkit::ADMIN_TOKEN)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{metrics_url}: {}",
        response.status()
    );
    let text = response.text().await?;
    Ok(Scrape::parse(&text).value("gito_processor_rows_stored_total", &[]) as u64)
}
