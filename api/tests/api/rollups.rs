//! Rollups against a real PostgreSQL: after a randomized stream with late values and
//! redeliveries, stored through the processor's storing path while the follower moves on, every
//! rollup row equals the aggregate of the raw rows; queries pick the source as documented and
//! answer the same numbers as raw, the follower caught up or not; the backfill of rows stored
//! before 014 ends exact; late samples past retention are counted, not stored, and rolled up by
//! the real binary's follower (over Mosquitto).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gito_api::processor::devices::{self, DeviceInfo};
use gito_api::processor::store::{self, Checked, Insert};
use gito_api::rollups::{self, Step};
use gito_testkit::{Broker, Scrape, TestDb, publish_all, wait_for};
use gito_wire::{Envelope, MetricValue};
use proptest::prelude::*;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::helpers::{ADMIN_TOKEN, ApiProcess, TestApp, gito_api, id_of};

const TABLES: [(&str, &str); 3] = [
    ("telemetry_rollup_1m", "1 minute"),
    ("telemetry_rollup_1h", "1 hour"),
    ("telemetry_rollup_1d", "1 day"),
];

/// 2026-11-24T00:00:00Z.
fn base() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_478_400).expect("a time")
}

/// A tenant with `n` devices, made in SQL (the hierarchy is optional since 005).
async fn devices(conn: &mut PgConnection, n: usize) -> Vec<Uuid> {
    let tenant = Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 't')")
        .bind(tenant)
        .execute(&mut *conn)
        .await
        .expect("tenant");
    let mut ids = Vec::new();
    for i in 0..n {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO devices (id, tenant_id, name) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(tenant)
            .bind(format!("d{i}"))
            .execute(&mut *conn)
            .await
            .expect("device");
        ids.push(id);
    }
    ids
}

/// Stores `messages` (device, envelope) in one transaction through the processor's storing path,
/// as the processor does: copied, and merged instead if some were stored before.
async fn store_all(conn: &mut PgConnection, messages: &[(Uuid, Envelope)]) -> store::Stored {
    let ids: Vec<Uuid> = messages.iter().map(|(d, _)| *d).collect();
    let known: HashMap<Uuid, DeviceInfo> = devices::fetch(&mut *conn, &ids).await.expect("devices");
    let checked: Vec<Checked<'_>> = messages
        .iter()
        .map(|(device_id, envelope)| Checked {
            device_id: *device_id,
            envelope,
            device: &known[device_id],
        })
        .collect();
    let mut tx = conn.begin().await.expect("begin");
    match store::store(&mut tx, &checked, None, Insert::Copy).await {
        Ok(stored) => {
            tx.commit().await.expect("commit");
            return stored;
        }
        Err(e) if store::is_stored_before(&e) => tx.rollback().await.expect("rollback"),
        Err(e) => panic!("store: {e}"),
    }
    let mut tx = conn.begin().await.expect("begin");
    let stored = store::store(&mut tx, &checked, None, Insert::Merge)
        .await
        .expect("store");
    tx.commit().await.expect("commit");
    stored
}

fn envelope(ts: OffsetDateTime, metrics: &[(&str, MetricValue)]) -> Envelope {
    Envelope {
        ts,
        source_topic: String::new(),
        metrics: metrics
            .iter()
            .map(|(m, v)| ((*m).to_owned(), v.clone()))
            .collect(),
    }
}

/// Rows of `table` that differ from the aggregate of raw rows, both ways (0 when equal).
async fn differences(conn: &mut PgConnection, table: &str, width: &str) -> i64 {
    let expected = format!(
        "SELECT device_id, metric, date_bin('{width}', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
                count(*)::bigint AS count, min(value) AS min, max(value) AS max, sum(value) AS sum,
                (array_agg(value ORDER BY ts))[1] AS first, min(ts) AS first_ts,
                (array_agg(value ORDER BY ts DESC))[1] AS last, max(ts) AS last_ts
         FROM telemetry WHERE value IS NOT NULL GROUP BY 1, 2, 3"
    );
    let actual = format!(
        "SELECT device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts FROM {table}"
    );
    let sql = format!(
        "SELECT (SELECT count(*) FROM (({expected}) EXCEPT ALL ({actual})) a)
              + (SELECT count(*) FROM (({actual}) EXCEPT ALL ({expected})) b)"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .expect("compare")
}

async fn assert_rollups_exact(conn: &mut PgConnection) {
    for (table, width) in TABLES {
        assert_eq!(
            differences(conn, table, width).await,
            0,
            "{table} differs from the raw rows"
        );
    }
}

/// Every rollup row, in key order, as text: equal snapshots mean nothing changed.
async fn snapshot(conn: &mut PgConnection) -> Vec<String> {
    let mut rows = Vec::new();
    for (table, _) in TABLES {
        let sql = format!("SELECT t::text FROM {table} t ORDER BY device_id, metric, bucket");
        rows.extend(
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut *conn)
                .await
                .expect("snapshot"),
        );
    }
    rows
}

