//! Devices: idempotent creation by external_id, filters, pagination, classification.

use std::collections::HashSet;

use gito_api::rollups;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, error_code, id_of};

const DEVICE_FIELDS: [&str; 14] = [
    "id",
    "tenant_id",
    "name",
    "external_id",
    "device_type",
    "device_type_id",
    "organization_id",
    "site_id",
    "device_group_id",
    "status",
    "last_seen_at",
    "connectivity",
    "created_at",
    "updated_at",
];

#[tokio::test]
async fn bridge_style_create_needs_no_device_type_and_returns_the_documented_fields() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let path = "SDE11/JAX/UTILITIES/BOILER/OPT_G";
    let (status, device) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": path, "external_id": path, "device_type": "SDE11" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    let keys: HashSet<&str> = device
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, HashSet::from(DEVICE_FIELDS));
    assert_eq!(device["device_type"], "SDE11");
    assert_eq!(device["device_type_id"], Value::Null);
    assert_eq!(device["organization_id"], Value::Null);
    assert_eq!(device["status"], "active");
    assert_eq!(device["connectivity"], "offline", "never heard from");
}

#[tokio::test]
async fn create_device_returns_200_with_the_existing_device_for_a_known_external_id() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let base = format!("/tenants/{tenant}/devices");
    let (first_status, first) = app
        .post(&base, json!({ "name": "a", "external_id": "ext-1" }))
        .await;
    let (second_status, second) = app
        .post(
            &base,
            json!({ "name": "other name", "external_id": "ext-1" }),
        )
        .await;
    assert_eq!(first_status, StatusCode::CREATED);
    assert_eq!(second_status, StatusCode::OK);
    assert_eq!(second, first, "the existing device, unchanged");
    // The same external id in another tenant is another device.
    let other = app.tenant("other").await;
    let (status, theirs) = app
        .post(
            &format!("/tenants/{other}/devices"),
            json!({ "name": "a", "external_id": "ext-1" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(theirs["id"], first["id"]);
    // Devices without an external id are never merged.
    assert_eq!(
        app.post(&base, json!({ "name": "n" })).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        app.post(&base, json!({ "name": "n" })).await.0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn concurrent_creates_with_one_external_id_yield_one_device() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let base = format!("/tenants/{tenant}/devices");
    let requests = (0..32).map(|i| {
        app.post(
            &base,
            json!({ "name": format!("racer {i}"), "external_id": "SDE11/RACE" }),
        )
    });
    let results = futures::future::join_all(requests).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let ids: HashSet<Uuid> = results
        .iter()
        .map(|(s, body)| {
            assert!(s.is_success(), "{s}: {body}");
            id_of(body)
        })
        .collect();
    assert_eq!(created, 1, "exactly one request creates");
    assert_eq!(ids.len(), 1, "every request returns the same device");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn operators_assign_and_clear_a_device_type() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (_, kind) = app
        .post(
            &format!("/tenants/{tenant}/device-types"),
            json!({ "name": "boiler" }),
        )
        .await;
    let (_, device) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d", "external_id": "e" }),
        )
        .await;
    let path = format!("/tenants/{tenant}/devices/{}", id_of(&device));

    let (status, assigned) = app
        .patch(&path, json!({ "device_type_id": kind["id"] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{assigned}");
    assert_eq!(assigned["device_type_id"], kind["id"]);
    assert_eq!(assigned["name"], "d");
    let (_, read) = app.get(&path).await;
    assert_eq!(read["device_type_id"], kind["id"]);

    let (_, renamed) = app
        .patch(
            &path,
            json!({ "name": "Boiler 1", "status": "maintenance" }),
        )
        .await;
    assert_eq!(
        renamed["device_type_id"], kind["id"],
        "absent fields are kept"
    );
    assert_eq!(renamed["status"], "maintenance");

    let (_, cleared) = app.patch(&path, json!({ "device_type_id": null })).await;
    assert_eq!(cleared["device_type_id"], Value::Null);
}

#[tokio::test]
async fn patch_with_another_tenants_or_a_missing_id_is_422_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let mine = app.tenant("mine").await;
    let theirs = app.tenant("theirs").await;
    let (_, device) = app
        .post(&format!("/tenants/{mine}/devices"), json!({ "name": "d" }))
        .await;
    let path = format!("/tenants/{mine}/devices/{}", id_of(&device));
    let mut foreign = serde_json::Map::new();
    for (field, resource) in [
        ("device_type_id", "device-types"),
        ("organization_id", "organizations"),
        ("site_id", "sites"),
        ("device_group_id", "device-groups"),
    ] {
        let (_, row) = app
            .post(
                &format!("/tenants/{theirs}/{resource}"),
                json!({ "name": "x" }),
            )
            .await;
        foreign.insert(field.to_owned(), row["id"].clone());
        for id in [row["id"].clone(), json!(Uuid::now_v7())] {
            let (status, body) = app.patch(&path, json!({ field: id })).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
            assert_eq!(error_code(&body), "invalid_reference");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(field)),
                "{body}"
            );
        }
    }
    let mut create = foreign.clone();
    create.insert("name".into(), json!("d2"));
    let (status, _) = app
        .post(&format!("/tenants/{mine}/devices"), Value::Object(create))
        .await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "create refuses foreign references too"
    );
    let (_, unchanged) = app.get(&path).await;
    assert_eq!(unchanged, device);
}

#[tokio::test]
async fn device_paths_of_another_tenant_are_404() {
    let app = TestApp::spawn().await;
    let mine = app.tenant("mine").await;
    let theirs = app.tenant("theirs").await;
    let (_, device) = app
        .post(&format!("/tenants/{mine}/devices"), json!({ "name": "d" }))
        .await;
    let foreign = format!("/tenants/{theirs}/devices/{}", id_of(&device));
    assert_eq!(app.get(&foreign).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        app.patch(&foreign, json!({ "name": "stolen" })).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.delete(&foreign).await, StatusCode::NOT_FOUND);
    let (_, mine_still) = app
        .get(&format!("/tenants/{mine}/devices/{}", id_of(&device)))
        .await;
    assert_eq!(mine_still["name"], "d");
}

#[tokio::test]
async fn delete_device_removes_it() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (_, device) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d", "external_id": "e" }),
        )
        .await;
    let path = format!("/tenants/{tenant}/devices/{}", id_of(&device));
    assert_eq!(app.delete(&path).await, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&path).await.0, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d", "external_id": "e" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "the external id is free again");
}

