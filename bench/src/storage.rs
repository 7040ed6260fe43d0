//! Issue #18's figures, each beside its reference in the same run:
//!
//! - **ingest**: the processor's insert of new rows (`gito_api::processor::store::insert` with
//!   `Insert::Copy`: binary `COPY` into partitioned `telemetry`) plus the rollup follower's work for the same rows (`rollups::catch_up` after the
//!   last batch, its time added), beside the statement that stored the same rows before #18
//!   (UNNEST into an unpartitioned table with the same key and index), the same batches
//!   alternately, each in its own transaction;
//! - **query**: a 30-day, 1-hour-bucket query of one device and metric over the API, served from
//!   the 1-hour rollup, beside the same query moved by one second (so that no rollup answers it
//!   exactly and raw rows serve it), after loading `devices × metrics × samples` rows with
//!   `INSERT ... SELECT generate_series` (server-side, the fastest bulk path) into daily partitions;
//! - **drop a day**: detaching and dropping one day's partition, whatever it holds.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use gito_api::config::StorageConfig;
use gito_api::processor::store::{self, Rows};
use gito_api::rollups;
use gito_testkit::TestDb;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Row;
use crate::stack;

/// Rows per ingest batch: the processor's usual batch.
const BATCH_ROWS: usize = 2000;
/// Metrics per device in the ingest part.
const INGEST_METRICS: usize = 10;
/// Days the query part's samples span; the query reads the last 30 of them.
const SPAN_DAYS: i64 = 32;

pub struct StorageResult {
    pub ingest_rows: usize,
    pub stored_rows_per_sec: f64,
    pub plain_rows_per_sec: f64,
    pub loaded_rows: u64,
    pub load_rows_per_sec: f64,
    pub rollup_p50_ms: f64,
    pub rollup_p99_ms: f64,
    pub raw_p50_ms: f64,
    pub raw_p99_ms: f64,
    pub drop_ms: f64,
    pub dropped_mib: f64,
}

impl StorageResult {
    pub fn rows(&self) -> Vec<Row> {
        vec![
            Row::new(
                format!(
                    "ingest: COPY into partitions, then the follower rolls the rows up (1m/1h/1d), {} rows in batches of {BATCH_ROWS}",
                    self.ingest_rows
                ),
                format!("{:.0} rows/s", self.stored_rows_per_sec),
            )
            .against(
                format!(
                    "unpartitioned insert as before #18 {:.0} rows/s",
                    self.plain_rows_per_sec
                ),
                self.stored_rows_per_sec / self.plain_rows_per_sec,
            )
            .target(
                "≥ 0.9x",
                self.stored_rows_per_sec / self.plain_rows_per_sec >= 0.9,
            ),
            Row::new(
                format!(
                    "query: 30 days of one device and metric at bucket=1h, {} rows loaded ({:.0} rows/s), p50 / p99",
                    self.loaded_rows, self.load_rows_per_sec
                ),
                format!(
                    "{:.1} ms / {:.1} ms (source 1h)",
                    self.rollup_p50_ms, self.rollup_p99_ms
                ),
            )
            .against(
                format!(
                    "the same query on raw rows p50 {:.1} ms / p99 {:.1} ms",
                    self.raw_p50_ms, self.raw_p99_ms
                ),
                self.raw_p50_ms / self.rollup_p50_ms,
            )
            .target(
                "p99 < 20 ms and ≥ 20x faster than raw",
                self.rollup_p99_ms < 20.0 && self.raw_p50_ms / self.rollup_p50_ms >= 20.0,
            ),
            Row::new(
                format!(
                    "drop one day's partition ({:.1} MiB)",
                    self.dropped_mib
                ),
                format!("{:.1} ms", self.drop_ms),
            )
            .target("< 1 s", self.drop_ms < 1000.0),
        ]
    }
}

