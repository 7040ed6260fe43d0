//! Devices online/offline, `offline` and `stale` alert rules, with the real processor, Mosquitto
//! and PostgreSQL: a device goes offline after its type's timeout and online with its next
//! message, both pushed over the WebSocket, with an alert that opens and resolves; a tenant that
//! stops publishing raises a staleness alert that resolves when data flows again; two sweepers at
//! once never fire twice, and the counts behind `gito_devices` follow; a device heard in every
//! batch is written at most once a second and never flipped offline early for it; the filter
//! works; bad input is 422.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use gito_testkit::{Broker, TestApi, TestApp, TestDb, publish_all, wait_for};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::helpers::{error_code, id_of};

fn topic(tenant: Uuid, device: Uuid) -> String {
    format!("{tenant}/devices/{device}/telemetry")
}

fn envelope(value: f64) -> Vec<u8> {
    let ts = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    json!({ "ts": ts, "metrics": { "T": value } })
        .to_string()
        .into_bytes()
}

async fn created(api: &TestApi, path: &str, body: Value) -> Value {
    let (status, body) = api.post(path, body).await;
    assert_eq!(status, StatusCode::CREATED, "{path}: {body}");
    body
}

async fn connectivity(api: &TestApi, tenant: Uuid, device: Uuid) -> String {
    let (status, body) = api
        .get(&format!("/tenants/{tenant}/devices/{device}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    body["connectivity"]
        .as_str()
        .expect("connectivity")
        .to_owned()
}

async fn alerts(api: &TestApi, tenant: Uuid, state: &str) -> Vec<Value> {
    api.get(&format!("/tenants/{tenant}/alerts?state={state}"))
        .await
        .1["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads the socket until `want` holds for one event, keeping every event in `seen`.
async fn until(ws: &mut Socket, seen: &mut Vec<Value>, what: &str, want: impl Fn(&Value) -> bool) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let event: Value = serde_json::from_str(&text).expect("json");
                    let hit = want(&event);
                    seen.push(event);
                    if hit {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {what} over the socket: {seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_goes_offline_after_its_types_timeout_and_online_with_its_next_message_pushed_live_with_an_alert()
 {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let api = TestApi::start_processing(&db.url, &broker.url()).await;
    let tenant = api.tenant("t").await;
    let devices = format!("/tenants/{tenant}/devices");
    let kind = created(
        &api,
        &format!("/tenants/{tenant}/device-types"),
        json!({ "name": "beacon", "offline_after_secs": 2 }),
    )
    .await;
    assert_eq!(kind["offline_after_secs"], 2);
    let device = id_of(
        &created(
            &api,
            &devices,
            json!({ "name": "d", "external_id": "B/1", "device_type_id": kind["id"] }),
        )
        .await,
    );
    // Another device of the tenant, never heard from: offline, and it raises no alert.
    let silent = id_of(&created(&api, &devices, json!({ "name": "quiet" })).await);
    assert_eq!(connectivity(&api, tenant, device).await, "offline");
    let rule = created(
        &api,
        &format!("/tenants/{tenant}/alert-rules"),
        json!({ "name": "gone", "kind": "offline", "after_secs": 1 }),
    )
    .await;
    assert_eq!(
        (&rule["kind"], &rule["after_secs"], &rule["metric"]),
        (&json!("offline"), &json!(1), &Value::Null)
    );

    let token = api.token_for(tenant).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/tenants/{tenant}/ws?token={token}",
        api.addr
    ))
    .await
    .expect("websocket");
    // The fan-out subscribes asynchronously: publish until a message comes through.
    let mut seen = Vec::new();
    let mut last_published = Instant::now();
    let probe = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            last_published = Instant::now();
            publish_all(&broker.url(), vec![(topic(tenant, device), envelope(1.0))]).await;
            if let Ok(Some(Ok(Message::Text(text)))) =
                tokio::time::timeout(Duration::from_millis(300), ws.next()).await
            {
                seen.push(serde_json::from_str::<Value>(&text).expect("json"));
                return;
            }
        }
    })
    .await;
    assert!(probe.is_ok(), "no live event within 15 s");
    wait_for(Duration::from_secs(10), "online", || async {
        connectivity(&api, tenant, device).await == "online"
    })
    .await;

    let is = |kind: &'static str, state: &'static str| {
        move |e: &Value| {
            e["type"] == "connectivity" && e["connectivity"] == state && e["device_id"] == kind
        }
    };
    let device_str: &'static str = Box::leak(device.to_string().into_boxed_str());
    until(
        &mut ws,
        &mut seen,
        "offline event",
        is(device_str, "offline"),
    )
    .await;
    assert!(
        last_published.elapsed() >= Duration::from_secs(2),
        "offline only once its type's 2 s passed without a message"
    );
    assert_eq!(connectivity(&api, tenant, device).await, "offline");
    until(&mut ws, &mut seen, "opened alert", |e| {
        e["type"] == "alert" && e["event"] == "opened"
    })
    .await;
    let open = alerts(&api, tenant, "open").await;
    assert_eq!(
        open.len(),
        1,
        "one alert, none for the device never heard: {open:#?}"
    );
    assert_eq!(
        (&open[0]["device_id"], &open[0]["rule_id"]),
        (&json!(device), &rule["id"])
    );
    assert!(open[0]["value"].as_f64().expect("seconds offline") >= 1.0);

    // The filter, with the tenant's own token.
    let ids = |body: Value| -> Vec<String> {
        body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|d| d["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let (status, offline) = api
        .get_as(&token, &format!("{devices}?connectivity=offline"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(offline), [device.to_string(), silent.to_string()]);

    publish_all(&broker.url(), vec![(topic(tenant, device), envelope(2.0))]).await;
    until(&mut ws, &mut seen, "online event", is(device_str, "online")).await;
    until(&mut ws, &mut seen, "resolved alert", |e| {
        e["type"] == "alert" && e["event"] == "resolved"
    })
    .await;
    assert_eq!(connectivity(&api, tenant, device).await, "online");
    let (_, online) = api
        .get_as(&token, &format!("{devices}?connectivity=online"))
        .await;
    assert_eq!(ids(online), [device.to_string()]);
    let resolved = alerts(&api, tenant, "resolved").await;
    assert_eq!(resolved.len(), 1);
    assert!(alerts(&api, tenant, "open").await.is_empty());

    // In order: offline, opened, online, resolved; exactly once each.
    let changes: Vec<String> = seen
        .iter()
        .filter_map(|e| match e["type"].as_str() {
            Some("connectivity") => Some(e["connectivity"].as_str()?.to_owned()),
            Some("alert") => Some(e["event"].as_str()?.to_owned()),
            _ => None,
        })
        .collect();
    let from = changes
        .iter()
        .position(|c| c == "offline")
        .expect("offline");
    assert_eq!(changes[from..], ["offline", "opened", "online", "resolved"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_rule_opens_when_the_tenant_stops_publishing_and_resolves_when_it_resumes() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let api = TestApi::start_processing(&db.url, &broker.url()).await;
    let tenant = api.tenant("t").await;
    let device = id_of(
        &created(
            &api,
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d" }),
        )
        .await,
    );
    let rule = created(
        &api,
        &format!("/tenants/{tenant}/alert-rules"),
        json!({ "name": "pipeline dead", "kind": "stale", "after_secs": 3 }),
    )
    .await;
    // Publishing keeps it quiet...
    let started = Instant::now();
    let mut last_published = started;
    while started.elapsed() < Duration::from_secs(5) {
        last_published = Instant::now();
        publish_all(&broker.url(), vec![(topic(tenant, device), envelope(1.0))]).await;
        assert!(
            alerts(&api, tenant, "open").await.is_empty(),
            "no alert while data flows"
        );
        tokio::time::sleep(Duration::from_millis(500)).await; // the publishing rate, not a wait
    }
    // ...and stopping it opens the tenant's alert (no device).
    wait_for(Duration::from_secs(20), "a staleness alert", || async {
        alerts(&api, tenant, "open").await.len() == 1
    })
    .await;
    // The tenant's time is written at most once a second: 3 s less up to 1 s.
    assert!(
        last_published.elapsed() >= Duration::from_secs(2),
        "not before the rule's 3 s"
    );
    let open = alerts(&api, tenant, "open").await.remove(0);
    assert_eq!(
        (&open["rule_id"], &open["device_id"]),
        (&rule["id"], &Value::Null)
    );
    assert!(open["value"].as_f64().expect("seconds") >= 3.0);

    publish_all(&broker.url(), vec![(topic(tenant, device), envelope(2.0))]).await;
    wait_for(
        Duration::from_secs(20),
        "the staleness alert resolved",
        || async { alerts(&api, tenant, "resolved").await.len() == 1 },
    )
    .await;
    assert!(alerts(&api, tenant, "open").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweepers_at_once_flip_each_device_and_open_each_alert_exactly_once() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    created(
        &app,
        &format!("/tenants/{tenant}/alert-rules"),
        json!({ "name": "gone", "kind": "offline", "after_secs": 1 }),
    )
    .await;
    // 300 devices last heard an hour ago, due for a look.
    let devices: Vec<Uuid> = (0..300).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO devices (id, tenant_id, name) SELECT id, $2, 'd' FROM UNNEST($1::uuid[]) AS id",
    )
    .bind(&devices)
    .bind(tenant)
    .execute(&app.pool)
    .await
    .expect("devices");
    sqlx::query(
        "INSERT INTO device_connectivity (device_id, last_heard_at, check_at)
         SELECT id, now() - interval '1 hour', now() - interval '1 minute' FROM UNNEST($1::uuid[]) AS id",
    )
    .bind(&devices)
    .execute(&app.pool)
    .await
    .expect("connectivity");

    let counts = |online, offline| gito_api::sweeper::DeviceCounts { online, offline };
    let before = gito_api::sweeper::device_counts(&app.pool)
        .await
        .expect("counts");
    assert_eq!(before, counts(300, 0), "online until swept");

    let mut offline = Vec::new();
    let mut opened = Vec::new();
    let mut skipped = 0;
    let started = Instant::now();
    // Rounds of two sweeps at once, until the alerts (due 1 s after going offline) are open.
    while started.elapsed() < Duration::from_secs(20) && opened.len() < devices.len() {
        let (a, b) = tokio::join!(
            gito_api::sweeper::sweep(&app.pool, 600.0),
            gito_api::sweeper::sweep(&app.pool, 600.0)
        );
        for events in [a.expect("sweep"), b.expect("sweep")] {
            let Some(events) = events else {
                skipped += 1;
                continue;
            };
            for event in events {
                let event: Value = serde_json::from_str(&event.to_json()).expect("json");
                match event["type"].as_str() {
                    Some("connectivity") => offline.push(event["device_id"].clone()),
                    Some("alert") => opened.push(event["alert"]["device_id"].clone()),
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // the tick, not a wait
    }
    let unique = |v: &[Value]| v.iter().map(Value::to_string).collect::<HashSet<_>>().len();
    assert_eq!(
        (offline.len(), unique(&offline)),
        (300, 300),
        "each device offline once"
    );
    assert_eq!(
        (opened.len(), unique(&opened)),
        (300, 300),
        "each alert opened once"
    );
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM alerts WHERE state = 'open'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(count, 300);
    let after = gito_api::sweeper::device_counts(&app.pool)
        .await
        .expect("counts");
    assert_eq!(after, counts(0, 300), "what gito_devices reports");
    // Both ran at once many times; one of them stood aside at least sometimes.
    assert!(
        skipped > 0,
        "the advisory lock let only one sweep at a time"
    );
}

/// The device's stored rows, and its connectivity row's version (xmin) and last_heard_at.
async fn heard_row(
    pool: &sqlx::PgPool,
    device: Uuid,
) -> (i64, Option<String>, Option<time::OffsetDateTime>) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM telemetry WHERE device_id = $1),
                (SELECT xmin::text FROM device_connectivity WHERE device_id = $1),
                (SELECT last_heard_at FROM device_connectivity WHERE device_id = $1)",
    )
    .bind(device)
    .fetch_one(pool)
    .await
    .expect("connectivity row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_heard_again_within_a_second_costs_no_write_of_its_connectivity_row() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let api = TestApi::start_processing(&db.url, &broker.url()).await;
    let tenant = api.tenant("t").await;
    let device = id_of(
        &created(
            &api,
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d" }),
        )
        .await,
    );
    let pool = sqlx::PgPool::connect(&db.url).await.expect("pool");
    // Publishes one message and waits until it is stored (a batch of its own); then the
    // device's connectivity row: its version (xmin) and last_heard_at.
    let after = async |value: f64, stored: i64| -> (String, time::OffsetDateTime) {
        publish_all(
            &broker.url(),
            vec![(topic(tenant, device), envelope(value))],
        )
        .await;
        wait_for(Duration::from_secs(10), "the message stored", || async {
            heard_row(&pool, device).await.0 == stored
        })
        .await;
        match heard_row(&pool, device).await {
            (_, Some(version), Some(heard)) => (version, heard),
            other => panic!("no connectivity row: {other:?}"),
        }
    };
    let (first_version, first_heard) = after(1.0, 1).await;
    let (second_version, second_heard) = after(2.0, 2).await;
    // Written again only if a second had passed: the processor never rewrites the row for a
    // message that came sooner (the sweeper allows for that lag, see the next test).
    assert!(
        second_version == first_version && second_heard == first_heard
            || second_heard - first_heard >= time::Duration::seconds(1),
        "row rewritten {} after the last write",
        second_heard - first_heard
    );
}

#[tokio::test]
async fn the_sweeper_allows_for_last_heard_at_lagging_a_second_behind_and_never_flips_early() {
    // No API: its own sweeper would take turns with this one.
    let db = TestDb::migrated().await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("pool");
    let tenant = Uuid::now_v7();
    let devices: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 't')")
        .bind(tenant)
        .execute(&pool)
        .await
        .expect("tenant");
    sqlx::query(
        "INSERT INTO devices (id, tenant_id, name) SELECT id, $2, 'd' FROM UNNEST($1::uuid[]) AS id",
    )
    .bind(&devices)
    .bind(tenant)
    .execute(&pool)
    .await
    .expect("devices");
    // A timeout of 2 s: the first device last written 2.2 s ago (its last message may have come
    // up to a second later, unwritten), the second 3.8 s ago; both due for a look.
    sqlx::query(
        "INSERT INTO device_connectivity (device_id, last_heard_at, check_at)
         SELECT id, now() - make_interval(secs => ago), now() - interval '1 minute'
         FROM UNNEST($1::uuid[], $2::float8[]) AS v(id, ago)",
    )
    .bind(&devices)
    .bind([2.2, 3.8])
    .execute(&pool)
    .await
    .expect("connectivity");
    let events = gito_api::sweeper::sweep(&pool, 2.0)
        .await
        .expect("sweep")
        .expect("the only sweeper");
    let flipped: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.to_json()).expect("json")["device_id"].clone())
        .collect();
    assert_eq!(
        flipped,
        [json!(devices[1])],
        "only the device silent past timeout + 1 s"
    );
    let (rearmed,): (f64,) = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM check_at - last_heard_at)::float8 FROM device_connectivity
         WHERE device_id = $1",
    )
    .bind(devices[0])
    .fetch_one(&pool)
    .await
    .expect("check_at");
    assert_eq!(rearmed, 3.0, "re-armed for last heard + timeout + 1 s");
}

#[tokio::test]
async fn bad_timeouts_kinds_and_filters_are_refused_precisely() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let types = format!("/tenants/{tenant}/device-types");
    for bad in [
        json!(0),
        json!(-5),
        json!(2_592_001),
        json!(1.5),
        json!("10m"),
    ] {
        let (status, body) = app
            .post(&types, json!({ "name": "x", "offline_after_secs": bad }))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }
    let kind = created(&app, &types, json!({ "name": "t" })).await;
    assert_eq!(
        kind["offline_after_secs"],
        Value::Null,
        "the default applies"
    );
    let one = format!("{types}/{}", kind["id"].as_str().expect("id"));
    let (status, _) = app.patch(&one, json!({ "offline_after_secs": 0 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = app.patch(&one, json!({ "offline_after_secs": 90 })).await;
    assert_eq!(
        (status, &body["offline_after_secs"]),
        (StatusCode::OK, &json!(90))
    );
    let (status, body) = app.patch(&one, json!({ "offline_after_secs": null })).await;
    assert_eq!(
        (status, &body["offline_after_secs"]),
        (StatusCode::OK, &Value::Null)
    );

    let rules = format!("/tenants/{tenant}/alert-rules");
    for bad in [
        json!({ "name": "x", "kind": "sideways", "after_secs": 5 }),
        json!({ "name": "x", "kind": "offline" }),
        json!({ "name": "x", "kind": "offline", "after_secs": 0 }),
        json!({ "name": "x", "kind": "offline", "after_secs": -1 }),
        json!({ "name": "x", "kind": "stale", "after_secs": 2_592_001 }),
        json!({ "name": "x", "kind": "offline", "after_secs": 5, "metric": "T" }),
        json!({ "name": "x", "kind": "stale", "after_secs": 5, "device_type": "SDE11" }),
        json!({ "name": "x", "metric": "T", "operator": ">", "threshold": 1.0, "after_secs": 5 }),
        json!({ "name": "x", "metric": "T" }),
    ] {
        let (status, body) = app.post(&rules, bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(error_code(&body), "invalid_field", "{bad}: {body}");
    }
    let metric = created(
        &app,
        &rules,
        json!({ "name": "hot", "metric": "T", "operator": ">", "threshold": 1.0 }),
    )
    .await;
    assert_eq!(
        (&metric["kind"], &metric["after_secs"]),
        (&json!("metric"), &Value::Null)
    );
    let offline = created(
        &app,
        &rules,
        json!({ "name": "gone", "kind": "offline", "after_secs": 60 }),
    )
    .await;
    let (status, _) = app
        .patch(
            &format!("{rules}/{}", id_of(&metric)),
            json!({ "after_secs": 5 }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .patch(
            &format!("{rules}/{}", id_of(&offline)),
            json!({ "threshold": 5.0 }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = app
        .patch(
            &format!("{rules}/{}", id_of(&offline)),
            json!({ "after_secs": 120 }),
        )
        .await;
    assert_eq!((status, &body["after_secs"]), (StatusCode::OK, &json!(120)));
    let (status, _) = app
        .patch(
            &format!("{rules}/{}", Uuid::now_v7()),
            json!({ "after_secs": 120 }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The filter: a bad value is 400 like every bad query; another tenant's token is 404.
    let devices = format!("/tenants/{tenant}/devices");
    let (status, body) = app.get(&format!("{devices}?connectivity=sideways")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let other = app.tenant("other").await;
    let foreign = app.token_for(other).await;
    let (status, _) = app
        .send_as(
            Some(&foreign),
            Method::GET,
            &format!("{devices}?connectivity=offline"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get(&format!("{devices}?connectivity=online")).await;
    assert_eq!(
        (status, body["items"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
}

#[tokio::test]
async fn downgrading_010_refuses_while_offline_or_stale_rules_exist_and_changes_nothing() {
    use gito_api::migrate::{self, Catalog, DownTarget};

    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let rule = created(
        &app,
        &format!("/tenants/{tenant}/alert-rules"),
        json!({ "name": "dead", "kind": "stale", "after_secs": 60 }),
    )
    .await;
    // 010 at head: the migrations after it (which know nothing of these rules) reverted first.
    migrate::down(&app.db_url, Catalog::embedded(), DownTarget::To(Some(10)))
        .await
        .expect("down to 010");
    let error = migrate::down(&app.db_url, Catalog::embedded(), DownTarget::Steps(1))
        .await
        .expect_err("must refuse");
    assert!(
        error
            .to_string()
            .contains("cannot downgrade: 1 alert rule(s) of kind offline or stale exist"),
        "{error}"
    );
    let (status, _) = app
        .get(&format!("/tenants/{tenant}/alert-rules/{}", id_of(&rule)))
        .await;
    assert_eq!(status, StatusCode::OK, "nothing deleted");

    assert_eq!(
        app.delete(&format!("/tenants/{tenant}/alert-rules/{}", id_of(&rule)))
            .await,
        StatusCode::NO_CONTENT
    );
    let reverted = migrate::down(&app.db_url, Catalog::embedded(), DownTarget::Steps(1))
        .await
        .expect("down once the rules are gone");
    assert_eq!(reverted[0].name, "010_device_connectivity");
}
