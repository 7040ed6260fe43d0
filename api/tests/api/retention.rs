//! Retention per tenant: `PATCH /tenants/{id}` sets it, the maintainer enforces it: whole
//! partitions go only when every tenant's data in them expired, shorter-lived tenants' rows go
//! in batches.

use gito_api::partitions;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::helpers::{TestApp, error_code};

#[tokio::test]
async fn only_the_admin_sets_retention_days_and_every_tenant_json_shows_it() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("kept").await;
    let path = format!("/tenants/{tenant}");
    let (status, read) = app.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["retention_days"], json!(null));

    let (status, changed) = app.patch(&path, json!({ "retention_days": 30 })).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["retention_days"], 30);
    assert_eq!(app.get(&path).await.1["retention_days"], 30);
    let (_, list) = app.get("/tenants").await;
    assert_eq!(list["items"][0]["retention_days"], 30);
    // Absent: unchanged; null: cleared.
    assert_eq!(app.patch(&path, json!({})).await.1["retention_days"], 30);
    assert_eq!(
        app.patch(&path, json!({ "retention_days": null })).await.1["retention_days"],
        json!(null)
    );

    for body in [
        json!({ "retention_days": 0 }),
        json!({ "retention_days": -1 }),
        json!({ "retention_days": 36_501 }),
        json!({ "retention_days": "30" }),
        json!({ "retention_days": 30, "name": "x" }),
    ] {
        let (status, answer) = app.patch(&path, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
    }
    assert_eq!(
        app.patch(&path, json!({ "retention_days": 36_500 }))
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = app
        .patch(
            &format!("/tenants/{}", Uuid::now_v7()),
            json!({ "retention_days": 1 }),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let token = app.token_for(tenant).await;
    let (status, _) = app
        .send_as(
            Some(&token),
            Method::PATCH,
            &path,
            Some(json!({ "retention_days": 1 })),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a tenant cannot shorten or lengthen its own retention"
    );
    let (status, _) = app
        .send_as(
            None,
            Method::PATCH,
            &path,
            Some(json!({ "retention_days": 1 })),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get(&path).await.1["retention_days"], 36_500);
}

/// A device of `tenant` with one sample a day (at noon) for the last 60 days.
async fn device_with_60_days(pool: &PgPool, tenant: Uuid, now: OffsetDateTime) -> Uuid {
    let device = Uuid::now_v7();
    sqlx::query("INSERT INTO devices (id, tenant_id, name) VALUES ($1, $2, 'd')")
        .bind(device)
        .bind(tenant)
        .execute(pool)
        .await
        .expect("device");
    sqlx::query(
        "INSERT INTO telemetry (device_id, ts, metric, value)
         SELECT $1, $2 - d * INTERVAL '1 day', 'm', d FROM generate_series(0, 59) d",
    )
    .bind(device)
    .bind(now)
    .execute(pool)
    .await
    .expect("samples");
    device
}

async fn oldest_days(pool: &PgPool, device: Uuid, now: OffsetDateTime) -> (i64, f64) {
    sqlx::query_as(
        "SELECT count(*), coalesce(max(extract(epoch FROM $2 - ts) / 86400), 0)::float8
         FROM telemetry WHERE device_id = $1",
    )
    .bind(device)
    .bind(now)
    .fetch_one(pool)
    .await
    .expect("rows")
}

async fn partition_count(pool: &PgPool) -> usize {
    let mut conn = pool.acquire().await.expect("conn");
    partitions::partitions(&mut conn)
        .await
        .expect("partitions")
        .len()
}

#[tokio::test]
async fn retention_drops_a_partition_only_when_every_tenants_data_in_it_expired() {
    let app = TestApp::spawn().await;
    let pool = &app.pool;
    // Daily partitions over the last 60 days: a database converted long ago, whose historical
    // partition retention already removed.
    sqlx::query("ALTER TABLE telemetry DETACH PARTITION telemetry_legacy")
        .execute(pool)
        .await
        .expect("detach legacy");
    sqlx::query("DROP TABLE telemetry_legacy")
        .execute(pool)
        .await
        .expect("drop legacy");
    let now = OffsetDateTime::now_utc();
    let config = gito_api::config::StorageConfig {
        partitions_ahead: 70,
        ..Default::default()
    };
    partitions::maintain(pool, &config, now - time::Duration::days(61))
        .await
        .expect("partitions for the past");

    let (short, long, forever) = (
        app.tenant("short").await,
        app.tenant("long").await,
        app.tenant("forever").await,
    );
    app.patch(
        &format!("/tenants/{short}"),
        json!({ "retention_days": 10 }),
    )
    .await;
    app.patch(&format!("/tenants/{long}"), json!({ "retention_days": 40 }))
        .await;
    let s = device_with_60_days(pool, short, now).await;
    let l = device_with_60_days(pool, long, now).await;
    let f = device_with_60_days(pool, forever, now).await;
    let partitions_before = partition_count(pool).await;

    // One tenant keeps everything (no default): no partition may go; `short` and `long` lose
    // their old rows by batches.
    let mut conn = pool.acquire().await.expect("conn");
    let (dropped, deleted) = partitions::enforce_retention(&mut conn, None, now)
        .await
        .expect("retention");
    assert!(dropped.is_empty(), "{dropped:?}");
    // Samples exactly at the cutoff stay: days 0..=10 and 0..=40.
    assert_eq!(deleted, 49 + 19, "rows older than 10 and 40 days");
    assert_eq!(oldest_days(pool, s, now).await.0, 11);
    assert_eq!(oldest_days(pool, l, now).await.0, 41);
    assert_eq!(oldest_days(pool, f, now).await.0, 60);

    // Now `forever` keeps 5 days: partitions older than 40 days go (with `forever`'s rows in
    // them), `forever` loses the rest by batches, `long` keeps its 40 days.
    app.patch(
        &format!("/tenants/{forever}"),
        json!({ "retention_days": 5 }),
    )
    .await;
    let (dropped, deleted) = partitions::enforce_retention(&mut conn, None, now)
        .await
        .expect("retention");
    assert!(dropped.len() >= 19, "{dropped:?}");
    assert_eq!(
        partition_count(pool).await,
        partitions_before - dropped.len()
    );
    let (rows, oldest) = oldest_days(pool, l, now).await;
    assert_eq!(rows, 41, "long keeps its 40 days");
    assert!(oldest <= 40.0, "{oldest}");
    assert_eq!(oldest_days(pool, f, now).await.0, 6);
    assert_eq!(oldest_days(pool, s, now).await.0, 11);
    assert_eq!(
        deleted, 35,
        "forever's days 6..=40, the older ones went with their partitions"
    );

    // Again: nothing left to do.
    let again = partitions::enforce_retention(&mut conn, None, now)
        .await
        .expect("retention");
    assert_eq!(again, (vec![], 0));
}

#[tokio::test]
async fn the_deployment_default_applies_to_tenants_without_their_own() {
    let app = TestApp::spawn().await;
    let now = OffsetDateTime::now_utc();
    let (plain, own) = (app.tenant("plain").await, app.tenant("own").await);
    app.patch(&format!("/tenants/{own}"), json!({ "retention_days": 30 }))
        .await;
    let p = device_with_60_days(&app.pool, plain, now).await;
    let o = device_with_60_days(&app.pool, own, now).await;
    let mut conn = app.pool.acquire().await.expect("conn");
    partitions::enforce_retention(&mut conn, Some(20), now)
        .await
        .expect("retention");
    assert_eq!(oldest_days(&app.pool, p, now).await.0, 21);
    assert_eq!(
        oldest_days(&app.pool, o, now).await.0,
        60,
        "30 is the longest: whole partitions, and 013's legacy one is not expired"
    );
}

/// Rollup rows of `device`, one per bucket of `table`, for the 60 days before `now`.
async fn rollups_for_60_days(
    pool: &PgPool,
    table: &str,
    width: &str,
    device: Uuid,
    now: OffsetDateTime,
) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         SELECT $1, 'm', b, 1, 1, 1, 1, 1, b, 1, b
         FROM generate_series(date_trunc('{width}', $2::timestamptz) - INTERVAL '60 days', $2, INTERVAL '1 {width}') b"
    )))
    .bind(device)
    .bind(now)
    .execute(pool)
    .await
    .expect("rollups");
}

