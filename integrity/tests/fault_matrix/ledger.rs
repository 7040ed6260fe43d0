//! Counting from SQL what the pipeline did with what was sent: lost (sent, never stored),
//! duplicated (stored more than once), unexpected (stored, never sent), and cheap consistency
//! checks — per device, rows ordered by `ts` carry increasing values (a stale redelivered copy
//! lands after newer readings otherwise), the newest row holds the highest value (what
//! `/latest` answers), and `last_seen_at` is the newest `ts`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::publisher::Expected;

/// One device path's figures.
#[derive(Debug, Clone, Default)]
pub struct DeviceFigures {
    pub sent: usize,
    pub stored: usize,
    pub rows: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub sent: usize,
    /// Sent values stored at least once.
    pub stored: usize,
    pub rows: usize,
    pub lost: usize,
    /// Rows beyond the first of each value.
    pub duplicated: usize,
    /// Values stored that were never sent (under the streams' device paths).
    pub unexpected: usize,
    /// Adjacent rows of a device, by `ts`, whose value goes down.
    pub out_of_order: usize,
    /// Devices whose newest row is not their highest value.
    pub stale_latest: usize,
    /// Devices whose `last_seen_at` is not their newest row's `ts`.
    pub last_seen_wrong: usize,
    pub devices: BTreeMap<String, DeviceFigures>,
}

impl Report {
    pub fn is_exact(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.unexpected == 0
            && self.out_of_order == 0
            && self.stale_latest == 0
            && self.last_seen_wrong == 0
    }

    /// The one-line summary, on stderr past the test harness's capture so that it shows in
    /// every run's output.
    pub fn print(&self, scenario: &str) {
        let line = format!("{}\n", self.line(scenario));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    pub fn line(&self, scenario: &str) -> String {
        format!(
            "fault-matrix: {scenario}: sent {}, stored {}, lost {}, duplicated {} \
             (rows {}, unexpected {}, out of order {}, stale latest {}, last_seen wrong {})",
            self.sent,
            self.stored,
            self.lost,
            self.duplicated,
            self.rows,
            self.unexpected,
            self.out_of_order,
            self.stale_latest,
            self.last_seen_wrong
        )
    }

    /// Devices with a loss or a duplicate, worst first, for failure messages.
    pub fn worst_devices(&self, n: usize) -> String {
        let mut bad: Vec<(&String, &DeviceFigures)> = self
            .devices
            .iter()
            .filter(|(_, f)| f.stored != f.sent || f.rows != f.stored)
            .collect();
        bad.sort_by_key(|(_, f)| {
            std::cmp::Reverse((f.sent - f.stored.min(f.sent)) + (f.rows - f.stored.min(f.rows)))
        });
        bad.iter()
            .take(n)
            .map(|(d, f)| format!("{d}: sent {} stored {} rows {}", f.sent, f.stored, f.rows))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// `assert_exact`, except for order: for a fault after which the *external broker* delivers
    /// in another order than it was published (Mosquitto restoring its queue after a restart).
    /// The bridge stamps bare values in the order it receives them, so that order is what is
    /// stored; the count must still be exact.
    #[track_caller]
    pub fn assert_exact_in_any_order(&self, scenario: &str) {
        let unordered = Report {
            out_of_order: 0,
            stale_latest: 0,
            devices: self.devices.clone(),
            ..*self
        };
        unordered.assert_exact(scenario);
    }

    /// 0 lost, 0 duplicated, nothing unexpected, order and `last_seen_at` consistent.
    #[track_caller]
    pub fn assert_exact(&self, scenario: &str) {
        assert!(
            self.is_exact(),
            "{}; devices off: {}",
            self.line(scenario),
            self.worst_devices(8)
        );
    }
}

/// Rows of `metric` under the device paths `{prefix}/...` of `tenant`.
#[derive(Debug, Clone)]
struct Row {
    device_id: Uuid,
    external_id: String,
    value: f64,
}

async fn rows(pool: &PgPool, tenant: Uuid, prefix: &str) -> Vec<Row> {
    let rows: Vec<(Uuid, String, Option<f64>, OffsetDateTime)> = sqlx::query_as(
        "SELECT d.id, d.external_id, t.value, t.ts
           FROM telemetry t JOIN devices d ON d.id = t.device_id
          WHERE d.tenant_id = $1 AND t.metric = 'v' AND d.external_id LIKE $2
          ORDER BY d.external_id, t.ts, t.value",
    )
    .bind(tenant)
    .bind(format!("{prefix}/%"))
    .fetch_all(pool)
    .await
    .expect("read the stored telemetry");
    rows.into_iter()
        .map(|(device_id, external_id, value, _ts)| Row {
            device_id,
            external_id,
            value: value.unwrap_or(f64::NAN),
        })
        .collect()
}

/// Sent values stored at least once, and rows, under `prefix`: cheap enough to poll.
pub async fn progress(pool: &PgPool, tenant: Uuid, prefix: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(DISTINCT (d.external_id, t.value)), count(*)
           FROM telemetry t JOIN devices d ON d.id = t.device_id
          WHERE d.tenant_id = $1 AND t.metric = 'v' AND d.external_id LIKE $2",
    )
    .bind(tenant)
    .bind(format!("{prefix}/%"))
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0))
}