/// The rollup follower writes a device's rollup rows and then checks the device (a foreign key);
/// a delete locks the device and then its rollup rows. Played out by hand here as the follower
/// does it (its turn to write taken first): the delete waits for the follower's turn before it
/// locks anything (migration 019), so the follower's check goes through, and then the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_waits_for_the_rollup_follower_instead_of_deadlocking_with_it() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (_, device) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d" }),
        )
        .await;
    let device = id_of(&device);
    sqlx::query(
        "INSERT INTO telemetry_rollup_1m (device_id, metric, bucket, count, min, max, sum, first, first_ts, last, last_ts)
         VALUES ($1, 'm', TIMESTAMPTZ '2026-11-24 00:00:00+00', 1, 1, 1, 1, 1, TIMESTAMPTZ '2026-11-24 00:00:00+00', 1, TIMESTAMPTZ '2026-11-24 00:00:00+00')",
    )
    .bind(device)
    .execute(&app.pool)
    .await
    .expect("a rollup row");
    // As the follower: its turn to write, then the rollup row.
    let mut follower = app.pool.begin().await.expect("begin");
    rollups::take_turn_to_write(&mut follower)
        .await
        .expect("the follower's turn");
    sqlx::query("SELECT 1 FROM telemetry_rollup_1m WHERE device_id = $1 FOR UPDATE")
        .bind(device)
        .execute(&mut *follower)
        .await
        .expect("the rollup row");
    let path = format!("/tenants/{tenant}/devices/{device}");
    let delete = {
        let request = gito_testkit::admin_client().delete(app.api.url(&path));
        tokio::spawn(async move { request.send().await.expect("request sent").status() })
    };
    gito_testkit::wait_for(
        std::time::Duration::from_secs(10),
        "the delete waiting for its turn",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND wait_event = 'advisory' AND query LIKE 'DELETE FROM devices%'",
            )
            .fetch_one(&app.pool)
            .await
            .expect("activity")
                > 0
        },
    )
    .await;
    // Then the device, as the follower's foreign key check would: nothing holds it.
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *follower)
        .await
        .expect("set");
    sqlx::query("SELECT 1 FROM devices WHERE id = $1 FOR KEY SHARE")
        .bind(device)
        .execute(&mut *follower)
        .await
        .expect("the delete locked nothing while it waited");
    follower.commit().await.expect("commit");
    assert_eq!(delete.await.expect("task"), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get(&format!("/tenants/{tenant}/devices/{device}"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM telemetry_rollup_1m WHERE device_id = $1")
            .bind(device)
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(left, 0, "the rollup row went with the device");
}

#[tokio::test]
async fn device_list_filters_by_type_string_type_id_unassigned_and_external_id() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let base = format!("/tenants/{tenant}/devices");
    let (_, kind) = app
        .post(
            &format!("/tenants/{tenant}/device-types"),
            json!({ "name": "boiler" }),
        )
        .await;
    let (_, a) = app
        .post(
            &base,
            json!({ "name": "a", "external_id": "SDE11/A", "device_type": "SDE11" }),
        )
        .await;
    let (_, b) = app
        .post(
            &base,
            json!({ "name": "b", "external_id": "SDE12/B", "device_type": "SDE12" }),
        )
        .await;
    let (_, c) = app
        .post(&base, json!({ "name": "c", "external_id": "SDE11/C", "device_type": "SDE11", "device_type_id": kind["id"] }))
        .await;
    let ids = |page: &Value| {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(id_of)
            .collect::<Vec<_>>()
    };

    let (_, by_string) = app.get(&format!("{base}?device_type=SDE11")).await;
    assert_eq!(ids(&by_string), vec![id_of(&a), id_of(&c)]);
    let (_, by_id) = app
        .get(&format!("{base}?device_type_id={}", id_of(&kind)))
        .await;
    assert_eq!(ids(&by_id), vec![id_of(&c)]);
    let (_, unassigned) = app.get(&format!("{base}?unassigned=true")).await;
    assert_eq!(ids(&unassigned), vec![id_of(&a), id_of(&b)]);
    let (_, by_external) = app.get(&format!("{base}?external_id=SDE12%2FB")).await;
    assert_eq!(ids(&by_external), vec![id_of(&b)]);
    let (_, combined) = app
        .get(&format!("{base}?device_type=SDE11&unassigned=true"))
        .await;
    assert_eq!(ids(&combined), vec![id_of(&a)]);
    let (status, none) = app.get(&format!("{base}?external_id=nope")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["items"], json!([]));
}

#[tokio::test]
async fn device_pages_are_stable_while_devices_are_added() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let base = format!("/tenants/{tenant}/devices");
    let mut expected = Vec::new();
    for i in 0..7 {
        let (_, d) = app.post(&base, json!({ "name": format!("d{i}") })).await;
        expected.push(id_of(&d));
    }
    let (_, first) = app.get(&format!("{base}?limit=3")).await;
    // A device added mid-walk lands after the cursor: it shows up at the end, nothing repeats.
    let (_, late) = app.post(&base, json!({ "name": "late" })).await;
    expected.push(id_of(&late));
    let mut seen: Vec<Uuid> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(id_of)
        .collect();
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (status, page) = app.get(&format!("{base}?limit=3&cursor={c}")).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(page["items"].as_array().expect("items").iter().map(id_of));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn invalid_device_fields_are_422() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let base = format!("/tenants/{tenant}/devices");
    for body in [
        json!({ "external_id": "no name" }),
        json!({ "name": "" }),
        json!({ "name": "d", "external_id": "x".repeat(1025) }),
        json!({ "name": "d", "device_type_id": "not-a-uuid" }),
        json!({ "name": "d", "external_id": "bad\u{0}id" }),
    ] {
        let (status, response) = app.post(&base, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {response}"
        );
    }
    let (_, device) = app.post(&base, json!({ "name": "d" })).await;
    let path = format!("{base}/{}", id_of(&device));
    for body in [
        json!({ "status": "exploded" }),
        json!({ "external_id": "cannot change" }),
    ] {
        let (status, response) = app.patch(&path, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} -> {response}"
        );
    }
}

