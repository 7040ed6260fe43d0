//! The API under load, with many devices in the tenant: requests per second and p99 for a page of
//! devices, one device, and the idempotent create, measured with wrk; reference: pgbench running
//! the equivalent SELECT by primary key on the same server with as many clients.

use std::process::Stdio;

use anyhow::Context as _;
use gito_testkit::TestDb;
use sqlx::{Connection, PgConnection};
use tokio::process::Command;

use crate::stack;

const CONNECTIONS: &str = "32";

pub struct Load {
    pub what: &'static str,
    pub per_sec: f64,
    pub p99_ms: f64,
}

pub struct ApiResult {
    pub devices: u64,
    pub loads: Vec<Load>,
    pub pgbench_tps: f64,
}

pub async fn run(devices: u64, seconds: u64) -> anyhow::Result<ApiResult> {
    let db = TestDb::migrated().await;
    let api = stack::start_api(
        &db.url,
        &[
            ("GITO_PROCESSOR", "off".into()),
            ("GITO_LIVE", "off".into()),
            // As many database connections as pgbench gets clients.
            ("GITO_DB_MAX_CONNECTIONS", CONNECTIONS.into()),
        ],
    )
    .await?;
    let stack::Tenant { id: tenant, token } = stack::create_tenant(&api.url).await?;
    let auth = format!("Authorization: Bearer {token}");
    let admin = format!("Authorization: Bearer {}", gito_testkit::ADMIN_TOKEN);
    let mut conn = PgConnection::connect(&db.url).await?;
    sqlx::query(
        "INSERT INTO devices (id, tenant_id, name, external_id, device_type)
         SELECT gen_random_uuid(), $1, 'device ' || i, 'SDE11/BENCH/D' || i, 'SDE11' FROM generate_series(1, $2) AS i",
    )
    .bind(tenant)
    .bind(devices as i64)
    .execute(&mut conn)
    .await?;
    sqlx::query("ANALYZE devices").execute(&mut conn).await?;
    let (device, external): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, external_id FROM devices WHERE tenant_id = $1 LIMIT 1")
            .bind(tenant)
            .fetch_one(&mut conn)
            .await?;

    let base = format!("{}/tenants/{tenant}/devices", api.url);
    let post = std::env::temp_dir().join(format!(
        "gito-bench-post-{}.lua",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &post,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{{\"name\": \"bench\", \"external_id\": \"{external}\"}}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )?;
    let loads = vec![
        wrk(
            "GET .../devices?limit=100",
            &format!("{base}?limit=100"),
            &auth,
            None,
            seconds,
        )
        .await?,
        wrk(
            "GET .../devices/{id}",
            &format!("{base}/{device}"),
            &auth,
            None,
            seconds,
        )
        .await?,
        wrk(
            "GET .../devices/{id} (admin token: no token lookup)",
            &format!("{base}/{device}"),
            &admin,
            None,
            seconds,
        )
        .await?,
        wrk(
            "POST .../devices (existing external_id)",
            &base,
            &auth,
            Some(&post),
            seconds,
        )
        .await?,
    ];
    let _ = std::fs::remove_file(&post);
    let pgbench_tps = pgbench(&db.url, tenant, device, seconds).await?;
    api.process.stop().await;
    Ok(ApiResult {
        devices,
        loads,
        pgbench_tps,
    })
}

async fn wrk(
    what: &'static str,
    url: &str,
    header: &str,
    script: Option<&std::path::Path>,
    seconds: u64,
) -> anyhow::Result<Load> {
    let mut command = Command::new("wrk");
    command.args([
        "-t2",
        "-c",
        CONNECTIONS,
        "-d",
        &format!("{seconds}s"),
        "--latency",
        "-H",
        header,
    ]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        !text.contains("Non-2xx"),
        "{what}: non-2xx answers:\n{text}"
    );
    let per_sec = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .context("p99")?;
    Ok(Load {
        what,
        per_sec,
        p99_ms: duration_ms(p99)?,
    })
}

/// wrk's `1.23ms`, `456.00us`, `1.10s`.
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        anyhow::bail!("unexpected duration {text}")
    };
    Ok(number.parse::<f64>()? * factor)
}

async fn pgbench(
    db_url: &str,
    tenant: uuid::Uuid,
    device: uuid::Uuid,
    seconds: u64,
) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!(
        "gito-bench-pgbench-{}.sql",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &script,
        // The statement of GET /tenants/{tenant_id}/devices/{id} (api/src/http/devices.rs, `read`).
        "SELECT d.id, d.tenant_id, d.name, d.external_id, d.device_type, d.device_type_id, \
         d.organization_id, d.site_id, d.device_group_id, d.status, d.last_seen_at, \
         CASE WHEN c.check_at IS NULL THEN 'offline' ELSE 'online' END AS connectivity, \
         d.created_at, d.updated_at \
         FROM devices d LEFT JOIN device_connectivity c ON c.device_id = d.id \
         WHERE d.tenant_id = :tenant AND d.id = :device;\n",
    )?;
    let output = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            CONNECTIONS,
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .arg("-D")
        .arg(format!("tenant={tenant}"))
        .arg("-D")
        .arg(format!("device={device}"))
        .arg("-f")
        .arg(&script)
        .arg(db_url)
        .output()
        .await
        .context("pgbench")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| {
            format!(
                "pgbench output:\n{text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

impl ApiResult {
    pub fn rows(&self) -> Vec<crate::Row> {
        use crate::Row;
        self.loads
            .iter()
            .map(|l| {
                let row = Row::new(
                    format!(
                        "API {} ({} devices, {CONNECTIONS} connections)",
                        l.what, self.devices
                    ),
                    format!("{:.0} req/s, p99 {:.1} ms", l.per_sec, l.p99_ms),
                );
                if l.what.starts_with("GET .../devices/{id}") {
                    let ratio = l.per_sec / self.pgbench_tps;
                    row.against(
                        format!("pgbench same SELECT {:.0} tps", self.pgbench_tps),
                        ratio,
                    )
                    .target("≥ 0.5× pgbench", ratio >= 0.5)
                } else {
                    row
                }
            })
            .collect()
    }
}
