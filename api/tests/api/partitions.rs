//! Migration 013 on a populated database (rows kept, no long exclusive lock, a writer going on,
//! up/down/up, finishing after a crash at any statement) and the partition maintainer (two at
//! once, rows of the default partition moved into a new partition).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::TestDb;
use gito_api::config::StorageConfig;
use gito_api::migrate::repair::{Action, repair};
use gito_api::migrate::{self, Catalog, DownTarget, RunOptions};
use gito_api::partitions;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// Rows loaded before converting: enough that a scan takes a while, few enough for ~a minute.
const ROWS: i64 = 2_000_000;
const DEVICES: i64 = 50;
const TENANT: Uuid = Uuid::from_u128(0x0193_9d2a_0000_7000_8000_0000_0000_0001);

fn device(i: i64) -> Uuid {
    Uuid::from_u128(0x0193_9d2a_0000_7000_8000_0000_0001_0000 + i as u128)
}

/// Tenant, devices, and `rows` samples spread over the last 60 days plus 1% in the next 30.
async fn populate(pool: &PgPool, rows: i64) {
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'partitions')")
        .bind(TENANT)
        .execute(pool)
        .await
        .expect("tenant");
    let ids: Vec<Uuid> = (0..DEVICES).map(device).collect();
    sqlx::query(
        "INSERT INTO devices (id, tenant_id, name) SELECT id, $1, id::text FROM unnest($2::uuid[]) id",
    )
    .bind(TENANT)
    .bind(&ids)
    .execute(pool)
    .await
    .expect("devices");
    sqlx::query(
        "INSERT INTO telemetry (device_id, ts, metric, value)
         SELECT ($1::uuid[])[1 + i % $3], 
                CASE WHEN i % 100 = 0 THEN now() + (i % 30 + 1) * INTERVAL '1 day' + i * INTERVAL '1 ms'
                     ELSE now() - INTERVAL '60 days' + i * (INTERVAL '60 days' / greatest($2, 1)) END,
                'm' || (i % 5), i
         FROM generate_series(0, $2 - 1) i WHERE $2 > 0",
    )
    .bind(&ids)
    .bind(rows)
    .bind(DEVICES)
    .execute(pool)
    .await
    .expect("telemetry loaded");
}