/// Runs the follower until it has nothing left to do, its edges at `until`.
async fn catch_up(url: &str, until: OffsetDateTime) {
    let pool = sqlx::PgPool::connect(url).await.expect("pool");
    rollups::catch_up(&pool, until).await.expect("follower");
    pool.close().await;
}

/// Puts every follower edge at `at` (the start of a day), as if it had been there all along (tests start before the
/// stream's oldest sample, so that rows are rolled up by both ways: in turn and as late ones).
async fn set_edges(conn: &mut PgConnection, at: OffsetDateTime) {
    sqlx::query(
        "UPDATE telemetry_rollup_state
         SET invalidated_before = $1, materialized_before = $1, hours_before = $1, days_before = $1,
             cleanup_from = NULL",
    )
    .bind(at)
    .execute(conn)
    .await
    .expect("edges");
}

/// One message of the randomized stream: which device, how far back (seconds, up to ~60 days),
/// and values of metrics `a` (always a number), `b` (a number, sometimes a boolean), `c` (text).
#[derive(Debug, Clone)]
struct Sample {
    device: usize,
    back: i64,
    a: i32,
    b: Option<i32>,
    text: bool,
}

fn sample() -> impl Strategy<Value = Sample> {
    // Few distinct days, hours, minutes and seconds, so that buckets collect several values and
    // event times repeat (a second message with a stored key is a redelivery, or a conflict that
    // keeps the first value).
    (
        0..2usize,
        (0..60i64, 0..3i64, 0..3i64, 0..4i64),
        -50..50i32,
        proptest::option::of(-50..50i32),
        any::<bool>(),
    )
        .prop_map(|(device, (day, hour, minute, sec), a, b, text)| Sample {
            device,
            back: day * 86_400 + hour * 3600 + minute * 60 + sec * 15,
            a,
            b,
            text,
        })
}

fn message(devices: &[Uuid], s: &Sample) -> (Uuid, Envelope) {
    let mut metrics = vec![("a", MetricValue::Number(f64::from(s.a) / 2.0))];
    match s.b {
        Some(b) => metrics.push(("b", MetricValue::Number(f64::from(b)))),
        None => metrics.push(("b", MetricValue::Bool(s.a > 0))),
    }
    if s.text {
        metrics.push(("c", MetricValue::Text("on".to_owned())));
    }
    let ts = base() - time::Duration::seconds(s.back);
    (devices[s.device], envelope(ts, &metrics))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn rollups_equal_raw_aggregates_after_late_values_and_redeliveries(
        stream in proptest::collection::vec(sample(), 1..60),
        cuts in proptest::collection::vec(1..8usize, 1..20),
        redeliver in proptest::collection::vec(any::<bool>(), 1..20),
        moves in proptest::collection::vec(0..4i64, 1..20),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let db = TestDb::migrated().await;
            let mut conn = db.connect().await;
            let pool = sqlx::PgPool::connect(&db.url).await.expect("pool");
            let ids = devices(&mut conn, 2).await;
            let messages: Vec<(Uuid, Envelope)> = stream.iter().map(|s| message(&ids, s)).collect();
            // Batches of random sizes, some delivered twice (now, and again after the next batch).
            let mut batches = Vec::new();
            let mut start = 0;
            for (i, size) in cuts.iter().cycle().enumerate() {
                if start >= messages.len() {
                    break;
                }
                let end = (start + size).min(messages.len());
                batches.push(messages[start..end].to_vec());
                if redeliver[i % redeliver.len()] {
                    batches.push(messages[start..end].to_vec());
                }
                start = end;
            }
            // The follower starts before the oldest sample (60 days back) and moves on by 0 to 3
            // weeks after each batch: samples land ahead of it, behind it (logged, recomputed),
            // and in minutes it has half done.
            let mut edge = base() - time::Duration::days(61);
            set_edges(&mut conn, edge).await;
            for (i, batch) in batches.iter().enumerate() {
                store_all(&mut conn, batch).await;
                edge += time::Duration::weeks(moves[i % moves.len()]) + time::Duration::minutes(1);
                rollups::follow_step(&pool, edge).await.expect("follower step");
            }
            rollups::catch_up(&pool, base() + time::Duration::days(1)).await.expect("follower");
            assert_rollups_exact(&mut conn).await;

            let before = snapshot(&mut conn).await;
            let again = store_all(&mut conn, &messages).await;
            assert_eq!(again.inserted, 0, "a redelivery inserts no row");
            let after = rollups::catch_up(&pool, base() + time::Duration::days(1)).await.expect("follower");
            assert_eq!(after.recomputed, 0, "a redelivery logs nothing");
            assert_eq!(snapshot(&mut conn).await, before, "a redelivery changes no rollup");
        });
    }
}

