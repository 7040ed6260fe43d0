//! Storage you can see: a tenant's rows and bytes per device and metric, the partitions for the
//! admin; tokens and tenant isolation.

use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::TestApp;

/// A device of `tenant` with `per_metric` samples of each of `metrics`.
async fn device_with(pool: &PgPool, tenant: Uuid, metrics: &[&str], per_metric: i64) -> Uuid {
    let device = Uuid::now_v7();
    sqlx::query("INSERT INTO devices (id, tenant_id, name) VALUES ($1, $2, 'd')")
        .bind(device)
        .bind(tenant)
        .execute(pool)
        .await
        .expect("device");
    for metric in metrics {
        sqlx::query(
            "INSERT INTO telemetry (device_id, ts, metric, value)
             SELECT $1, now() - i * INTERVAL '1 minute', $2, i FROM generate_series(1, $3) i",
        )
        .bind(device)
        .bind(metric)
        .bind(per_metric)
        .execute(pool)
        .await
        .expect("samples");
    }
    device
}

fn rows_of(list: &Value, key: &str, value: &str) -> i64 {
    list.as_array()
        .expect("a list")
        .iter()
        .find(|item| item[key] == value)
        .map_or(0, |item| item["rows"].as_i64().expect("rows"))
}

#[tokio::test]
async fn a_tenant_sees_its_own_storage_per_device_and_metric_and_nobody_elses() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.tenant("a").await, app.tenant("b").await);
    let a1 = device_with(&app.pool, a, &["temp", "rh"], 3_000).await;
    let a2 = device_with(&app.pool, a, &["temp"], 1_000).await;
    device_with(&app.pool, b, &["temp", "co2"], 5_000).await;

    let token_a = app.token_for(a).await;
    let (status, body) = app.get_as(&token_a, &format!("/tenants/{a}/storage")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["estimated"], true);
    // Small enough to be read whole: the estimate is exact.
    assert_eq!(body["total_rows"], 7_000);
    assert_eq!(
        rows_of(&body["devices"], "device_id", &a1.to_string()),
        6_000
    );
    assert_eq!(
        rows_of(&body["devices"], "device_id", &a2.to_string()),
        1_000
    );
    assert_eq!(rows_of(&body["metrics"], "metric", "temp"), 4_000);
    assert_eq!(rows_of(&body["metrics"], "metric", "rh"), 3_000);
    assert_eq!(
        rows_of(&body["metrics"], "metric", "co2"),
        0,
        "b's metric is not a's"
    );
    assert_eq!(body["devices"].as_array().expect("devices").len(), 2);
    let bytes = body["total_bytes"].as_i64().expect("bytes");
    let table_bytes: i64 = sqlx::query_scalar(
        "SELECT sum(pg_total_relation_size(inhrelid))::bigint FROM pg_inherits
         WHERE inhparent = 'telemetry'::regclass",
    )
    .fetch_one(&app.pool)
    .await
    .expect("size");
    // a holds 7 of the 17 thousand rows: its share of the bytes.
    let share = bytes as f64 / table_bytes as f64;
    assert!(
        (share - 7.0 / 17.0).abs() < 0.01,
        "{bytes} of {table_bytes}"
    );

    // The admin sees it too; b's token does not see a's (404, as if a did not exist).
    let (status, admin) = app.get(&format!("/tenants/{a}/storage")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(admin["total_rows"], 7_000);
    let token_b = app.token_for(b).await;
    let (status, _) = app.get_as(&token_b, &format!("/tenants/{a}/storage")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get_as(&token_b, &format!("/tenants/{b}/storage")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["total_rows"], 10_000);
    let (status, _) = app
        .get(&format!("/tenants/{}/storage", Uuid::now_v7()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_admin_sees_every_partition_with_its_bounds_and_size_and_tenants_do_not() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("a").await;
    device_with(&app.pool, tenant, &["temp"], 2_000).await;
    sqlx::query("ANALYZE telemetry")
        .execute(&app.pool)
        .await
        .expect("analyze");

    let (status, body) = app.get("/storage/partitions").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let partitions = body.as_array().expect("a list");
    assert!(
        partitions.len() >= 9,
        "legacy, a week ahead, default: {body}"
    );
    let legacy = &partitions[0];
    assert_eq!(legacy["name"], "telemetry_legacy");
    assert_eq!(legacy["from"], Value::Null);
    assert_eq!(legacy["rows"], 2_000);
    assert!(legacy["bytes"].as_i64().expect("bytes") > 0);
    assert_eq!(legacy["default"], false);
    let last = partitions.last().expect("default");
    assert_eq!(
        (&last["name"], &last["default"]),
        (&Value::from("telemetry_default"), &Value::from(true))
    );
    // Contiguous: each daily partition starts where the one before it ends.
    for pair in partitions[..partitions.len() - 1].windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"], "{pair:?}");
    }
    assert!(
        partitions[1]["name"]
            .as_str()
            .expect("name")
            .starts_with("telemetry_p")
    );

    let token = app.token_for(tenant).await;
    let (status, _) = app.get_as(&token, "/storage/partitions").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