async fn count_and_sum(pool: &PgPool) -> (i64, f64) {
    sqlx::query_as("SELECT count(*), coalesce(sum(value), 0) FROM telemetry")
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn relkind(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE oid = 'telemetry'::regclass")
        .fetch_one(pool)
        .await
        .expect("relkind")
}

/// Inserts unique rows (so every successful statement is a row that must be kept), half of them
/// dated after the conversion's bound, until `stop`; returns (rows, sum of values).
fn writer(pool: PgPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(i64, f64)> {
    tokio::spawn(async move {
        let (mut rows, mut sum) = (0_i64, 0.0);
        let mut i = 0_i64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let offset = if i % 2 == 0 { "-1 hour" } else { "2 days" };
            let result = sqlx::query(
                "INSERT INTO telemetry (device_id, ts, metric, value)
                 VALUES ($1, now() + $2::interval + $3 * INTERVAL '1 ms', 'writer', $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(device(i % DEVICES))
            .bind(offset)
            .bind(i)
            .execute(&pool)
            .await;
            match result {
                Ok(_) => {
                    rows += 1;
                    sum += i as f64;
                }
                Err(e) => panic!("the writer was refused during the conversion: {e}"),
            }
        }
        (rows, sum)
    })
}

/// Polls `pg_locks` every 50 ms; returns the longest an ACCESS EXCLUSIVE lock on a telemetry*
/// relation was seen held by the migration's transaction (an upper bound: since it began).
fn lock_watcher(pool: PgPool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        let mut longest = 0.0_f64;
        while !stop.load(Ordering::Relaxed) {
            let held: Option<f64> = sqlx::query_scalar(
                "SELECT max(extract(epoch FROM clock_timestamp() - a.xact_start))::float8
                 FROM pg_locks l
                 JOIN pg_class c ON c.oid = l.relation
                 JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.mode = 'AccessExclusiveLock' AND l.granted
                   AND c.relname LIKE 'telemetry%' AND a.application_name = 'gito-api migrate'",
            )
            .fetch_one(&pool)
            .await
            .expect("pg_locks");
            longest = longest.max(held.unwrap_or(0.0));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        longest
    })
}

#[tokio::test]
async fn converting_a_populated_table_keeps_every_row_and_never_holds_an_exclusive_lock_for_long() {
    let db = TestDb::empty().await;
    let catalog = Catalog::embedded();
    migrate::up(&db.url, catalog, Some(12))
        .await
        .expect("up to 012");
    let pool = PgPool::connect(&db.url).await.expect("pool");
    let loading = Instant::now();
    // As a bulk load would: keys and index built once afterwards, not row by row.
    sqlx::raw_sql(
        "ALTER TABLE telemetry DROP CONSTRAINT telemetry_device_id_fkey,
             DROP CONSTRAINT telemetry_device_id_metric_ts_key;
         DROP INDEX telemetry_device_id_ts_idx",
    )
    .execute(&pool)
    .await
    .expect("keys dropped for the load");
    populate(&pool, ROWS).await;
    sqlx::raw_sql(
        "ALTER TABLE telemetry
             ADD CONSTRAINT telemetry_device_id_fkey FOREIGN KEY (device_id)
                 REFERENCES devices (id) ON DELETE CASCADE,
             ADD CONSTRAINT telemetry_device_id_metric_ts_key UNIQUE (device_id, metric, ts);
         CREATE INDEX telemetry_device_id_ts_idx ON telemetry (device_id, ts DESC)",
    )
    .execute(&pool)
    .await
    .expect("keys restored");
    sqlx::query("ANALYZE telemetry")
        .execute(&pool)
        .await
        .expect("analyze");
    let before = count_and_sum(&pool).await;
    assert_eq!(before.0, ROWS);
    eprintln!("loaded {ROWS} rows in {:?}", loading.elapsed());

    let stop = Arc::new(AtomicBool::new(false));
    let writing = writer(pool.clone(), stop.clone());
    let watching = lock_watcher(pool.clone(), stop.clone());
    let converting = Instant::now();
    let applied = migrate::up(&db.url, catalog, Some(13))
        .await
        .expect("013 applies");
    assert_eq!(applied.len(), 1);
    eprintln!("converted in {:?}", converting.elapsed());
    stop.store(true, Ordering::Relaxed);
    let (rows, sum) = writing.await.expect("writer");
    let longest = watching.await.expect("watcher");
    eprintln!("longest ACCESS EXCLUSIVE seen held by the migration: {longest:.3} s");
    assert!(rows > 0, "the writer wrote during the conversion");
    assert!(
        longest < 5.0,
        "an ACCESS EXCLUSIVE lock on telemetry was held {longest:.1} s by the migration"
    );

    assert_eq!(relkind(&pool).await, "p");
    let after = count_and_sum(&pool).await;
    assert_eq!(after.0, before.0 + rows, "no row lost or duplicated");
    assert!(
        (after.1 - (before.1 + sum)).abs() < 0.5,
        "{after:?} vs {before:?} + {sum}"
    );
    let legacy: i64 = sqlx::query_scalar("SELECT count(*) FROM telemetry_legacy")
        .fetch_one(&pool)
        .await
        .expect("legacy");
    assert!(
        legacy > 0 && legacy < after.0,
        "old rows in the legacy partition, newer ones beside"
    );
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname LIKE 'telemetry_conversion%'
         UNION ALL SELECT count(*) FROM pg_proc WHERE proname LIKE 'gito_013%'",
    )
    .fetch_all(&pool)
    .await
    .expect("leftovers")
    .iter()
    .sum::<i64>();
    assert_eq!(leftovers, 0, "the conversion's helpers are gone");

    // Down: one plain table with every row; up again: partitioned with every row.
    migrate::down(&db.url, catalog, DownTarget::Steps(1))
        .await
        .expect("013 down");
    assert_eq!(relkind(&pool).await, "r");
    assert_eq!(count_and_sum(&pool).await.0, after.0);
    migrate::up(&db.url, catalog, None)
        .await
        .expect("013 up again");
    assert_eq!(relkind(&pool).await, "p");
    assert_eq!(count_and_sum(&pool).await.0, after.0);
    pool.close().await;
}

/// Runs 013's first `ran` statements as a crashed run would have left them (the last one
/// committed but not recorded), then lets `repair --roll-forward` finish.
async fn crash_after(ran: usize) {
    let db = TestDb::empty().await;
    let catalog = Catalog::embedded();
    migrate::up(&db.url, catalog, Some(12))
        .await
        .expect("up to 012");
    let pool = PgPool::connect(&db.url).await.expect("pool");
    populate(&pool, 2_000).await;
    let before = count_and_sum(&pool).await;
    let m = catalog.get(13).expect("013");
    let statements = migrate::sql::parse(m.up_sql()).statements;
    let mut conn = pool.acquire().await.expect("conn");
    for st in &statements[..ran] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(st.text.clone()))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("statement at line {}: {e}", st.line));
    }
    drop(conn);
    // A runner that died: its bookkeeping tables, 013 partly applied, the last statement unrecorded.
    let _ = migrate::up(&db.url, catalog, Some(12))
        .await
        .expect("bookkeeping exists");
    sqlx::query(
        "INSERT INTO gito_schema_migrations_partial (version, name, checksum, statements, done)
         VALUES (13, $1, $2, $3, $4)",
    )
    .bind(&m.name)
    .bind(m.checksum())
    .bind(statements.len() as i32)
    .bind(ran.saturating_sub(1) as i32)
    .execute(&pool)
    .await
    .expect("partial row");
    repair(
        &db.url,
        catalog,
        Action::RollForward,
        &RunOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("roll forward after statement {ran}: {e}"));
    assert_eq!(
        relkind(&pool).await,
        "p",
        "after a crash at statement {ran}"
    );
    assert_eq!(
        count_and_sum(&pool).await,
        before,
        "after a crash at statement {ran}"
    );
    pool.close().await;
}