#[tokio::test]
async fn a_null_for_a_field_that_cannot_be_cleared_is_422_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (_, device) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "Boiler", "external_id": "SDE11/B" }),
        )
        .await;
    let path = format!("/tenants/{tenant}/devices/{}", id_of(&device));
    for body in [json!({ "name": null }), json!({ "status": null })] {
        let (status, error) = app.patch(&path, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("null is not allowed here: leave the field out to keep its value"),
            "{message}"
        );
    }
    let (_, now) = app.get(&path).await;
    assert_eq!(
        (now["name"].clone(), now["status"].clone()),
        (json!("Boiler"), json!("active"))
    );
    // Fields that can be cleared still take null.
    let (status, cleared) = app.patch(&path, json!({ "device_type": null })).await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
}

#[tokio::test]
async fn a_plus_that_a_url_turned_into_a_space_is_read_back_and_a_bad_time_says_how_to_write_one() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (_, device) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "Boiler", "external_id": "SDE11/B" }),
        )
        .await;
    let base = format!("/tenants/{tenant}/devices/{}/telemetry", id_of(&device));
    // Written as a user would type it: the `+` arrives as a space.
    for query in [
        "from=2026-12-02T15:25:00+00:00",
        "from=2026-12-02T15:25:00%2B01:00",
        "from=2026-12-02T15:25:00Z",
    ] {
        let (status, body) = app.get(&format!("{base}?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
    }
    let (status, body) = app.get(&format!("{base}?from=2026-12-02+15:25:00")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"]["message"],
        "from must be an RFC 3339 time such as 2026-12-02T15:25:00Z or 2026-12-02T15:25:00%2B01:00 (a \"+\" in a URL must be written %2B)"
    );
}