/// Counts what is stored against `expected` (all under `prefix`).
pub async fn count(pool: &PgPool, tenant: Uuid, prefix: &str, expected: &Expected) -> Report {
    let rows = rows(pool, tenant, prefix).await;
    let mut report = Report {
        sent: expected.values().map(BTreeSet::len).sum(),
        rows: rows.len(),
        ..Report::default()
    };
    for (device, values) in expected {
        report.devices.entry(device.clone()).or_default().sent = values.len();
    }
    let mut seen: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for row in &rows {
        let figures = report.devices.entry(row.external_id.clone()).or_default();
        figures.rows += 1;
        let value = row.value as u64;
        let exact = row.value.fract() == 0.0 && row.value >= 0.0;
        let first = seen
            .entry(row.external_id.as_str())
            .or_default()
            .insert(value);
        if !first {
            report.duplicated += 1;
            continue;
        }
        let wanted = exact
            && expected
                .get(&row.external_id)
                .is_some_and(|values| values.contains(&value));
        if wanted {
            report.stored += 1;
            figures.stored += 1;
        } else {
            report.unexpected += 1;
        }
    }
    report.lost = report.sent - report.stored;

    // Per device id (a path deleted and recreated is two devices), in ts order.
    let mut by_device: BTreeMap<Uuid, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        by_device.entry(row.device_id).or_default().push(row);
    }
    for device_rows in by_device.values() {
        report.out_of_order += device_rows
            .windows(2)
            .filter(|pair| pair[1].value < pair[0].value)
            .count();
        let newest = device_rows.last().expect("grouped rows exist");
        let highest = device_rows.iter().map(|r| r.value).fold(f64::MIN, f64::max);
        if newest.value != highest {
            report.stale_latest += 1;
        }
    }
    report.last_seen_wrong = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM devices d
          WHERE d.tenant_id = $1 AND d.external_id LIKE $2
            AND d.last_seen_at IS DISTINCT FROM (SELECT max(ts) FROM telemetry t WHERE t.device_id = d.id)",
    )
    .bind(tenant)
    .bind(format!("{prefix}/%"))
    .fetch_one(pool)
    .await
    .expect("check last_seen_at") as usize;
    report
}

/// Waits until every expected value is stored and the row count has been still for a second
/// (late duplicates land too), or until nothing at all was stored for `STALLED` (what is missing
/// then is not coming), or `deadline`; then counts. Never panics: the report says what is off.
/// No progress for this long, with backoffs of at most 5 s everywhere, means none is coming.
const STALLED: Duration = Duration::from_secs(12);

pub async fn settle(
    pool: &PgPool,
    tenant: Uuid,
    prefix: &str,
    expected: &Expected,
    deadline: Duration,
) -> Report {
    let sent: usize = expected.values().map(BTreeSet::len).sum();
    let started = Instant::now();
    let mut last = (-1, -1);
    let mut still_since = Instant::now();
    while started.elapsed() < deadline {
        let now = progress(pool, tenant, prefix).await;
        if now != last {
            last = now;
            still_since = Instant::now();
        }
        let complete = now.0 as usize >= sent;
        if complete && still_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
        if still_since.elapsed() >= STALLED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    count(pool, tenant, prefix, expected).await
}

/// A message the processor dead-lettered: why, and — when its payload is an envelope
/// — the source topic and the value of metric `v`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub reason: String,
    pub source_topic: Option<String>,
    pub value: Option<f64>,
    /// Metrics in its envelope.
    pub metrics: usize,
}

/// The tenant's dead letters; `None` while the product has no `dead_letters` table.
pub async fn dead_letters(pool: &PgPool, tenant: Uuid) -> Option<Vec<DeadLetter>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('public.dead_letters') IS NOT NULL")
        .fetch_one(pool)
        .await
        .expect("look for dead_letters");
    if !exists {
        return None;
    }
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT reason, payload FROM dead_letters WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(pool)
            .await
            .expect("read dead_letters");
    Some(
        rows.into_iter()
            .map(|(reason, payload)| {
                let envelope: serde_json::Value =
                    serde_json::from_slice(&payload).unwrap_or_default();
                DeadLetter {
                    reason,
                    source_topic: envelope["source_topic"].as_str().map(str::to_owned),
                    value: envelope["metrics"]["v"].as_f64(),
                    metrics: envelope["metrics"].as_object().map_or(0, |m| m.len()),
                }
            })
            .collect(),
    )
}