#[tokio::test]
async fn a_conversion_stopped_after_any_statement_is_finished_by_rolling_forward() {
    let total = migrate::sql::parse(Catalog::embedded().get(13).expect("013").up_sql())
        .statements
        .len();
    for ran in 1..=total {
        crash_after(ran).await;
    }
}

async fn partition_names(pool: &PgPool) -> Vec<String> {
    let mut conn = pool.acquire().await.expect("conn");
    partitions::partitions(&mut conn)
        .await
        .expect("partitions")
        .into_iter()
        .map(|p| p.name)
        .collect()
}

#[tokio::test]
async fn two_maintainers_at_once_create_the_same_partitions_once() {
    // Up to 014, then 013's historical partition past the 8 MB under which 015 indexes a
    // partition itself: that one is left to the maintainers.
    let db = TestDb::empty().await;
    let catalog = Catalog::embedded();
    migrate::up(&db.url, catalog, Some(14))
        .await
        .expect("up to 014");
    sqlx::raw_sql(
        "INSERT INTO tenants (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 't');
         INSERT INTO devices (id, tenant_id, name) VALUES
             ('00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-000000000001', 'd');
         INSERT INTO telemetry_legacy (device_id, ts, metric, value)
         SELECT '00000000-0000-0000-0000-000000000002', TIMESTAMPTZ '2026-01-01 00:00:00+00' + i * interval '1 s', 'm', i
         FROM generate_series(1, 200000) i;",
    )
    .execute(&PgPool::connect(&db.url).await.expect("pool"))
    .await
    .expect("a legacy partition of 8 MB or more");
    migrate::up(&db.url, catalog, None)
        .await
        .expect("up to head");
    let (a, b) = (
        PgPool::connect(&db.url).await.expect("pool a"),
        PgPool::connect(&db.url).await.expect("pool b"),
    );
    let config = StorageConfig {
        partitions_ahead: 60,
        partition_interval: Duration::from_secs(6 * 3600),
        ..StorageConfig::default()
    };
    let now = OffsetDateTime::now_utc();
    let (ra, rb) = tokio::join!(
        partitions::maintain(&a, &config, now),
        partitions::maintain(&b, &config, now)
    );
    let (ra, rb) = (ra.expect("maintainer a"), rb.expect("maintainer b"));
    let mut created = [ra.created, rb.created].concat();
    created.sort();
    let names = partition_names(&a).await;
    for name in &created {
        assert_eq!(names.iter().filter(|n| *n == name).count(), 1, "{name}");
    }
    let count = created.len();
    created.dedup();
    assert_eq!(created.len(), count, "no partition created twice");
    assert!(
        !created.is_empty(),
        "6 h partitions beyond the migration's daily ones"
    );
    // Idempotent: a third round creates nothing.
    let again = partitions::maintain(&a, &config, now).await.expect("again");
    assert!(again.created.is_empty(), "{:?}", again.created);
    // Every partition has the `ts` index the rollup follower reads by, attached to the parent's
    // (which becomes valid once all have it): 013's partitions got it from a round, CONCURRENTLY;
    // the rounds' own partitions from their creation.
    let (valid, missing): (bool, i64) = sqlx::query_as(
        "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = 'telemetry_ts_brin'::regclass),
                (SELECT count(*) FROM pg_inherits i
                 WHERE i.inhparent = 'telemetry'::regclass AND NOT EXISTS (
                     SELECT 1 FROM pg_inherits x JOIN pg_index ix ON ix.indexrelid = x.inhrelid
                     WHERE x.inhparent = 'telemetry_ts_brin'::regclass AND ix.indrelid = i.inhrelid))",
    )
    .fetch_one(&a)
    .await
    .expect("indexes");
    assert_eq!(missing, 0, "partitions without the ts index");
    assert!(valid, "the parent's ts index is valid");
    // And each summarizes its ranges as they fill (022), whichever way it came: 015's indexes by
    // the migration, 013's big partition's by a round, the rounds' partitions' from creation; one
    // BRIN index per partition (the attach adopted the maintainer's, cloned none); the rollups'
    // bucket indexes by the migration too.
    let unsummarized: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         WHERE c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'telemetry_ts_brin'::regclass)
            OR c.relname IN ('telemetry_rollup_1m_bucket_brin', 'telemetry_rollup_1h_bucket_brin')
         EXCEPT
         SELECT c.relname::text FROM pg_class c WHERE 'autosummarize=on' = ANY (c.reloptions)",
    )
    .fetch_all(&a)
    .await
    .expect("reloptions");
    assert!(unsummarized.is_empty(), "{unsummarized:?}");
    let brins: Vec<(String, i64)> = sqlx::query_as(
        "SELECT i.inhrelid::regclass::text, count(*) FROM pg_inherits i
         JOIN pg_index ix ON ix.indrelid = i.inhrelid
         JOIN pg_class x ON x.oid = ix.indexrelid JOIN pg_am am ON am.oid = x.relam AND am.amname = 'brin'
         WHERE i.inhparent = 'telemetry'::regclass GROUP BY 1 HAVING count(*) <> 1",
    )
    .fetch_all(&a)
    .await
    .expect("brin indexes");
    assert!(
        brins.is_empty(),
        "partitions with other than one BRIN index: {brins:?}"
    );
    let indexed = [ra.indexed, rb.indexed, again.indexed].concat();
    assert!(
        indexed.contains(&"telemetry_legacy".to_owned()),
        "013's partitions were indexed by a round: {indexed:?}"
    );
}