#[tokio::test]
async fn retention_prunes_rollup_buckets_that_lie_wholly_before_the_cutoff_and_only_the_tenants() {
    let app = TestApp::spawn().await;
    let pool = &app.pool;
    let now = OffsetDateTime::now_utc();
    let (short, forever) = (app.tenant("short").await, app.tenant("forever").await);
    app.patch(
        &format!("/tenants/{short}"),
        json!({ "retention_days": 10 }),
    )
    .await;
    // The app's rollup follower stays out of this test's rollup rows: its edges past every raw
    // row, its one-time cleanup off (set between two of its steps).
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(gito_api::rollups::FOLLOWER)
        .execute(&mut *tx)
        .await
        .expect("follower lock");
    sqlx::query(
        "UPDATE telemetry_rollup_state SET cleanup_from = NULL,
             invalidated_before = t, materialized_before = t, hours_before = t, days_before = t
         FROM (SELECT date_bin('1 day', now(), TIMESTAMPTZ '2000-01-01 00:00:00+00') + interval '1 day' AS t) tomorrow",
    )
    .execute(&mut *tx)
    .await
    .expect("follower edges");
    tx.commit().await.expect("commit");
    let s = device_with_60_days(pool, short, now).await;
    let f = device_with_60_days(pool, forever, now).await;
    let tables = [
        ("telemetry_rollup_1m", "minute"),
        ("telemetry_rollup_1h", "hour"),
        ("telemetry_rollup_1d", "day"),
    ];
    for (table, width) in tables {
        for device in [s, f] {
            rollups_for_60_days(pool, table, width, device, now).await;
        }
    }
    let count = |table: &'static str, device: Uuid| async move {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE device_id = $1"
        )))
        .bind(device)
        .fetch_one(pool)
        .await
        .expect("count")
    };
    let mut before = Vec::new();
    for (table, _) in tables {
        before.push(count(table, f).await);
    }

    let mut conn = pool.acquire().await.expect("conn");
    partitions::enforce_retention(&mut conn, None, now)
        .await
        .expect("retention");
    let cutoff = now - time::Duration::days(10);
    for ((table, width), kept_by_forever) in tables.into_iter().zip(before) {
        // What must stay: every bucket that ends after the cutoff (the same `now` as the rows':
        // a minute may have begun since).
        let expected: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM generate_series(date_trunc('{width}', $2::timestamptz) - INTERVAL '60 days', $2, INTERVAL '1 {width}') b
             WHERE b + INTERVAL '1 {width}' > $1"
        )))
        .bind(cutoff)
        .bind(now)
        .fetch_one(pool)
        .await
        .expect("expected");
        assert_eq!(
            count(table, s).await,
            expected,
            "{table} of the 10-day tenant"
        );
        assert_eq!(
            count(table, f).await,
            kept_by_forever,
            "{table} of the tenant that keeps everything"
        );
    }
}