pub async fn run(
    devices: u64,
    metrics: u64,
    samples: u64,
    queries: usize,
) -> anyhow::Result<StorageResult> {
    let (ingest_rows, stored_rows_per_sec, plain_rows_per_sec) = ingest(devices.min(1000)).await?;
    eprintln!("storage: ingest done");
    let query = query(devices, metrics, samples, queries).await?;
    Ok(StorageResult {
        ingest_rows,
        stored_rows_per_sec,
        plain_rows_per_sec,
        ..query
    })
}

async fn tenant_with_devices(
    conn: &mut PgConnection,
    tenant: Uuid,
    devices: u64,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'bench') ON CONFLICT (id) DO NOTHING")
        .bind(tenant)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO devices (id, tenant_id, name, external_id)
         SELECT gen_random_uuid(), $1, 'device ' || i, 'BENCH/D' || i FROM generate_series(1, $2) AS i",
    )
    .bind(tenant)
    .bind(devices as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Rows/s of the processor's insert and of the pre-#18 insert over the same batches.
async fn ingest(devices: u64) -> anyhow::Result<(usize, f64, f64)> {
    let db = TestDb::migrated().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await?;
    // As gito-api's first maintainer round leaves it: partitions ahead, each with its ts index.
    gito_api::partitions::maintain(&pool, &StorageConfig::default(), OffsetDateTime::now_utc())
        .await
        .context("partitions")?;
    let mut conn = PgConnection::connect(&db.url).await?;
    tenant_with_devices(&mut conn, Uuid::now_v7(), devices).await?;
    // The table as 004 + 006 left it: the reference shape.
    sqlx::query(
        "CREATE TABLE telemetry_plain (
             device_id UUID NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
             ts TIMESTAMPTZ NOT NULL, metric TEXT NOT NULL, value DOUBLE PRECISION, value_json JSONB,
             flagged BOOLEAN NOT NULL DEFAULT false,
             UNIQUE (device_id, metric, ts))",
    )
    .execute(&mut conn)
    .await?;
    sqlx::query("CREATE INDEX ON telemetry_plain (device_id, ts DESC)")
        .execute(&mut conn)
        .await?;
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM devices ORDER BY id")
        .fetch_all(&mut conn)
        .await?;

    // Every device sends its metrics every 10 s, for `rounds` rounds ending now: batches cut in
    // arrival order, as the processor sees them.
    let rounds = (400_000 / (ids.len() * INGEST_METRICS)).clamp(2, 200);
    let start = OffsetDateTime::now_utc() - Duration::from_secs(10 * rounds as u64);
    let mut batches = vec![Rows::default()];
    for round in 0..rounds {
        let ts = start + Duration::from_secs(10 * round as u64);
        for (d, id) in ids.iter().enumerate() {
            for m in 0..INGEST_METRICS {
                let rows = batches.last_mut().expect("a batch");
                rows.device_id.push(*id);
                rows.ts.push(ts);
                rows.metric.push(format!("m{m}"));
                rows.value.push(Some((round * 7 + d + m) as f64 % 100.0));
                rows.value_json.push(None);
                rows.flagged.push(false);
                if rows.len() == BATCH_ROWS {
                    batches.push(Rows::default());
                }
            }
        }
    }
    batches.retain(|b| !b.is_empty());
    let total: usize = batches.iter().map(Rows::len).sum();
    // The follower where it stands in a running system: just behind the rows that arrive.
    set_follower_edges(&mut conn, start).await?;

    let (mut store_time, mut plain_time) = (Duration::ZERO, Duration::ZERO);
    for (i, rows) in batches.iter().enumerate() {
        // Alternate which goes first, so that neither always finds the other's pages warm.
        for store_first in [i % 2 == 0, i % 2 != 0] {
            let started = Instant::now();
            let mut tx = conn.begin().await?;
            if store_first {
                store::insert(&mut tx, rows, store::Insert::Copy).await?;
            } else {
                plain_insert(&mut tx, rows).await?;
            }
            tx.commit().await?;
            if store_first {
                store_time += started.elapsed();
            } else {
                plain_time += started.elapsed();
            }
        }
    }
    // The rollups of those rows, by the follower, as it would have made them meanwhile.
    // At its running pace: its edge one minute further each time, as the follower of a running
    // gito-api moves it (a longer span per step would add fewer rows to each hour and day).
    // First, what autovacuum does for a running follower as the rows arrive (022's
    // `autosummarize`; autovacuum may be off on the bench's server): the BRIN ranges of the new
    // rows summarized, so that each step reads its minute's ranges and not every range since
    // the partition's last VACUUM. Its time counts as the follower's.
    let started = Instant::now();
    sqlx::query(
        "SELECT brin_summarize_new_values(inhrelid::regclass) FROM pg_inherits
         WHERE inhparent = 'telemetry_ts_brin'::regclass",
    )
    .execute(&pool)
    .await?;
    let mut until = start;
    let end = OffsetDateTime::now_utc() + Duration::from_secs(60);
    while until < end {
        until += Duration::from_secs(60);
        rollups::catch_up(&pool, until).await?;
    }
    let follower_time = started.elapsed();
    eprintln!(
        "storage: ingest {:.2} s storing + {:.2} s rolling up; the insert before #18 {:.2} s",
        store_time.as_secs_f64(),
        follower_time.as_secs_f64(),
        plain_time.as_secs_f64()
    );
    store_time += follower_time;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry")
        .fetch_one(&mut conn)
        .await?;
    anyhow::ensure!(stored as usize == total, "stored {stored} of {total}");
    let rolled: i64 = sqlx::query_scalar("SELECT sum(count)::bigint FROM telemetry_rollup_1m")
        .fetch_one(&mut conn)
        .await?;
    anyhow::ensure!(rolled as usize == total, "rolled up {rolled} of {total}");
    Ok((
        total,
        total as f64 / store_time.as_secs_f64(),
        total as f64 / plain_time.as_secs_f64(),
    ))
}