#[tokio::test]
async fn a_new_partition_takes_over_the_rows_the_default_partition_held_for_its_range() {
    let db = TestDb::migrated().await;
    let pool = PgPool::connect(&db.url).await.expect("pool");
    populate(&pool, 0).await;
    let far = OffsetDateTime::now_utc() + time::Duration::days(100);
    for i in 0..10 {
        sqlx::query(
            "INSERT INTO telemetry (device_id, ts, metric, value) VALUES ($1, $2, 'm', $3)",
        )
        .bind(device(0))
        .bind(far + time::Duration::minutes(i))
        .bind(i as f64)
        .execute(&pool)
        .await
        .expect("far future row");
    }
    let config = StorageConfig::default();
    let round = partitions::maintain(&pool, &config, OffsetDateTime::now_utc())
        .await
        .expect("round");
    assert_eq!(round.default_rows, 10, "counted where they wait");
    // 100 days later, the maintainer creates their partition and moves them into it.
    let round = partitions::maintain(&pool, &config, far)
        .await
        .expect("round later");
    assert_eq!(round.default_rows, 0);
    let day = far
        .format(time::macros::format_description!("[year][month][day]"))
        .expect("day");
    assert!(
        round.created.contains(&format!("telemetry_p{day}")),
        "{:?}",
        round.created
    );
    let moved: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM telemetry_p{day}"
    )))
    .fetch_one(&pool)
    .await
    .expect("moved");
    assert_eq!(moved, 10);
    pool.close().await;
}
