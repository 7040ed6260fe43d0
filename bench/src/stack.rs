//! Bringing up gito's own processes for a benchmark: gito-api on a fresh database, a tenant,
//! gito-bridge between two brokers.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use gito_testkit::free_port;
use uuid::Uuid;

use crate::procs::Process;

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
) -> anyhow::Result<Process> {
    let metrics = format!("127.0.0.1:{}", free_port());
    let process = Process::spawn(
        "gito-bridge",
        &[
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
        ],
    )?;
    let started = Instant::now();
    loop {
        let text = match reqwest::get(format!("http://{metrics}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains("gito_bridge_external_connected 1") {
            return Ok(process);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "gito-bridge did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