/// A device's telemetry over three days at odd seconds, some values text: what the source tests
/// query.
async fn three_days(conn: &mut PgConnection, device: Uuid) {
    let mut messages = Vec::new();
    for i in 0..400i64 {
        let ts = base() + time::Duration::seconds(i * 653 % (3 * 86_400));
        let value = MetricValue::Number(((i * 37) % 101) as f64 - 50.0);
        let mut metrics = vec![("t", value)];
        if i % 7 == 0 {
            metrics.push(("mode", MetricValue::Text("auto".to_owned())));
        }
        messages.push((device, envelope(ts, &metrics)));
    }
    for chunk in messages.chunks(64) {
        store_all(conn, chunk).await;
    }
}

async fn set_backfill(conn: &mut PgConnection, done: bool) {
    sqlx::query("UPDATE telemetry_rollup_backfill SET done = $1, after_device = NULL")
        .bind(done)
        .execute(conn)
        .await
        .expect("backfill state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_take_the_coarsest_exact_rollup_and_answer_what_raw_rows_answer() {
    let app = TestApp::spawn().await;
    let mut conn = PgConnection::connect(&app.db_url).await.expect("connect");
    let ids = devices(&mut conn, 1).await;
    let (device, tenant): (Uuid, Uuid) =
        sqlx::query_as("SELECT id, tenant_id FROM devices WHERE id = $1")
            .bind(ids[0])
            .fetch_one(&mut conn)
            .await
            .expect("device");
    three_days(&mut conn, device).await;
    catch_up(&app.db_url, OffsetDateTime::now_utc()).await;
    let path = format!("/tenants/{tenant}/devices/{device}/telemetry");
    let cases = [
        ("bucket=1h", "1h"),
        ("bucket=2h", "1h"),
        ("bucket=1d", "1d"),
        ("bucket=15m", "1m"),
        ("bucket=1m", "1m"),
        ("bucket=90s", "raw"),
        ("bucket=7s", "raw"),
        ("bucket=1d&from=2026-11-24T06:00:00Z", "1h"),
        (
            "bucket=1d&from=2026-11-24T00:00:00Z&to=2026-11-26T00:00:00Z",
            "1d",
        ),
        ("bucket=1h&to=2026-11-25T05:07:00Z", "1m"),
        ("bucket=1h&from=2026-11-24T00:00:30Z", "raw"),
        ("bucket=1h&from=2026-11-24T01:00:00%2B01:00&metric=t", "1h"),
        ("bucket=1h&limit=5", "1h"),
    ];
    for (query, source) in cases {
        set_backfill(&mut conn, false).await;
        let (status, raw) = app.get(&format!("{path}?{query}")).await;
        assert_eq!(status, 200, "{query}: {raw}");
        assert_eq!(raw["source"], "raw", "{query}: not backfilled, so raw");
        set_backfill(&mut conn, true).await;
        let (_, answer) = app.get(&format!("{path}?{query}")).await;
        assert_eq!(answer["source"], source, "{query}");
        assert_eq!(
            answer["items"], raw["items"],
            "{query}: same buckets as raw"
        );
        let items = answer["items"].as_array().expect("items");
        assert!(!items.is_empty(), "{query}");
        let first = &items[0];
        for field in ["avg", "min", "max", "count", "first", "last"] {
            assert!(first[field].is_number(), "{query}: {field} in {first}");
        }
        assert!(
            items.iter().all(|b| b["metric"] == "t"),
            "numeric values only"
        );
    }
    let (_, points) = app.get(&path).await;
    assert_eq!(points["source"], "raw", "unbucketed answers are raw points");
    // The rollups' edges come with the device check: under another tenant the device is unknown.
    let other = app.tenant("other").await;
    for query in ["bucket=1h", "bucket=90s", ""] {
        let (status, body) = app
            .get(&format!(
                "/tenants/{other}/devices/{device}/telemetry?{query}"
            ))
            .await;
        assert_eq!(status, 404, "{query}: {body}");
    }
    assert_eq!(
        rollups::edges(&mut conn, other, device)
            .await
            .expect("edges"),
        None
    );

    // A late value the follower has not recomputed yet: the rollups serve the buckets before its
    // minute, hour and day, finer pieces and raw rows the rest, and the answer is still raw rows'.
    let late = base() + time::Duration::hours(30) + time::Duration::seconds(17);
    store_all(
        &mut conn,
        &[(
            device,
            envelope(late, &[("t", MetricValue::Number(1000.0))]),
        )],
    )
    .await;
    let edges = rollups::edges(&mut conn, tenant, device)
        .await
        .expect("edges")
        .expect("backfilled");
    let minute = late - time::Duration::seconds(17);
    assert_eq!(edges.minute, minute, "the late minute");
    assert_eq!(edges.hour, minute, "its hour (the minute starts one)");
    assert_eq!(edges.day, base() + time::Duration::days(1), "its day");
    // Buckets as wide as a rollup's take its rows before the edge and finer pieces after it; a
    // limit can end in either part.
    // The late value lies in the oldest bucket after the edge: a limit that ends before it
    // leaves it out.
    for (query, with_late) in [
        ("bucket=1h", true),
        ("bucket=1d", true),
        ("bucket=15m&metric=t", true),
        ("bucket=1m", true),
        ("bucket=1h&limit=50", true),
        ("bucket=1h&limit=20", false),
    ] {
        let (_, answer) = app.get(&format!("{path}?{query}")).await;
        set_backfill(&mut conn, false).await;
        let (_, raw) = app.get(&format!("{path}?{query}")).await;
        set_backfill(&mut conn, true).await;
        assert_eq!(raw["source"], "raw");
        assert_ne!(answer["source"], "raw", "{query}");
        assert_eq!(
            answer["items"], raw["items"],
            "{query}: with a minute to recompute"
        );
        assert_eq!(
            answer["items"]
                .as_array()
                .expect("items")
                .iter()
                .any(|b| b["max"] == 1000.0),
            with_late,
            "{query}: the late value is in the answer or after the limit"
        );
    }
    catch_up(&app.db_url, OffsetDateTime::now_utc()).await;
    let edges = rollups::edges(&mut conn, tenant, device)
        .await
        .expect("edges");
    assert!(
        edges.is_some_and(|e| e.day > late),
        "recomputed: every rollup serves past it again"
    );
}

/// First and last are told apart by a microsecond at the edges of a minute, an hour and a day,
/// the earlier value being the larger or the smaller one: in the rollups (against raw rows'
/// `array_agg ... ORDER BY ts`) and in the answers from each source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_and_last_are_told_apart_by_a_microsecond() {
    let app = TestApp::spawn().await;
    let mut conn = PgConnection::connect(&app.db_url).await.expect("connect");
    let ids = devices(&mut conn, 1).await;
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM devices WHERE id = $1")
        .bind(ids[0])
        .fetch_one(&mut conn)
        .await
        .expect("tenant");
    let us = time::Duration::microseconds;
    let day = base();
    let samples = [
        (day, 5.0),
        (day + us(1), -5.0),
        (day + time::Duration::minutes(1) - us(1), 4.0),
        (day + time::Duration::hours(1) - us(1), -4.0),
        (day + time::Duration::days(1) - us(2), 10.0),
        (day + time::Duration::days(1) - us(1), 9.0),
    ];
    let messages: Vec<(Uuid, Envelope)> = samples
        .iter()
        .map(|(ts, v)| (ids[0], envelope(*ts, &[("t", MetricValue::Number(*v))])))
        .collect();
    set_edges(&mut conn, day).await;
    store_all(&mut conn, &messages).await;
    catch_up(&app.db_url, OffsetDateTime::now_utc()).await;
    assert_rollups_exact(&mut conn).await;

    let path = format!("/tenants/{tenant}/devices/{}/telemetry", ids[0]);
    let window = "from=2026-11-24T00:00:00Z&to=2026-11-25T00:00:00Z";
    // (bucket, its source, first and last of the bucket that starts the day)
    for (bucket, source, first, last) in [
        ("1d", "1d", 5.0, 9.0),
        ("1h", "1h", 5.0, -4.0),
        ("1m", "1m", 5.0, 4.0),
        ("30s", "raw", 5.0, -5.0),
    ] {
        let (status, answer) = app
            .get(&format!("{path}?bucket={bucket}&{window}&limit=10000"))
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["source"], source, "bucket={bucket}");
        let items = answer["items"].as_array().expect("items");
        let start = items.last().expect("the day's first bucket");
        assert_eq!(start["bucket"], "2026-11-24T00:00:00Z", "bucket={bucket}");
        assert_eq!(
            (start["first"].as_f64(), start["last"].as_f64()),
            (Some(first), Some(last)),
            "bucket={bucket}: {start}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_rolls_up_rows_stored_before_014_with_merges_in_between() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    let ids = devices(&mut conn, 3).await;
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM devices WHERE id = $1")
        .bind(ids[0])
        .fetch_one(&mut conn)
        .await
        .expect("tenant");
    // Rows as 014 found them: in telemetry, in no rollup.
    sqlx::query(
        "INSERT INTO telemetry (device_id, ts, metric, value)
         SELECT d, TIMESTAMPTZ '2026-10-01 00:00:00+00' + i * interval '7 minutes', 'm', (i % 13)::float8
         FROM unnest($1::uuid[]) d, generate_series(1, 500) i",
    )
    .bind(&ids)
    .execute(&mut conn)
    .await
    .expect("old rows");
    set_backfill(&mut conn, false).await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("pool");

    assert_eq!(
        rollups::backfill_step(&pool, 1).await.expect("step"),
        Step::Devices(1)
    );
    let mut sorted = ids.clone();
    sorted.sort();
    assert!(
        rollups::edges(&mut conn, tenant, sorted[0])
            .await
            .expect("edges")
            .is_some()
    );
    assert!(
        rollups::edges(&mut conn, tenant, sorted[1])
            .await
            .expect("edges")
            .is_none()
    );
    // Late values for a device already backfilled and for one not yet, and a redelivery of old rows.
    let late = |device, minutes| {
        let ts = OffsetDateTime::parse("2026-10-01T00:00:00Z", &Rfc3339).expect("time")
            + time::Duration::minutes(minutes);
        (device, envelope(ts, &[("m", MetricValue::Number(100.0))]))
    };
    store_all(
        &mut conn,
        &[late(sorted[0], 3), late(sorted[1], 4), late(sorted[2], 7)],
    )
    .await;
    let mut steps = 1;
    while rollups::backfill_step(&pool, 1).await.expect("step") != Step::Done {
        steps += 1;
        assert!(steps < 10, "the backfill ends");
    }
    assert_eq!(steps, 3, "one device per step");
    // The late values' minutes were logged too: recomputing them changes nothing.
    rollups::catch_up(&pool, OffsetDateTime::now_utc())
        .await
        .expect("follower");
    for id in &ids {
        assert!(
            rollups::edges(&mut conn, tenant, *id)
                .await
                .expect("edges")
                .is_some()
        );
    }
    assert_rollups_exact(&mut conn).await;
    assert_eq!(
        rollups::backfill_step(&pool, 1).await.expect("step"),
        Step::Done
    );
}

/// How many sessions wait for an advisory lock right now.
async fn advisory_waits(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
    )
    .fetch_one(conn)
    .await
    .expect("activity")
}

