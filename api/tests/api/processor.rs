//! The processor with a real Mosquitto: envelopes become rows, bad ones are dropped, alerts open
//! and resolve, WebSocket clients see their tenant only, and nothing is lost or doubled when a
//! processor is killed or two share the stream.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use gito_testkit::{Broker, TestApi, TestDb, publish_all, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::helpers::{ApiProcess, id_of};

/// The API with its processor on a fresh database and broker, and an HTTP client.
struct Stack {
    api: TestApi,
    db: TestDb,
    broker: Broker,
    http: reqwest::Client,
}

impl Stack {
    async fn start() -> Stack {
        let db = TestDb::migrated().await;
        let broker = Broker::start().await;
        let api = TestApi::start_processing(&db.url, &broker.url()).await;
        Stack {
            api,
            db,
            broker,
            http: gito_testkit::admin_client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.url(""))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("request");
        (
            response.status(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn tenant_and_device(&self) -> (Uuid, Uuid) {
        let tenant = id_of(&self.post("/tenants", json!({ "name": "t" })).await);
        let device = id_of(
            &self
                .post(
                    &format!("/tenants/{tenant}/devices"),
                    json!({ "name": "d", "external_id": "SDE11/D" }),
                )
                .await,
        );
        (tenant, device)
    }

    async fn rows(&self) -> i64 {
        let mut conn = self.db.connect().await;
        sqlx::query_scalar("SELECT count(*) FROM telemetry")
            .fetch_one(&mut conn)
            .await
            .expect("count")
    }
}

fn topic(tenant: Uuid, device: Uuid) -> String {
    format!("{tenant}/devices/{device}/telemetry")
}

fn envelope(ts: &str, metrics: Value) -> Vec<u8> {
    json!({ "ts": ts, "source_topic": "SDE11/D/x", "metrics": metrics })
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_become_rows_and_come_back_through_the_query_routes() {
    let stack = Stack::start().await;
    let (tenant, device) = stack.tenant_and_device().await;
    publish_all(
        &stack.broker.url(),
        vec![
            (
                topic(tenant, device),
                envelope("2026-11-24T10:00:00Z", json!({ "T": 70.0, "on": true })),
            ),
            (
                topic(tenant, device),
                envelope("2026-11-24T10:00:30Z", json!({ "T": 80.0, "mode": "auto" })),
            ),
            (
                topic(tenant, device),
                envelope("2026-11-24T10:01:10Z", json!({ "T": 90.0 })),
            ),
        ],
    )
    .await;
    wait_for(Duration::from_secs(15), "5 rows", || async {
        stack.rows().await == 5
    })
    .await;

    let base = format!("/tenants/{tenant}/devices/{device}");
    let (status, raw) = stack.get(&format!("{base}/telemetry?metric=T")).await;
    assert_eq!(status, StatusCode::OK);
    let values: Vec<f64> = raw["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["value"].as_f64().expect("number"))
        .collect();
    assert_eq!(values, [90.0, 80.0, 70.0], "newest first");
    let (_, window) = stack
        .get(&format!(
            "{base}/telemetry?from=2026-11-24T10:00:10Z&to=2026-11-24T10:01:00Z"
        ))
        .await;
    assert_eq!(
        window["items"].as_array().map(Vec::len),
        Some(2),
        "{window}"
    );
    let (_, buckets) = stack
        .get(&format!("{base}/telemetry?metric=T&bucket=1m"))
        .await;
    assert_eq!(
        buckets,
        json!({ "source": "1m", "items": [
            { "bucket": "2026-11-24T10:01:00Z", "metric": "T", "avg": 90.0, "min": 90.0, "max": 90.0, "count": 1, "first": 90.0, "last": 90.0 },
            { "bucket": "2026-11-24T10:00:00Z", "metric": "T", "avg": 75.0, "min": 70.0, "max": 80.0, "count": 2, "first": 70.0, "last": 80.0 },
        ]})
    );
    let (_, latest) = stack.get(&format!("{base}/latest")).await;
    assert_eq!(latest["T"]["value"], 90.0);
    assert_eq!(latest["on"]["value"], true);
    assert_eq!(latest["mode"]["value"], "auto");
    assert_eq!(latest["T"]["ts"], "2026-11-24T10:01:10Z");
    let (_, read) = stack.get(&base).await;
    assert_eq!(read["last_seen_at"], "2026-11-24T10:01:10Z");

    let (status, _) = stack
        .get(&format!(
            "/tenants/{}/devices/{device}/telemetry",
            Uuid::now_v7()
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's device");
    for bad in ["bucket=1y", "from=yesterday", "limit=0", "bucket=0s"] {
        assert_eq!(
            stack.get(&format!("{base}/telemetry?{bad}")).await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_devices_other_tenants_and_malformed_envelopes_become_dead_letters_and_duplicates_add_nothing()
 {
    let stack = Stack::start().await;
    let (tenant, device) = stack.tenant_and_device().await;
    let (other_tenant, other_device) = stack.tenant_and_device().await;
    let good = envelope("2026-11-24T10:00:00Z", json!({ "v": 1.0 }));
    publish_all(
        &stack.broker.url(),
        vec![
            (topic(tenant, Uuid::now_v7()), good.clone()),
            (topic(tenant, other_device), good.clone()),
            (topic(other_tenant, device), good.clone()),
            (topic(tenant, device), b"not json".to_vec()),
            (
                topic(tenant, device),
                envelope("2026-11-24T10:00:00Z", json!({})),
            ),
            (topic(tenant, device), good.clone()),
            (topic(tenant, device), good.clone()),
            (
                topic(tenant, device),
                envelope("2026-11-24T10:00:01Z", json!({ "v": 2.0 })),
            ),
        ],
    )
    .await;
    wait_for(Duration::from_secs(15), "the valid rows", || async {
        stack.rows().await >= 2
    })
    .await;
    // Give a wrongly accepted message every chance to show up before counting.
    let (_, latest) = stack
        .get(&format!("/tenants/{tenant}/devices/{device}/latest"))
        .await;
    assert_eq!(latest["v"]["value"], 2.0);
    assert_eq!(
        stack.rows().await,
        2,
        "one row per valid, distinct envelope"
    );
    let (_, theirs) = stack
        .get(&format!(
            "/tenants/{other_tenant}/devices/{other_device}/telemetry"
        ))
        .await;
    assert_eq!(
        theirs["items"],
        json!([]),
        "nothing written into the other tenant"
    );
}

/// New rows are copied, and a copy cannot skip a row stored before: one published again (as a
/// bridge replaying its spool does, without MQTT's DUP flag) fails it, and the processor must then
/// merge the same messages: the row is not stored twice and the message is no dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_published_again_after_it_was_stored_adds_nothing_and_is_no_dead_letter() {
    let stack = Stack::start().await;
    let (tenant, device) = stack.tenant_and_device().await;
    let first = envelope("2026-11-24T10:00:00Z", json!({ "v": 1.0, "w": 2.0 }));
    publish_all(
        &stack.broker.url(),
        vec![(topic(tenant, device), first.clone())],
    )
    .await;
    wait_for(Duration::from_secs(15), "the first rows", || async {
        stack.rows().await == 2
    })
    .await;
    publish_all(
        &stack.broker.url(),
        vec![
            (topic(tenant, device), first),
            (
                topic(tenant, device),
                envelope("2026-11-24T10:00:01Z", json!({ "v": 3.0 })),
            ),
        ],
    )
    .await;
    wait_for(Duration::from_secs(15), "the new row", || async {
        stack.rows().await >= 3
    })
    .await;
    assert_eq!(
        stack.rows().await,
        3,
        "the envelope published again added no row"
    );
    let mut conn = stack.db.connect().await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(
        dead, 0,
        "a row stored before is no reason for a dead letter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_a_device_types_schema_does_not_expect_are_stored_but_flagged() {
    let stack = Stack::start().await;
    let (tenant, device) = stack.tenant_and_device().await;
    let kind = stack
        .post(
            &format!("/tenants/{tenant}/device-types"),
            json!({ "name": "boiler", "telemetry_schema": { "T": { "min": 0, "max": 100 } } }),
        )
        .await;
    let response = stack
        .http
        .patch(stack.url(&format!("/tenants/{tenant}/devices/{device}")))
        .json(&json!({ "device_type_id": kind["id"] }))
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status(), StatusCode::OK);
    publish_all(
        &stack.broker.url(),
        vec![
            (
                topic(tenant, device),
                envelope("2026-11-24T10:00:00Z", json!({ "T": 150.0, "X": 1.0 })),
            ),
            (
                topic(tenant, device),
                envelope("2026-11-24T10:00:01Z", json!({ "T": 50.0 })),
            ),
        ],
    )
    .await;
    wait_for(Duration::from_secs(15), "3 rows", || async {
        stack.rows().await == 3
    })
    .await;
    let (_, points) = stack
        .get(&format!("/tenants/{tenant}/devices/{device}/telemetry"))
        .await;
    let flags: Vec<(String, f64, bool)> = points["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            (
                p["metric"].as_str().expect("metric").to_owned(),
                p["value"].as_f64().expect("value"),
                p["flagged"].as_bool().expect("flag"),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("T".into(), 50.0, false),
            ("T".into(), 150.0, true),
            ("X".into(), 1.0, true)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_opens_once_resolves_can_be_acknowledged_and_reaches_websocket_clients_of_its_tenant_only()
 {
    let stack = Stack::start().await;
    let (tenant, device) = stack.tenant_and_device().await;
    let (other_tenant, other_device) = stack.tenant_and_device().await;
    let rule = stack
        .post(
            &format!("/tenants/{tenant}/alert-rules"),
            json!({ "name": "hot", "metric": "T", "operator": ">", "threshold": 80.0 }),
        )
        .await;
    stack
        .post(
            &format!("/tenants/{other_tenant}/alert-rules"),
            json!({ "name": "hot", "metric": "T", "operator": ">", "threshold": 80.0 }),
        )
        .await;
    // Browsers cannot set headers on a WebSocket: the tenant's token goes in the query.
    let token = gito_testkit::create_tenant_token(&stack.api.url(""), tenant).await;
    let ws_url = format!("ws://{}/tenants/{tenant}/ws?token={token}", stack.api.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("websocket");
    // The fan-out subscribes asynchronously: wait until a probe comes through.
    let mut seen = Vec::new();
    let probe = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            publish_all(
                &stack.broker.url(),
                vec![(
                    topic(tenant, device),
                    envelope("2026-11-24T09:00:00Z", json!({ "T": 10.0 })),
                )],
            )
            .await;
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

    let at = |s: u32| format!("2026-11-24T10:00:{s:02}Z");
    publish_all(
        &stack.broker.url(),
        vec![
            (
                topic(other_tenant, other_device),
                envelope(&at(0), json!({ "T": 99.0 })),
            ),
            (
                topic(tenant, device),
                envelope(&at(1), json!({ "T": 90.0 })),
            ),
            (
                topic(tenant, device),
                envelope(&at(2), json!({ "T": 95.0 })),
            ),
            (
                topic(tenant, device),
                envelope(&at(3), json!({ "T": 70.0 })),
            ),
            (
                topic(tenant, device),
                envelope(&at(4), json!({ "T": 91.0 })),
            ),
            // A late, older value: it must not resolve the alert opened at :04.
            (
                topic(tenant, device),
                envelope(&at(3), json!({ "T": 60.0 })),
            ),
        ],
    )
    .await;
    let alerts_of = |state: &'static str| {
        let stack = &stack;
        async move {
            stack
                .get(&format!("/tenants/{tenant}/alerts?state={state}"))
                .await
                .1["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    wait_for(
        Duration::from_secs(15),
        "one resolved and one open alert",
        || async { alerts_of("resolved").await.len() == 1 && alerts_of("open").await.len() == 1 },
    )
    .await;
    let open = alerts_of("open").await.remove(0);
    assert_eq!(open["value"], 91.0);
    assert_eq!(open["rule_id"], rule["id"]);
    let resolved = alerts_of("resolved").await.remove(0);
    assert_eq!(
        (
            resolved["value"].clone(),
            resolved["opened_at"].clone(),
            resolved["resolved_at"].clone()
        ),
        (json!(90.0), json!(at(1)), json!(at(3)))
    );

    let ack = stack
        .http
        .post(stack.url(&format!(
            "/tenants/{tenant}/alerts/{}/ack",
            open["id"].as_str().expect("id")
        )))
        .send()
        .await
        .expect("ack");
    assert_eq!(ack.status(), StatusCode::OK);
    let acked: Value = ack.json().await.expect("json");
    assert_eq!(acked["state"], "acknowledged");
    assert!(acked["acknowledged_at"].is_string());
    let again = stack
        .http
        .post(stack.url(&format!(
            "/tenants/{tenant}/alerts/{}/ack",
            resolved["id"].as_str().expect("id")
        )))
        .send()
        .await
        .expect("ack");
    assert_eq!(
        again.status(),
        StatusCode::CONFLICT,
        "a resolved alert cannot be acknowledged"
    );
    let foreign = stack
        .http
        .post(stack.url(&format!(
            "/tenants/{other_tenant}/alerts/{}/ack",
            open["id"].as_str().expect("id")
        )))
        .send()
        .await
        .expect("ack");
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);

    // The socket saw this tenant's telemetry and alert events, never the other tenant's.
    let collect = tokio::time::timeout(Duration::from_secs(10), async {
        while seen.iter().filter(|e| e["type"] == "alert").count() < 3 {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    seen.push(serde_json::from_str(&text).expect("json"))
                }
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await;
    assert!(collect.is_ok(), "alert events over the socket: {seen:#?}");
    assert!(
        seen.iter().all(|e| e["tenant_id"] == tenant.to_string()
            || e["alert"]["tenant_id"] == tenant.to_string()),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|e| e["type"] == "telemetry" && e["metrics"]["T"] == 90.0)
    );
    let events: Vec<&str> = seen
        .iter()
        .filter(|e| e["type"] == "alert")
        .map(|e| e["event"].as_str().expect("event"))
        .collect();
    assert_eq!(events, ["opened", "resolved", "opened"]);
    ws.send(Message::Close(None)).await.ok();
}

/// The processor as its own process (`gito-api processor`), as it is scaled out.
fn processor(db_url: &str, broker_url: &str, client_id: &str) -> ApiProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gito-api"));
    command
        .arg("processor")
        .env_clear()
        .env("DATABASE_URL", db_url)
        .env("GITO_MQTT_URL", broker_url)
        .env("GITO_PROCESSOR_CLIENT_ID", client_id)
        .env("GITO_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .kill_on_drop(true);
    ApiProcess::start(command)
}

async fn stream_setup(devices: usize) -> (TestDb, Broker, Uuid, Vec<Uuid>) {
    let db = TestDb::migrated().await;
    let broker = Broker::start_with("max_inflight_messages 1000\n").await;
    let api = TestApi::start(&db.url, "127.0.0.1:0".parse().expect("address")).await;
    let http = gito_testkit::admin_client();
    let tenant: Value = http
        .post(format!("{}/tenants", api.url("")))
        .json(&json!({ "name": "t" }))
        .send()
        .await
        .expect("tenant")
        .json()
        .await
        .expect("json");
    let tenant = id_of(&tenant);
    let mut ids = Vec::new();
    for i in 0..devices {
        let d: Value = http
            .post(format!("{}/tenants/{tenant}/devices", api.url("")))
            .json(&json!({ "name": format!("d{i}") }))
            .send()
            .await
            .expect("device")
            .json()
            .await
            .expect("json");
        ids.push(id_of(&d));
    }
    api.stop().await;
    (db, broker, tenant, ids)
}

fn numbered(tenant: Uuid, devices: &[Uuid], from: usize, to: usize) -> Vec<(String, Vec<u8>)> {
    let base = time::macros::datetime!(2026-11-24 00:00 UTC);
    (from..to)
        .map(|i| {
            let ts = base + time::Duration::milliseconds(i as i64);
            let ts = ts
                .format(&time::format_description::well_known::Rfc3339)
                .expect("format");
            (
                topic(tenant, devices[i % devices.len()]),
                envelope(&ts, json!({ "v": i as f64 })),
            )
        })
        .collect()
}

async fn count_rows(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("SELECT count(*) FROM telemetry")
        .fetch_one(&mut conn)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_messages_are_stored_exactly_once_when_the_processor_is_killed_mid_stream() {
    let (db, broker, tenant, devices) = stream_setup(20).await;
    let mut first = processor(&db.url, &broker.url(), "processor-a");
    wait_for(Duration::from_secs(15), "processor subscribed", || async {
        first.count("processor connected") > 0
    })
    .await;
    let publisher = tokio::spawn({
        let (url, devices) = (broker.url(), devices.clone());
        async move {
            for chunk in 0..10 {
                publish_all(
                    &url,
                    numbered(tenant, &devices, chunk * 5000, (chunk + 1) * 5000),
                )
                .await;
            }
        }
    });
    wait_for(Duration::from_secs(60), "some rows", || async {
        count_rows(&db).await >= 5000
    })
    .await;
    first.child.kill().await.expect("SIGKILL");
    let _restarted = processor(&db.url, &broker.url(), "processor-a");
    publisher.await.expect("publisher");
    wait_for(Duration::from_secs(120), "50,000 rows", || async {
        count_rows(&db).await >= 50_000
    })
    .await;
    let mut conn = db.connect().await;
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT value) FROM telemetry")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(count_rows(&db).await, 50_000, "no duplicate rows");
    assert_eq!(distinct, 50_000, "every message stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_on_the_shared_subscription_store_every_message_exactly_once() {
    let (db, broker, tenant, devices) = stream_setup(10).await;
    let mut a = processor(&db.url, &broker.url(), "processor-a");
    let mut b = processor(&db.url, &broker.url(), "processor-b");
    for p in [&a, &b] {
        wait_for(Duration::from_secs(15), "processor subscribed", || async {
            p.count("processor connected") > 0
        })
        .await;
    }
    publish_all(&broker.url(), numbered(tenant, &devices, 0, 20_000)).await;
    wait_for(Duration::from_secs(120), "20,000 rows", || async {
        count_rows(&db).await >= 20_000
    })
    .await;
    assert_eq!(count_rows(&db).await, 20_000);
    // Both took part: each logs what it did when stopped.
    for p in [&mut a, &mut b] {
        let pid = p.child.id().expect("running").to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill");
        tokio::time::timeout(Duration::from_secs(15), p.child.wait())
            .await
            .expect("stops")
            .expect("exit");
        let stopped = p
            .log_lines()
            .into_iter()
            .find(|l| l.contains("processor stopped"))
            .expect("final counters");
        let v: Value = serde_json::from_str(&stopped).expect("json log");
        let messages: u64 = v["counters"]
            .as_str()
            .and_then(|c| {
                c.split_whitespace()
                    .next()?
                    .strip_prefix("messages=")?
                    .parse()
                    .ok()
            })
            .expect("messages");
        assert!(messages > 0, "each processor took a share: {stopped}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_telemetry_carries_times_to_the_microsecond_and_a_filter_on_an_unknown_device_is_404()
{
    let stack = Stack::start().await;
    let (tenant, device) = stack.tenant_and_device().await;
    let token = gito_testkit::create_tenant_token(&stack.api.url(""), tenant).await;
    let unknown = format!(
        "ws://{}/tenants/{tenant}/ws?device_id={}&token={token}",
        stack.api.addr,
        Uuid::now_v7()
    );
    match tokio_tungstenite::connect_async(&unknown).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::NOT_FOUND);
        }
        other => panic!("expected 404, got {other:?}"),
    }
    let ws_url = format!(
        "ws://{}/tenants/{tenant}/ws?device_id={device}&token={token}",
        stack.api.addr
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("websocket");
    let event = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            publish_all(
                &stack.broker.url(),
                vec![(
                    topic(tenant, device),
                    envelope("2026-11-24T09:00:00.123456789Z", json!({ "T": 10.0 })),
                )],
            )
            .await;
            if let Ok(Some(Ok(Message::Text(text)))) =
                tokio::time::timeout(Duration::from_millis(300), ws.next()).await
            {
                return serde_json::from_str::<Value>(&text).expect("json");
            }
        }
    })
    .await
    .expect("a live event within 15 s");
    assert_eq!(event["type"], "telemetry");
    assert_eq!(event["ts"], "2026-11-24T09:00:00.123456Z");
    // The fan-out reads the broker, not the database: wait for the commit.
    let latest = format!("/tenants/{tenant}/devices/{device}/latest");
    wait_for(Duration::from_secs(15), "the row", || async {
        stack.get(&latest).await.1["T"].is_object()
    })
    .await;
    let (_, stored) = stack.get(&latest).await;
    assert_eq!(stored["T"]["ts"], event["ts"], "REST and WebSocket agree");
}

/// The processor moves `last_seen_at` of every device it hears, batch after batch. Migration 020
/// leaves room on each page of `devices`, so that the new row version stays on its page: a HOT
/// update, which writes no entry into any of the table's indexes. Packed full, as before 020, the
/// rows of this batch would all move to other pages.
#[tokio::test]
async fn moving_last_seen_at_keeps_each_device_row_on_its_page() {
    use gito_api::processor::store;
    use sqlx::Connection as _;

    let db = TestDb::migrated().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let tenant = Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 't')")
        .bind(tenant)
        .execute(&mut conn)
        .await
        .expect("tenant");
    sqlx::query(
        "INSERT INTO devices (id, tenant_id, name, external_id)
         SELECT gen_random_uuid(), $1, 'device ' || i, 'SITE/LINE/D' || i FROM generate_series(1, 400) AS i",
    )
    .bind(tenant)
    .execute(&mut conn)
    .await
    .expect("devices");
    let pages = || {
        sqlx::query_as::<_, (Uuid, i32)>(
            "SELECT id, (ctid::text::point)[0]::int FROM devices ORDER BY ctid",
        )
    };
    let before = pages().fetch_all(&mut conn).await.expect("pages");
    let distinct: std::collections::BTreeSet<i32> = before.iter().map(|(_, p)| *p).collect();
    assert!(
        distinct.len() >= 4,
        "the devices span several pages: {distinct:?}"
    );

    // One batch hears every fourth device, in id order as the processor passes them.
    let mut heard: Vec<Uuid> = before.iter().step_by(4).map(|(id, _)| *id).collect();
    heard.sort();
    let now = time::OffsetDateTime::now_utc();
    store::touch(&mut conn, &heard, &vec![now; heard.len()])
        .await
        .expect("touch");

    let after: std::collections::HashMap<Uuid, i32> = pages()
        .fetch_all(&mut conn)
        .await
        .expect("pages")
        .into_iter()
        .collect();
    let moved: Vec<&Uuid> = before
        .iter()
        .filter(|(id, page)| after[id] != *page)
        .map(|(id, _)| id)
        .collect();
    assert!(
        moved.is_empty(),
        "{} of {} heard rows left their page",
        moved.len(),
        heard.len()
    );
    let seen: i64 =
        sqlx::query_scalar("SELECT count(*) FROM devices WHERE last_seen_at IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .expect("seen");
    assert_eq!(seen as usize, heard.len());
}

/// The processor's device cache knows which devices have their `device_connectivity` row, so
/// that a batch probes only for the others': read with the device (a restarted processor knows
/// the fleet it heard before), set once a batch that created the row committed, and forgotten
/// with the entry.
#[tokio::test]
async fn the_device_cache_knows_which_devices_were_heard_before() {
    use gito_api::processor::devices::DeviceCache;

    let db = TestDb::migrated().await;
    let pool = sqlx::PgPool::connect(&db.url).await.expect("pool");
    let tenant = Uuid::now_v7();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 't')")
        .bind(tenant)
        .execute(&pool)
        .await
        .expect("tenant");
    let (heard, new, unknown) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (heard, new) = if heard < new {
        (heard, new)
    } else {
        (new, heard)
    };
    sqlx::query(
        "INSERT INTO devices (id, tenant_id, name, external_id)
         SELECT id, $1, id::text, id::text FROM UNNEST($2::uuid[]) AS id",
    )
    .bind(tenant)
    .bind([heard, new])
    .execute(&pool)
    .await
    .expect("devices");
    sqlx::query(
        "INSERT INTO device_connectivity (device_id, last_heard_at, check_at) VALUES ($1, now(), now())",
    )
    .bind(heard)
    .execute(&pool)
    .await
    .expect("connectivity row");

    let mut cache = DeviceCache::default();
    // Bypassed (nobody listens): nothing is known, every device is probed for.
    cache.lookup(&pool, &[heard, new]).await.expect("lookup");
    assert_eq!(cache.unheard([heard, new]), [heard, new]);

    cache.set_enabled(true);
    let known = cache
        .lookup(&pool, &[heard, new, unknown])
        .await
        .expect("lookup");
    assert!(known[&heard].is_some() && known[&new].is_some() && known[&unknown].is_none());
    assert_eq!(
        cache.unheard([heard, new, unknown]),
        [new, unknown],
        "the row of `heard` was read with it"
    );
    cache.mark_heard(&[new, unknown]);
    assert_eq!(
        cache.unheard([heard, new, unknown]),
        [unknown],
        "an id that is no device never has a row"
    );
    cache.evict(new);
    assert_eq!(
        cache.unheard([heard, new]),
        [new],
        "forgotten with its entry"
    );
}