/// Puts the rollup follower's edges at the minute, hour and day of `at`, its one-time cleanup
/// done.
async fn set_follower_edges(conn: &mut PgConnection, at: OffsetDateTime) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE telemetry_rollup_state
         SET invalidated_before = date_bin('1 minute', $1, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
             materialized_before = date_bin('1 minute', $1, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
             hours_before = date_bin('1 hour', $1, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
             days_before = date_bin('1 day', $1, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
             cleanup_from = NULL",
    )
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The statement that stored rows before #18, into the reference table.
async fn plain_insert(conn: &mut PgConnection, rows: &Rows) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO telemetry_plain (device_id, ts, metric, value, value_json, flagged)
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::float8[], $5::jsonb[], $6::bool[])
         ON CONFLICT (device_id, metric, ts) DO NOTHING",
    )
    .bind(&rows.device_id)
    .bind(&rows.ts)
    .bind(&rows.metric)
    .bind(&rows.value)
    .bind(&rows.value_json)
    .bind(&rows.flagged)
    .execute(conn)
    .await?;
    Ok(())
}

async fn query(
    devices: u64,
    metrics: u64,
    samples: u64,
    queries: usize,
) -> anyhow::Result<StorageResult> {
    let db = TestDb::migrated().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await?;
    let now = OffsetDateTime::now_utc();
    // Daily partitions over the past (013 put all history in one `telemetry_legacy`, empty here).
    sqlx::query("ALTER TABLE telemetry DETACH PARTITION telemetry_legacy")
        .execute(&pool)
        .await?;
    sqlx::query("DROP TABLE telemetry_legacy")
        .execute(&pool)
        .await?;
    let config = StorageConfig {
        partitions_ahead: SPAN_DAYS as u32 + 3,
        ..Default::default()
    };
    gito_api::partitions::maintain(&pool, &config, now - time::Duration::days(SPAN_DAYS + 1))
        .await
        .context("daily partitions for the past")?;
    // The rollups below are built in bulk up to now, as a follower that has caught up would have
    // them: its edges after every loaded row, so that the API's follower has nothing to add.
    let mut conn = PgConnection::connect(&db.url).await?;
    set_follower_edges(&mut conn, now + Duration::from_secs(60)).await?;

    let api = stack::start_api(
        &db.url,
        &[
            ("GITO_PROCESSOR", "off".into()),
            ("GITO_LIVE", "off".into()),
        ],
    )
    .await?;
    let stack::Tenant { id: tenant, token } = stack::create_tenant(&api.url).await?;
    tenant_with_devices(&mut conn, tenant, devices).await?;

    // The samples: evenly over SPAN_DAYS ending now, loaded 50 devices per statement, and the
    // rollups of those devices built after each load as the follower would have built them: 1m
    // from raw, 1h from 1m, 1d from 1h (their equality with raw aggregates is
    // api/tests/api/rollups.rs's business). Built a few devices at a time and in key order, so
    // that each build sorts in memory and appends to the rollups' indexes: the 1m rollup holds as
    // many rows as raw here (one sample per minute at most), and one aggregate of all of them
    // inserted in hash order spent over 12 minutes on random index pages.
    let step_secs = (SPAN_DAYS * 86_400) as f64 / samples as f64;
    let first = now - time::Duration::days(SPAN_DAYS);
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM devices ORDER BY id")
        .fetch_all(&mut conn)
        .await?;
    // Sorted, not hashed: the planner guesses some 180,000 distinct minutes in 5 million rows
    // (one each), and its hash aggregate then spills (34 s for a chunk against 15 s sorted).
    sqlx::query("SET work_mem = '512MB'")
        .execute(&mut conn)
        .await?;
    sqlx::query("SET enable_hashagg = off")
        .execute(&mut conn)
        .await?;
    let (mut load_time, mut rollup_time) = (Duration::ZERO, Duration::ZERO);
    for chunk in ids.chunks(50) {
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO telemetry (device_id, ts, metric, value)
             SELECT d, $2 + make_interval(secs => i * $3), 'm' || m, (i % 1000) / 10.0 + m
             FROM unnest($1::uuid[]) d, generate_series(1, $4) m, generate_series(0, $5 - 1) i",
        )
        .bind(chunk)
        .bind(first)
        .bind(step_secs)
        .bind(metrics as i32)
        .bind(samples as i64)
        .execute(&mut conn)
        .await?;
        load_time += started.elapsed();
        let started = Instant::now();
        build_rollups(&mut conn, chunk).await?;
        rollup_time += started.elapsed();
    }
    let loaded_rows = devices * metrics * samples;
    let load_rows_per_sec = loaded_rows as f64 / load_time.as_secs_f64();
    eprintln!(
        "storage: {loaded_rows} rows loaded in {:.0} s, rolled up in {:.0} s",
        load_time.as_secs_f64(),
        rollup_time.as_secs_f64()
    );
    sqlx::query("RESET work_mem").execute(&mut conn).await?;
    sqlx::query("RESET enable_hashagg")
        .execute(&mut conn)
        .await?;
    // As autovacuum leaves a table between its rounds: pages marked all-visible, so that covering
    // indexes (017) answer from the index alone; raw rows are read the same way as ever.
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await?;
    // That VACUUM set hint bits and visibility on every page loaded: gigabytes of dirty pages
    // that the checkpointer and the kernel would write back for minutes, under the queries. A
    // running system vacuums its rows a few at a time as they arrive; the queries are timed on
    // a database at rest, as its load left it, not in the write-back of the bench's own load.
    sqlx::query("CHECKPOINT").execute(&mut conn).await?;
    eprintln!("storage: rollups built");

    // 30 days ending at the last whole hour.
    let to = now
        .replace_minute(0)?
        .replace_second(0)?
        .replace_nanosecond(0)?;
    let from = to - time::Duration::days(30);
    let http = reqwest::Client::new();
    let ask = |device: Uuid, from: OffsetDateTime| {
        let url = format!(
            "{}/tenants/{tenant}/devices/{device}/telemetry?metric=m1&bucket=1h&limit=10000&from={}&to={}",
            api.url,
            from.format(&time::format_description::well_known::Rfc3339)
                .expect("rfc3339"),
            to.format(&time::format_description::well_known::Rfc3339)
                .expect("rfc3339"),
        );
        let request = http.get(url).bearer_auth(&token);
        // Timed from the request to the answer's last byte: what the API takes. Reading the
        // 720 buckets into a JSON tree is the bench's own work, a third of a millisecond that
        // both sources would pay alike, so it comes after.
        async move {
            let started = Instant::now();
            let body = request.send().await?.error_for_status()?.bytes().await?;
            let took = started.elapsed();
            let answer: Answer = serde_json::from_slice(&body)?;
            anyhow::Ok((took, answer))
        }
    };
    let mut rollup = Vec::new();
    let mut raw = Vec::new();
    for i in 0..queries {
        let device = ids[i * 7919 % ids.len()];
        let (took, answer) = ask(device, from).await?;
        anyhow::ensure!(answer.source == "1h", "served from {}", answer.source);
        anyhow::ensure!(!answer.items.is_empty(), "no buckets");
        rollup.push(took);
        // Raw rows answer the same question one second later; fewer of them (they are slow).
        if i % 4 == 0 {
            let (took, answer) = ask(device, from + time::Duration::SECOND).await?;
            anyhow::ensure!(answer.source == "raw", "served from {}", answer.source);
            anyhow::ensure!(!answer.items.is_empty(), "no buckets");
            raw.push(took);
        }
    }

    // Drop the fullest day in the middle of the span.
    let day = (now - time::Duration::days(SPAN_DAYS / 2)).date();
    let name = format!(
        "telemetry_p{:04}{:02}{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    );
    let bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await?;
    let started = Instant::now();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE telemetry DETACH PARTITION {name}"
    )))
    .execute(&mut conn)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
        .execute(&mut conn)
        .await?;
    let drop_ms = started.elapsed().as_secs_f64() * 1000.0;

    Ok(StorageResult {
        ingest_rows: 0,
        stored_rows_per_sec: 0.0,
        plain_rows_per_sec: 0.0,
        loaded_rows,
        load_rows_per_sec,
        rollup_p50_ms: percentile(&mut rollup, 0.50),
        rollup_p99_ms: percentile(&mut rollup, 0.99),
        raw_p50_ms: percentile(&mut raw, 0.50),
        raw_p99_ms: percentile(&mut raw, 0.99),
        drop_ms,
        dropped_mib: bytes as f64 / (1024.0 * 1024.0),
    })
}