/// Migration 019: every statement deleting devices (by id, or by a tenant's cascade) waits for
/// the rollup writer's turn before it locks a device, and the real backfill and follower steps
/// wait for a deletion in progress: the two take turns, so they never deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_deletions_and_rollup_writers_take_turns() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    let ids = devices(&mut conn, 3).await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("pool");

    // A deletion in progress holds up both kinds of writer until it commits.
    set_backfill(&mut conn, false).await;
    for writer in ["backfill", "follower"] {
        let mut deletion = pool.begin().await.expect("begin");
        sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(ids[0])
            .execute(&mut *deletion)
            .await
            .expect("delete");
        let step = {
            let pool = pool.clone();
            tokio::spawn(async move {
                match writer {
                    "backfill" => rollups::backfill_step(&pool, 1).await.map(|_| ()),
                    _ => rollups::follow_step(&pool, OffsetDateTime::now_utc())
                        .await
                        .map(|_| ()),
                }
            })
        };
        wait_for(
            Duration::from_secs(10),
            "the step waiting for its turn",
            || {
                let url = db.url.clone();
                async move {
                    let mut conn = PgConnection::connect(&url).await.expect("connect");
                    advisory_waits(&mut conn).await > 0
                }
            },
        )
        .await;
        assert!(!step.is_finished(), "{writer}: waits for the deletion");
        deletion.rollback().await.expect("rollback");
        step.await
            .expect("task")
            .expect("the step, once the deletion is done");
    }

    // A writer's turn holds up a deletion by id and a tenant's cascade: with a lock timeout they
    // fail at the advisory lock, having locked no device; after the turn they go through.
    let mut writer = pool.begin().await.expect("begin");
    rollups::take_turn_to_write(&mut writer)
        .await
        .expect("the writer's turn");
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM devices WHERE id = $1")
        .bind(ids[1])
        .fetch_one(&mut conn)
        .await
        .expect("tenant");
    sqlx::query("SET lock_timeout = '300ms'")
        .execute(&mut conn)
        .await
        .expect("set");
    let by_id = "DELETE FROM devices WHERE id = $1";
    let by_tenant = "DELETE FROM tenants WHERE id = $1";
    for (sql, id) in [(by_id, ids[1]), (by_tenant, tenant)] {
        let refused = sqlx::query(sql)
            .bind(id)
            .execute(&mut conn)
            .await
            .expect_err("waits for the writer");
        let code = refused
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("55P03"), "{sql}: {refused}");
    }
    writer.commit().await.expect("commit");
    for (sql, id) in [(by_id, ids[1]), (by_tenant, tenant)] {
        sqlx::query(sql)
            .bind(id)
            .execute(&mut conn)
            .await
            .expect("after the writer's turn");
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(left, 0);
}

