//! `/metrics` and `/status`: scraped from the real `gito-api` binary while messages flow (its
//! recorder is its own, so counts move by exactly what the test did) and parsed with a real
//! Prometheus text parser; who may read them; bounded label cardinality; the broker's state.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use gito_testkit::{Broker, Scrape, TestApi, TestDb, publish_all, wait_for};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{ADMIN_TOKEN, ApiProcess, TestApp, gito_api, id_of};

const DEADLINE: Duration = Duration::from_secs(30);

/// The real binary with its processor on `broker`.
async fn serve(db: &TestDb, broker: &Broker) -> (ApiProcess, SocketAddr) {
    let mut command = gito_api(&db.url, &["serve"]);
    command
        .env("GITO_PROCESSOR", "on")
        .env("GITO_LIVE", "on")
        .env("GITO_MQTT_URL", broker.url())
        .env(
            "GITO_PROCESSOR_CLIENT_ID",
            format!("metrics-test-{}", Uuid::new_v4().simple()),
        )
        .env("GITO_DB_MAX_CONNECTIONS", "4");
    let mut api = ApiProcess::start(command);
    let addr = api.wait_ready(DEADLINE).await;
    (api, addr)
}

async fn scrape(addr: SocketAddr) -> Scrape {
    Scrape::get(&format!("http://{addr}/metrics"), Some(ADMIN_TOKEN))
        .await
        .expect("gito-api answers")
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Value {
    let response = gito_testkit::admin_client()
        .post(format!("http://{addr}{path}"))
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

fn envelope(i: usize) -> Vec<u8> {
    let ts = time::OffsetDateTime::now_utc() - time::Duration::milliseconds(i as i64);
    let ts = ts
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    json!({ "ts": ts, "source_topic": "SDE11/D/x", "metrics": { "v": i } })
        .to_string()
        .into_bytes()
}

fn telemetry(tenant: Uuid, device: Uuid) -> String {
    format!("{tenant}/devices/{device}/telemetry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_published_messages_move_the_processor_and_http_series_by_exactly_that() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let (_api, addr) = serve(&db, &broker).await;
    let tenant = id_of(&post(addr, "/tenants", json!({ "name": "t" })).await);
    let device = id_of(
        &post(
            addr,
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d" }),
        )
        .await,
    );
    // One message the processor handles first, so that its series exist before the baseline.
    publish_all(
        &broker.url(),
        vec![(telemetry(tenant, device), envelope(0))],
    )
    .await;
    wait_for(DEADLINE, "the first message stored", || async move {
        scrape(addr)
            .await
            .value("gito_processor_rows_stored_total", &[])
            == 1.0
    })
    .await;
    // A WebSocket client of the tenant, counted once the server has it.
    let ws_url = format!("ws://{addr}/tenants/{tenant}/ws?token={ADMIN_TOKEN}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("WebSocket");
    wait_for(DEADLINE, "the WebSocket client counted", || async move {
        scrape(addr).await.value("gito_live_clients", &[]) == 1.0
    })
    .await;
    let before = scrape(addr).await;
    let stored = [("outcome", "stored")];

    let messages = (1..=100)
        .map(|i| (telemetry(tenant, device), envelope(i)))
        .collect();
    publish_all(&broker.url(), messages).await;
    // Two invalid ones: one not JSON, one of a device that does not exist.
    publish_all(
        &broker.url(),
        vec![
            (telemetry(tenant, device), b"not json".to_vec()),
            (telemetry(tenant, Uuid::now_v7()), envelope(0)),
        ],
    )
    .await;
    wait_for(DEADLINE, "100 stored and 2 dropped", || async move {
        let now = scrape(addr).await;
        now.value("gito_processor_messages_total", &[("outcome", "stored")]) >= 101.0
            && now.value(
                "gito_processor_messages_total",
                &[("outcome", "dropped_unknown_device")],
            ) >= 1.0
            && now.value(
                "gito_processor_messages_total",
                &[("outcome", "dropped_invalid_envelope")],
            ) >= 1.0
    })
    .await;
    let after = scrape(addr).await;
    let before_events = &before;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(moved("gito_processor_messages_total", &stored), 100.0);
    assert_eq!(moved("gito_processor_rows_stored_total", &[]), 100.0);
    assert_eq!(moved("gito_processor_lag_seconds_count", &[]), 100.0);
    assert_eq!(
        moved(
            "gito_processor_messages_total",
            &[("outcome", "dropped_unknown_device")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "gito_processor_messages_total",
            &[("outcome", "dropped_invalid_envelope")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "gito_processor_dead_letters_total",
            &[("reason", "unknown_device")]
        ),
        1.0
    );
    assert_eq!(
        moved("gito_processor_messages_total", &[("outcome", "duplicate")]),
        0.0
    );
    assert!(moved("gito_processor_commit_duration_seconds_count", &[]) >= 1.0);
    // Each valid message's device looked up once: 100 of the device, 1 unknown.
    let device_cache = [("cache", "device")];
    assert_eq!(
        moved("gito_cache_hits_total", &device_cache)
            + moved("gito_cache_misses_total", &device_cache),
        101.0
    );
    // The live fan-out: the 100 telemetry events reach the client.
    let mut received = 0;
    while received < 100 {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("a message");
        if message.is_text() {
            received += 1;
        }
    }
    wait_for(DEADLINE, "100 events counted as sent", || async move {
        scrape(addr).await.value("gito_live_events_sent_total", &[])
            - before_events.value("gito_live_events_sent_total", &[])
            >= 100.0
    })
    .await;
    ws.close(None).await.ok();
    wait_for(DEADLINE, "the WebSocket client gone", || async move {
        scrape(addr).await.value("gito_live_clients", &[]) == 0.0
    })
    .await;
    assert!(moved("gito_processor_batch_size_count", &[]) >= 1.0);
    assert_eq!(after.value("gito_processor_broker_connected", &[]), 1.0);
    assert_eq!(
        after.value("gito_component_up", &[("component", "processor")]),
        1.0
    );

    // HTTP: by route template, never by the path with its ids.
    let devices = format!("/tenants/{tenant}/devices");
    for _ in 0..3 {
        let status = gito_testkit::admin_client()
            .get(format!("http://{addr}{devices}/{}", Uuid::now_v7()))
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let http = scrape(addr).await;
    let route = [
        ("route", "/tenants/{tenant_id}/devices/{id}"),
        ("method", "GET"),
        ("status", "404"),
    ];
    assert_eq!(http.value("gito_http_requests_total", &route), 3.0);
    assert_eq!(
        http.value(
            "gito_http_requests_total",
            &[
                ("route", "/tenants/{tenant_id}/devices"),
                ("method", "POST"),
                ("status", "201")
            ]
        ),
        1.0
    );
    assert_eq!(
        http.value("gito_http_request_duration_seconds_count", &route[..2]),
        3.0
    );
    let tenant = tenant.to_string();
    assert!(
        http.samples
            .iter()
            .all(|s| s.labels.iter().all(|(_, v)| !v.contains(&tenant))),
        "no label carries an id"
    );
    assert!(
        http.families.contains(&(
            "gito_http_requests_total".to_owned(),
            "counter".to_owned(),
            true
        )),
        "typed and described: {:?}",
        http.families
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_series_does_not_grow_with_ten_thousand_distinct_devices() {
    let db = TestDb::migrated().await;
    let broker = Broker::start_with("max_inflight_messages 1000\n").await;
    let (_api, addr) = serve(&db, &broker).await;
    let tenant = id_of(&post(addr, "/tenants", json!({ "name": "t" })).await);
    let device = id_of(
        &post(
            addr,
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d" }),
        )
        .await,
    );
    let round = |n: usize| -> Vec<(String, Vec<u8>)> {
        let mut messages: Vec<_> = (0..n)
            .map(|i| (telemetry(tenant, Uuid::now_v7()), envelope(i)))
            .collect();
        messages.push((telemetry(tenant, device), envelope(n)));
        messages
    };
    let client = gito_testkit::admin_client();
    let lookups = |n: usize| {
        let client = client.clone();
        async move {
            for _ in 0..n {
                client
                    .get(format!(
                        "http://{addr}/tenants/{tenant}/devices/{}",
                        Uuid::now_v7()
                    ))
                    .send()
                    .await
                    .expect("request");
            }
        }
    };
    publish_all(&broker.url(), round(10)).await;
    lookups(10).await;
    wait_for(DEADLINE, "the first round processed", || async move {
        scrape(addr).await.value(
            "gito_processor_messages_total",
            &[("outcome", "dropped_unknown_device")],
        ) == 10.0
    })
    .await;
    let first = scrape(addr).await.series();

    publish_all(&broker.url(), round(10_000)).await;
    lookups(200).await;
    wait_for(
        Duration::from_secs(120),
        "10,000 more devices processed",
        || async move {
            scrape(addr).await.value(
                "gito_processor_messages_total",
                &[("outcome", "dropped_unknown_device")],
            ) == 10_010.0
        },
    )
    .await;
    let second = scrape(addr).await.series();
    assert_eq!(
        second.difference(&first).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "no series appeared for the new devices"
    );
    assert_eq!(first.len(), second.len());
}

#[tokio::test]
async fn metrics_and_status_answer_the_admin_only() {
    let db = TestDb::migrated().await;
    let api = TestApi::start(&db.url, "127.0.0.1:0".parse().expect("address")).await;
    let tenant = api.tenant("t").await;
    let token = api.token_for(tenant).await;
    for path in ["/metrics", "/status"] {
        let anonymous = api
            .anonymous
            .get(api.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = anonymous.json().await.expect("the error shape");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (status, body) = api.get_as(&token, path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(body["error"]["code"], "forbidden");
        let (status, _) = api.get_as("not-a-token", path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let response = api
        .client
        .get(api.url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    let (status, body) = api.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["components"]
        .as_array()
        .expect("components")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    // Processor and live are off in this API: not listed.
    assert_eq!(names, ["database", "rollups", "token_listener"]);
    let database = &body["components"][0];
    assert_eq!(database["state"], "up");
    assert!(database["since"].as_str().is_some());
    assert_eq!(body["processor"]["last_commit_at"], Value::Null);
}

fn component<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_broker_down_within_five_seconds_of_its_stop_and_up_when_it_is_back() {
    let db = TestDb::migrated().await;
    let mut broker = Broker::start().await;
    let api = TestApi::start_processing(&db.url, &broker.url()).await;
    let state = |name: &'static str| {
        let api = &api;
        async move {
            let (status, body) = api.get("/status").await;
            assert_eq!(status, StatusCode::OK);
            component(&body, name)["state"]
                .as_str()
                .expect("state")
                .to_owned()
        }
    };
    wait_for(DEADLINE, "broker, processor and live up", || async {
        state("broker").await == "up"
            && state("processor").await == "up"
            && state("live").await == "up"
    })
    .await;
    let (_, body) = api.get("/status").await;
    let names: Vec<&str> = body["components"]
        .as_array()
        .expect("components")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        [
            "broker",
            "database",
            "live",
            "processor",
            "rollups",
            "token_listener"
        ]
    );
    assert_eq!(body["processor"]["last_commit_at"], Value::Null);

    // A stored message: the last commit and its lag.
    let tenant = api.tenant("t").await;
    let (_, device) = api
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d" }),
        )
        .await;
    publish_all(
        &broker.url(),
        vec![(telemetry(tenant, id_of(&device)), envelope(0))],
    )
    .await;
    wait_for(DEADLINE, "a commit reported", || async {
        let (_, body) = api.get("/status").await;
        body["processor"]["last_commit_at"].is_string()
    })
    .await;
    let (_, body) = api.get("/status").await;
    let lag = body["processor"]["lag_seconds"].as_f64().expect("a lag");
    assert!((0.0..60.0).contains(&lag), "{body}");

    broker.stop().await;
    wait_for(Duration::from_secs(5), "broker reported down", || async {
        state("broker").await == "down"
    })
    .await;
    let (_, body) = api.get("/status").await;
    let broker_state = component(&body, "broker");
    assert!(
        broker_state["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert_eq!(component(&body, "database")["state"], "up");

    wait_for(DEADLINE, "live reported down", || async {
        state("live").await == "down"
    })
    .await;
    broker.restart().await;
    wait_for(DEADLINE, "broker and live reported up again", || async {
        state("broker").await == "up" && state("live").await == "up"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_of_a_lost_token_listener_with_its_error_once_it_is_back() {
    let app = TestApp::spawn().await;
    let listener = || async {
        let (_, body) = app.get("/status").await;
        component(&body, "token_listener").clone()
    };
    wait_for(DEADLINE, "the token listener up", || async {
        listener().await["state"] == "up"
    })
    .await;
    let first = listener().await;
    assert_eq!(first["last_error"], Value::Null);
    let pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'gito-api token-listener'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("the listener's connection");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&app.pool)
        .await
        .expect("terminate");
    wait_for(
        DEADLINE,
        "the loss reported and the listener back",
        || async {
            let now = listener().await;
            now["state"] == "up" && now["last_error"].is_string() && now["since"] != first["since"]
        },
    )
    .await;
}

/// The rollup follower of every `gito-api serve`: `rollups` in `/status`, how far behind now its
/// minute edge is and the minutes it rolled up in `/metrics`; a step that fails makes it
/// `degraded` with the error, and the next one that succeeds `up` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollup_follower_reports_how_far_behind_it_is_and_its_failures() {
    let db = TestDb::migrated().await;
    let mut command = gito_api(&db.url, &["serve"]);
    command.env("GITO_PROCESSOR", "off").env("GITO_LIVE", "off");
    let mut api = ApiProcess::start(command);
    let addr = api.wait_ready(DEADLINE).await;
    let rollups = || async move {
        let body: Value = gito_testkit::admin_client()
            .get(format!("http://{addr}/status"))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        component(&body, "rollups").clone()
    };
    // 015 put the edges at the start of the day it ran: the follower crosses the empty hours
    // since then and stays GITO_ROLLUP_LAG (1 minute) plus at most a minute behind now.
    wait_for(DEADLINE, "the follower up and caught up", || async {
        let scrape = scrape(addr).await;
        rollups().await["state"] == "up"
            && scrape.series().contains("gito_rollup_behind_seconds[]")
            && (60.0..150.0).contains(&scrape.value("gito_rollup_behind_seconds", &[]))
            && scrape.value("gito_rollup_minutes_total", &[]) > 0.0
    })
    .await;

    let mut conn = db.connect().await;
    sqlx::query("ALTER TABLE telemetry_rollup_state RENAME TO telemetry_rollup_state_away")
        .execute(&mut conn)
        .await
        .expect("rename");
    wait_for(DEADLINE, "the failing steps reported", || async {
        let now = rollups().await;
        now["state"] == "degraded"
            && now["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("telemetry_rollup_state"))
    })
    .await;
    assert_eq!(
        scrape(addr)
            .await
            .value("gito_component_up", &[("component", "rollups")]),
        0.0
    );
    sqlx::query("ALTER TABLE telemetry_rollup_state_away RENAME TO telemetry_rollup_state")
        .execute(&mut conn)
        .await
        .expect("rename back");
    wait_for(DEADLINE, "the follower up again", || async {
        rollups().await["state"] == "up"
    })
    .await;
}
