//! The batch create of devices (`POST /tenants/{tenant_id}/devices/batch`): request order,
//! idempotence, races, classification, tokens, isolation and every bad input.

use std::collections::{HashMap, HashSet};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, error_code, id_of};

fn batch(tenant: Uuid) -> String {
    format!("/tenants/{tenant}/devices/batch")
}

fn items(external_ids: &[String]) -> Value {
    json!({ "devices": external_ids.iter().map(|e| json!({ "external_id": e })).collect::<Vec<_>>() })
}

fn paths(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}/{i:04}")).collect()
}

/// The answer's devices, checked to be one per requested external_id in request order.
#[track_caller]
fn answered<'a>(status: StatusCode, body: &'a Value, asked: &[String]) -> &'a Vec<Value> {
    assert_eq!(status, StatusCode::OK, "{body}");
    let devices = body["devices"].as_array().expect("devices array");
    let got: Vec<&str> = devices
        .iter()
        .map(|d| d["external_id"].as_str().expect("external_id"))
        .collect();
    assert_eq!(got, asked, "one answer per item, in request order");
    devices
}

async fn device_count(app: &TestApp, tenant: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM devices WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

async fn device_type(app: &TestApp, tenant: Uuid, name: &str) -> Uuid {
    let (status, made) = app
        .post(
            &format!("/tenants/{tenant}/device-types"),
            json!({ "name": name }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    id_of(&made)
}

#[tokio::test]
async fn batch_creates_then_finds_the_same_devices_in_request_order() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    // One device exists already, made by the single create.
    let (status, known) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "known one", "external_id": "plant/b" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let asked: Vec<String> = ["plant/c", "plant/b", "plant/a"].map(String::from).to_vec();
    let body = json!({ "devices": [
        { "external_id": "plant/c", "name": "Boiler C", "device_type": "SDE11" },
        { "external_id": "plant/b", "name": "ignored" },
        { "external_id": "plant/a" },
    ]});
    let (status, first) = app.post(&batch(tenant), body.clone()).await;
    let devices = answered(status, &first, &asked);
    let created: Vec<&Value> = devices.iter().map(|d| &d["created"]).collect();
    assert_eq!(created, [&json!(true), &json!(false), &json!(true)]);
    assert_eq!(devices[0]["name"], "Boiler C");
    assert_eq!(devices[0]["device_type"], "SDE11");
    assert_eq!(devices[0]["connectivity"], "offline");
    assert_eq!(devices[0]["tenant_id"], tenant.to_string());
    assert_eq!(devices[1]["id"], known["id"], "the existing device");
    assert_eq!(devices[1]["name"], "known one", "returned unchanged");
    assert_eq!(
        devices[2]["name"], "plant/a",
        "name defaults to the external_id"
    );
    // Each answered device is the stored one: the same JSON as a GET, plus `created`.
    for device in devices {
        let (status, read) = app
            .get(&format!("/tenants/{tenant}/devices/{}", id_of(device)))
            .await;
        assert_eq!(status, StatusCode::OK);
        let mut without = device.clone();
        without.as_object_mut().expect("object").remove("created");
        assert_eq!(read, without);
    }

    // The same batch again: the same ids, none created, nothing new stored.
    let (status, second) = app.post(&batch(tenant), body).await;
    let again = answered(status, &second, &asked);
    for (a, b) in devices.iter().zip(again) {
        assert_eq!(a["id"], b["id"]);
        assert_eq!(b["created"], false);
    }
    assert_eq!(device_count(&app, tenant).await, 3);
}

#[tokio::test]
async fn batch_is_in_the_openapi_document() {
    let app = TestApp::spawn().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let operation = &doc["paths"]["/tenants/{tenant_id}/devices/batch"]["post"];
    assert_eq!(operation["operationId"], "create_batch", "{operation}");
    assert_eq!(operation["tags"], json!(["devices"]));
}

#[tokio::test]
async fn batch_answers_admin_and_its_own_tenant_and_404_to_another_tenants_token() {
    let app = TestApp::spawn().await;
    let (mine, theirs) = (app.tenant("mine").await, app.tenant("theirs").await);
    let my_token = app.token_for(mine).await;
    let their_token = app.token_for(theirs).await;
    let asked = vec!["a/1".to_owned()];

    let (status, body) = app
        .send_as(
            Some(&my_token),
            Method::POST,
            &batch(mine),
            Some(items(&asked)),
        )
        .await;
    assert_eq!(answered(status, &body, &asked)[0]["created"], true);
    let (status, body) = app.post(&batch(mine), items(&asked)).await;
    assert_eq!(
        answered(status, &body, &asked)[0]["created"],
        false,
        "admin"
    );

    let (status, body) = app
        .send_as(
            Some(&their_token),
            Method::POST,
            &batch(mine),
            Some(items(&["a/2".to_owned()])),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    error_code(&body);
    let (status, body) = app
        .send_as(
            None,
            Method::POST,
            &batch(mine),
            Some(items(&["a/2".to_owned()])),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = app
        .send_as(
            Some("not-a-token"),
            Method::POST,
            &batch(mine),
            Some(items(&["a/2".to_owned()])),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // A tenant that does not exist, as the admin.
    let (status, body) = app.post(&batch(Uuid::now_v7()), items(&asked)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(device_count(&app, mine).await, 1, "nobody else created a/2");
}

#[tokio::test]
async fn batch_devices_of_one_tenant_are_not_another_tenants() {
    let app = TestApp::spawn().await;
    let (mine, theirs) = (app.tenant("mine").await, app.tenant("theirs").await);
    let asked = paths("shared", 3);
    let (status, body) = app.post(&batch(mine), items(&asked)).await;
    let my_ids: HashSet<Value> = answered(status, &body, &asked)
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    let (status, body) = app.post(&batch(theirs), items(&asked)).await;
    for device in answered(status, &body, &asked) {
        assert_eq!(
            device["created"], true,
            "the same path is another device there"
        );
        assert_eq!(device["tenant_id"], theirs.to_string());
        assert!(!my_ids.contains(&device["id"]));
    }
}

#[tokio::test]
async fn batch_refuses_an_empty_or_oversized_batch_with_422_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (status, body) = app.post(&batch(tenant), json!({ "devices": [] })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "invalid_field");

    // 1001 short paths fit the test server's 64 KiB body limit: the count refuses them.
    let (status, body) = app.post(&batch(tenant), items(&paths("p", 1001))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "invalid_field");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("1000"),
        "{body}"
    );
    assert_eq!(device_count(&app, tenant).await, 0);

    // 1000 is allowed.
    let asked = paths("p", 1000);
    let (status, body) = app.post(&batch(tenant), items(&asked)).await;
    assert!(
        answered(status, &body, &asked)
            .iter()
            .all(|d| d["created"] == true)
    );
    assert_eq!(device_count(&app, tenant).await, 1000);

    // A body over the body limit is 413 before its count is looked at.
    let long: Vec<String> = (0..100)
        .map(|i| format!("{i}/{}", "x".repeat(1000)))
        .collect();
    let (status, body) = app.post(&batch(tenant), items(&long)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    error_code(&body);
}

#[tokio::test]
async fn batch_checks_each_item_like_the_single_create_and_one_bad_item_creates_nothing() {
    let app = TestApp::spawn().await;
    let (mine, theirs) = (app.tenant("mine").await, app.tenant("theirs").await);
    let their_kind = device_type(&app, theirs, "boiler").await;
    let cases = [
        (json!({ "external_id": " padded" }), "invalid_field"),
        (json!({ "external_id": "" }), "invalid_field"),
        (json!({ "external_id": "x".repeat(1025) }), "invalid_field"),
        (
            json!({ "external_id": "ok/2", "name": "" }),
            "invalid_field",
        ),
        (
            json!({ "external_id": "ok/2", "device_type": "tab\t" }),
            "invalid_field",
        ),
        (
            json!({ "external_id": "ok/2", "device_type_id": their_kind }),
            "invalid_reference",
        ),
        (
            json!({ "external_id": "ok/2", "organization_id": Uuid::now_v7() }),
            "invalid_reference",
        ),
        (
            json!({ "external_id": "ok/2", "site_id": Uuid::now_v7() }),
            "invalid_reference",
        ),
        (
            json!({ "external_id": "ok/2", "device_group_id": Uuid::now_v7() }),
            "invalid_reference",
        ),
    ];
    for (bad, code) in cases {
        let (status, body) = app
            .post(
                &batch(mine),
                json!({ "devices": [{ "external_id": "ok/1" }, bad] }),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(error_code(&body), code, "{bad}");
        if code == "invalid_field" {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.starts_with("devices[1]: "), "{message}");
        }
        // The single create says the same of the same fields.
        let mut single = bad.clone();
        single
            .as_object_mut()
            .unwrap()
            .entry("name")
            .or_insert(json!("n"));
        let (status, body) = app.post(&format!("/tenants/{mine}/devices"), single).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(error_code(&body), code);
    }
    // Missing external_id, an unknown field, a wrong type: the body is refused as a whole.
    for bad in [
        json!({ "name": "no path" }),
        json!({ "external_id": "ok/2", "colour": "red" }),
        json!({ "external_id": 7 }),
    ] {
        let (status, body) = app
            .post(
                &batch(mine),
                json!({ "devices": [{ "external_id": "ok/1" }, bad] }),
            )
            .await;
        assert!(status.is_client_error(), "{bad}: {status} {body}");
        error_code(&body);
    }
    let (status, body) = app.post(&batch(mine), json!({ "devices": "all" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        device_count(&app, mine).await,
        0,
        "no item of a refused batch is created"
    );
}

#[tokio::test]
async fn batch_answers_a_repeated_external_id_with_one_device_created_once() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let body = json!({ "devices": [
        { "external_id": "dup", "name": "first" },
        { "external_id": "other" },
        { "external_id": "dup", "name": "second" },
    ]});
    let asked: Vec<String> = ["dup", "other", "dup"].map(String::from).to_vec();
    let (status, answer) = app.post(&batch(tenant), body).await;
    let devices = answered(status, &answer, &asked);
    assert_eq!(devices[0]["id"], devices[2]["id"]);
    assert_eq!(devices[0]["created"], true);
    assert_eq!(devices[2]["created"], false);
    assert_eq!(
        devices[2]["name"], "first",
        "the first item's fields create it"
    );
    assert_eq!(device_count(&app, tenant).await, 2);
}

#[tokio::test]
async fn two_identical_batches_racing_create_each_device_exactly_once() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    for round in 0..5 {
        // Request orders differ, so the two statements meet the rows in different orders.
        let asked = paths(&format!("race{round}"), 300);
        let reversed: Vec<String> = asked.iter().rev().cloned().collect();
        let (path, forward, backward) = (batch(tenant), items(&asked), items(&reversed));
        let (a, b) = tokio::join!(app.post(&path, forward), app.post(&path, backward));
        let a = answered(a.0, &a.1, &asked);
        let b = answered(b.0, &b.1, &reversed);
        let mut ids: HashMap<String, (Value, usize)> = HashMap::new();
        for device in a.iter().chain(b) {
            let entry = ids
                .entry(device["external_id"].as_str().unwrap().to_owned())
                .or_insert((device["id"].clone(), 0));
            assert_eq!(entry.0, device["id"], "both answers name the same device");
            entry.1 += usize::from(device["created"] == true);
        }
        assert!(
            ids.values().all(|(_, created)| *created == 1),
            "created exactly once"
        );
    }
    assert_eq!(device_count(&app, tenant).await, 1500);
}

#[tokio::test]
async fn batch_created_devices_get_the_best_matching_classification_rule() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let boiler = device_type(&app, tenant, "boiler").await;
    let pump = device_type(&app, tenant, "pump").await;
    let explicit = device_type(&app, tenant, "explicit").await;
    let rules = format!("/tenants/{tenant}/classification-rules");
    for (pattern, kind, priority) in [
        ("SDE11/+/UTILITIES/#", pump, 1),
        ("SDE11/+/UTILITIES/BOILER/+", boiler, 5),
    ] {
        let (status, rule) = app
            .post(
                &rules,
                json!({ "pattern": pattern, "device_type_id": kind, "priority": priority }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{rule}");
    }
    // Known before the rules apply to anything: a found device is not reclassified.
    let (status, old) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "old", "external_id": "SDE11/OLD/UTILITIES/BOILER/X", "device_type_id": explicit }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{old}");
    let asked: Vec<String> = [
        "SDE11/JAX/UTILITIES/BOILER/OPT_G",
        "SDE11/JAX/UTILITIES/PUMP/P1",
        "OTHER/JAX",
        "SDE11/JAX/UTILITIES/BOILER/OPT_H",
        "SDE11/OLD/UTILITIES/BOILER/X",
    ]
    .map(String::from)
    .to_vec();
    let (status, body) = app
        .post(
            &batch(tenant),
            json!({ "devices": [
                { "external_id": asked[0] },
                { "external_id": asked[1] },
                { "external_id": asked[2] },
                { "external_id": asked[3], "device_type_id": explicit },
                { "external_id": asked[4] },
            ]}),
        )
        .await;
    let devices = answered(status, &body, &asked);
    let kinds: Vec<&Value> = devices.iter().map(|d| &d["device_type_id"]).collect();
    let s = |id: Uuid| json!(id.to_string());
    assert_eq!(
        kinds,
        [
            &s(boiler),
            &s(pump),
            &Value::Null,
            &s(explicit),
            &s(explicit)
        ],
        "highest priority wins, no match stays unclassified, the item's own id wins, a found device is unchanged"
    );
}

#[tokio::test]
async fn batch_created_devices_are_announced_on_gito_devices_and_found_ones_are_not() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (status, body) = app.post(&batch(tenant), items(&paths("old", 1))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .expect("listener");
    listener.listen("gito_devices").await.expect("listen");
    let mut asked = paths("old", 1);
    asked.extend(paths("new", 2));
    let (status, body) = app.post(&batch(tenant), items(&asked)).await;
    let devices = answered(status, &body, &asked);
    let expected: HashSet<String> = devices[1..]
        .iter()
        .map(|d| json!({ "op": "changed", "id": d["id"] }).to_string())
        .collect();
    let mut heard = HashSet::new();
    let deadline = std::time::Duration::from_secs(10);
    while heard.len() < expected.len() {
        let note = tokio::time::timeout(deadline, listener.recv())
            .await
            .expect("a notification before the deadline")
            .expect("notification");
        let payload: Value = serde_json::from_str(note.payload()).expect("JSON payload");
        heard.insert(payload.to_string());
    }
    assert_eq!(heard, expected, "the created devices, not the found one");
    // Nothing more: a marker notification sent now is the next one heard.
    sqlx::query("SELECT pg_notify('gito_devices', 'marker')")
        .execute(&app.pool)
        .await
        .expect("marker");
    let next = tokio::time::timeout(deadline, listener.recv())
        .await
        .expect("the marker before the deadline")
        .expect("notification");
    assert_eq!(next.payload(), "marker", "the found device stayed silent");
}