/// Migration 021: the rollups hold no foreign key to `devices`; a trigger deletes a deleted
/// device's rollup rows, whether the device went by id or with its tenant, and no other device's.
#[tokio::test]
async fn a_deleted_devices_rollups_go_with_it_and_no_other_devices() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    let mine = devices(&mut conn, 2).await;
    let theirs = devices(&mut conn, 1).await;
    for (table, width) in TABLES {
        let sql = format!(
            "INSERT INTO {table} (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
             SELECT d, m, $2 + i * interval '{width}', 1, 1, 1, 1, 1, $2, 1, $2
             FROM unnest($1::uuid[]) d, unnest(ARRAY['a', 'b']) m, generate_series(0, 2) i"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind([mine[0], mine[1], theirs[0]])
            .bind(base())
            .execute(&mut conn)
            .await
            .expect("rollup rows");
    }
    let keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_constraint
         WHERE contype = 'f' AND conrelid::regclass::text LIKE 'telemetry_rollup_%'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("keys");
    assert_eq!(keys, 0, "no foreign key checks each rollup row");
    // Rows per device, over the three tables.
    let rows = async |conn: &mut PgConnection, device: Uuid| -> i64 {
        sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM telemetry_rollup_1m WHERE device_id = $1)
                  + (SELECT count(*) FROM telemetry_rollup_1h WHERE device_id = $1)
                  + (SELECT count(*) FROM telemetry_rollup_1d WHERE device_id = $1)",
        )
        .bind(device)
        .fetch_one(conn)
        .await
        .expect("count")
    };
    assert_eq!(rows(&mut conn, mine[0]).await, 18);

    sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(mine[0])
        .execute(&mut conn)
        .await
        .expect("delete by id");
    assert_eq!(rows(&mut conn, mine[0]).await, 0, "deleted by id");
    assert_eq!(rows(&mut conn, mine[1]).await, 18, "its neighbour's stay");
    sqlx::query("DELETE FROM tenants WHERE id = (SELECT tenant_id FROM devices WHERE id = $1)")
        .bind(mine[1])
        .execute(&mut conn)
        .await
        .expect("delete the tenant");
    assert_eq!(rows(&mut conn, mine[1]).await, 0, "deleted with its tenant");
    assert_eq!(
        rows(&mut conn, theirs[0]).await,
        18,
        "another tenant's stay"
    );
}