/// The 1m, 1h and 1d rollups of `devices`, from their raw rows, in key order.
/// What the query part checks of an answer: the source that served it, and that it has buckets.
#[derive(serde::Deserialize)]
struct Answer {
    source: String,
    items: Vec<serde::de::IgnoredAny>,
}

async fn build_rollups(conn: &mut PgConnection, devices: &[Uuid]) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO telemetry_rollup_1m (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         SELECT device_id, metric, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                count(*), min(value), max(value), sum(value),
                (min(first_last_key(ts, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), value)))[2], min(ts),
                (max(first_last_key(ts, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), value)))[2], max(ts)
         FROM telemetry WHERE device_id = ANY($1) AND value IS NOT NULL
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind(devices)
    .execute(&mut *conn)
    .await?;
    for (to, from, width) in [
        ("telemetry_rollup_1h", "telemetry_rollup_1m", "1 hour"),
        ("telemetry_rollup_1d", "telemetry_rollup_1h", "1 day"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {to} (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
             SELECT device_id, metric, date_bin('{width}', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                    sum(count), min(min), max(max), sum(sum),
                    (min(first_last_key(first_ts, date_bin('{width}', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), first)))[2], min(first_ts),
                    (max(first_last_key(last_ts, date_bin('{width}', bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), last)))[2], max(last_ts)
             FROM {from} WHERE device_id = ANY($1)
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )))
        .bind(devices)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn percentile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i].as_secs_f64() * 1000.0
}