/// The follower writes its minutes with a plain INSERT (they should hold no row); a minute that
/// holds one anyway is written over, not a follower stopped for good on a unique violation.
#[tokio::test]
async fn a_minute_that_holds_a_rollup_row_already_is_written_over() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    let ids = devices(&mut conn, 2).await;
    let day = base();
    set_edges(&mut conn, day).await;
    let messages: Vec<(Uuid, Envelope)> = (0..6)
        .flat_map(|i| {
            let ts = day + time::Duration::seconds(20 * i);
            ids.iter()
                .map(move |d| (*d, envelope(ts, &[("t", MetricValue::Number(i as f64))])))
        })
        .collect();
    store_all(&mut conn, &messages).await;
    // A stale row in the second minute, ahead of the follower's edge.
    sqlx::query(
        "INSERT INTO telemetry_rollup_1m (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         VALUES ($1, 't', $2, 99, -1, -1, -99, -1, $2, -1, $2)",
    )
    .bind(ids[1])
    .bind(day + time::Duration::minutes(1))
    .execute(&mut conn)
    .await
    .expect("a stale rollup row");
    catch_up(&db.url, OffsetDateTime::now_utc()).await;
    assert_rollups_exact(&mut conn).await;
    let minutes: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_rollup_1m")
        .fetch_one(&mut conn)
        .await
        .expect("minutes");
    assert_eq!(minutes, 4, "two devices, two minutes, one row each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_older_than_the_retention_are_counted_and_not_stored() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let mut command = gito_api(&db.url, &["serve"]);
    command
        .env("GITO_PROCESSOR", "on")
        .env("GITO_MQTT_URL", broker.url())
        .env(
            "GITO_PROCESSOR_CLIENT_ID",
            format!("rollups-test-{}", Uuid::new_v4().simple()),
        )
        .env("GITO_TELEMETRY_RETENTION_DAYS", "30");
    let mut api = ApiProcess::start(command);
    let addr = api.wait_ready(Duration::from_secs(30)).await;
    let http = gito_testkit::admin_client();
    let post = |path: String, body: Value| {
        let http = http.clone();
        async move {
            let response = http
                .post(format!("http://{addr}{path}"))
                .json(&body)
                .send()
                .await
                .expect("request");
            assert!(response.status().is_success(), "{path}");
            response.json::<Value>().await.expect("json")
        }
    };
    let weekly = id_of(&post("/tenants".into(), json!({ "name": "weekly" })).await);
    let default = id_of(&post("/tenants".into(), json!({ "name": "default" })).await);
    let mut conn = db.connect().await;
    sqlx::query("UPDATE tenants SET retention_days = 7 WHERE id = $1")
        .bind(weekly)
        .execute(&mut conn)
        .await
        .expect("retention");
    let mut topics = BTreeMap::new();
    for tenant in [weekly, default] {
        let device = id_of(
            &post(
                format!("/tenants/{tenant}/devices"),
                json!({ "name": "d", "external_id": format!("{tenant}/d") }),
            )
            .await,
        );
        topics.insert(tenant, format!("{tenant}/devices/{device}/telemetry"));
    }
    let days_ago = |days: i64| {
        let ts = (OffsetDateTime::now_utc() - time::Duration::days(days))
            .format(&Rfc3339)
            .expect("format");
        json!({ "ts": ts, "metrics": { "v": days, "w": 1 } })
            .to_string()
            .into_bytes()
    };
    publish_all(
        &broker.url(),
        vec![
            (topics[&weekly].clone(), days_ago(10)),
            (topics[&weekly].clone(), days_ago(1)),
            (topics[&default].clone(), days_ago(10)),
            (topics[&default].clone(), days_ago(40)),
        ],
    )
    .await;
    let scrape = || async {
        Scrape::get(&format!("http://{addr}/metrics"), Some(ADMIN_TOKEN))
            .await
            .expect("metrics")
    };
    wait_for(
        Duration::from_secs(30),
        "4 rows stored, 4 expired",
        || async {
            let s = scrape().await;
            s.value("gito_processor_rows_stored_total", &[]) == 4.0
                && s.value("gito_processor_rows_expired_total", &[]) == 4.0
        },
    )
    .await;
    let kept: Vec<(Uuid, f64)> = sqlx::query_as(
        "SELECT d.tenant_id, t.value FROM telemetry t JOIN devices d ON d.id = t.device_id
         WHERE t.metric = 'v' ORDER BY 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .expect("rows");
    let mut expected = vec![(weekly, 1.0), (default, 10.0)];
    expected.sort_by_key(|(t, _)| *t);
    assert_eq!(kept, expected);
    assert!(
        api.count("samples older than their tenant's retention were not stored") >= 1,
        "one log line per batch that dropped some"
    );
    // The follower (1 s apart when idle) recomputes the four late samples' minutes, and only them.
    let rolled = || {
        let url = db.url.clone();
        async move {
            let mut conn = PgConnection::connect(&url).await.expect("connect");
            let rolled: Option<i64> = sqlx::query_scalar(
                "SELECT sum(count)::bigint FROM telemetry_rollup_1d WHERE metric = 'v'",
            )
            .fetch_one(&mut conn)
            .await
            .expect("rollups");
            rolled
        }
    };
    wait_for(Duration::from_secs(30), "2 samples rolled up", || async {
        rolled().await == Some(2)
    })
    .await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_rollup_invalidations")
        .fetch_one(&mut conn)
        .await
        .expect("pending");
    assert_eq!(pending, 0, "every logged minute recomputed");
}

/// The processor copies rows it expects to be new (`Insert::Copy`, binary `COPY`) and merges
/// otherwise: a row must come out of both the same, to the microsecond, or the redelivery of a
/// copied row would be stored twice; and both log the same late minutes for the follower.
#[tokio::test]
async fn a_copied_row_equals_its_merged_twin_and_its_redelivery_stores_nothing() {
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    let ids = devices(&mut conn, 2).await;
    let times = [
        base() + time::Duration::nanoseconds(123_456_789),
        // Half a microsecond before PostgreSQL's epoch, and before the Unix epoch.
        OffsetDateTime::from_unix_timestamp_nanos(946_684_799_999_999_500).expect("a time"),
        OffsetDateTime::from_unix_timestamp_nanos(-1_500).expect("a time"),
        OffsetDateTime::now_utc() + time::Duration::minutes(5),
    ];
    let rows = |device: Uuid| {
        let mut rows = store::Rows::default();
        for (i, ts) in times.iter().enumerate() {
            for (metric, value, json, flagged) in [
                ("n", Some(-0.1 * i as f64), None, false),
                ("on", Some(1.0), Some(json!(true)), true),
                ("mode", None, Some(json!("a \"quoted\" ünïcode\n")), false),
            ] {
                rows.device_id.push(device);
                rows.ts.push(*ts);
                rows.metric.push(metric.to_owned());
                rows.value.push(value);
                rows.value_json.push(json);
                rows.flagged.push(flagged);
            }
        }
        rows
    };
    for (device, how) in [(ids[0], Insert::Copy), (ids[1], Insert::Merge)] {
        let mut tx = conn.begin().await.expect("begin");
        let inserted = store::insert(&mut tx, &rows(device), how)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        assert_eq!(inserted, 12, "{how:?} inserts every row");
    }
    let stored = |device: Uuid| {
        sqlx::query_scalar::<_, String>(
            "SELECT format('%s %s %s %s %s', ts, metric, value, value_json, flagged)
             FROM telemetry WHERE device_id = $1 ORDER BY ts, metric",
        )
        .bind(device)
    };
    let copied = stored(ids[0]).fetch_all(&mut conn).await.expect("rows");
    assert_eq!(copied.len(), 12);
    assert_eq!(
        copied,
        stored(ids[1]).fetch_all(&mut conn).await.expect("rows")
    );
    let late = |device: Uuid| {
        sqlx::query_scalar::<_, String>(
            "SELECT format('%s %s', metric, bucket) FROM telemetry_rollup_invalidations
             WHERE device_id = $1 ORDER BY bucket, metric",
        )
        .bind(device)
    };
    let logged = late(ids[0]).fetch_all(&mut conn).await.expect("log");
    // Three times behind the follower's edge, two numeric metrics each; the fourth is ahead.
    assert_eq!(logged.len(), 6, "{logged:?}");
    assert_eq!(
        logged,
        late(ids[1]).fetch_all(&mut conn).await.expect("log")
    );

    let mut tx = conn.begin().await.expect("begin");
    let error = store::insert(&mut tx, &rows(ids[0]), Insert::Copy)
        .await
        .expect_err("a copy of rows stored before fails");
    assert!(store::is_stored_before(&error), "{error}");
    tx.rollback().await.expect("rollback");
    let mut tx = conn.begin().await.expect("begin");
    let again = store::insert(&mut tx, &rows(ids[0]), Insert::Merge)
        .await
        .expect("merge");
    tx.commit().await.expect("commit");
    assert_eq!(again, 0, "the copied rows' keys are the merged rows' keys");
    assert_eq!(
        late(ids[0]).fetch_all(&mut conn).await.expect("log"),
        logged
    );
}
