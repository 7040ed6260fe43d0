//! Failures isolated to what failed, with a real Mosquitto and PostgreSQL: a deleted device or a
//! poison message never holds back the other devices, what cannot be stored is kept as a dead
//! letter (listed and replayed over REST, stored exactly once), batches are bounded by rows, the
//! device cache is exact, and deletions are announced on `{tenant_id}/device-events`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gito_runtime::mqtt::MqttUrl;
use gito_testkit::{Broker, TestApi, TestDb, publish_all, serve_config, wait_for};
use gito_wire::DeviceEvent;
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::helpers::id_of;

const DEADLINE: Duration = Duration::from_secs(30);

struct Stack {
    api: TestApi,
    db: TestDb,
    broker: Broker,
}

impl Stack {
    async fn start() -> Stack {
        Stack::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut gito_api::config::ServeConfig)) -> Stack {
        let db = TestDb::migrated().await;
        let broker = Broker::start_with("max_inflight_messages 1000\n").await;
        let mut config = serve_config(&db.url, "127.0.0.1:0".parse().expect("address"));
        config.processor = true;
        config.mqtt.mqtt_url = broker.url().parse().expect("MQTT URL");
        adjust(&mut config);
        let api = TestApi::start_with(config).await;
        Stack { api, db, broker }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, body) = self.api.post(path, body).await;
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn device(&self, tenant: Uuid, name: &str) -> Uuid {
        id_of(
            &self
                .post(
                    &format!("/tenants/{tenant}/devices"),
                    json!({ "name": name, "external_id": format!("plant/{name}") }),
                )
                .await,
        )
    }

    async fn scalar(&self, sql: &'static str, id: Option<Uuid>) -> i64 {
        let mut conn = self.db.connect().await;
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .expect(sql)
    }

    async fn rows_of(&self, device: Uuid) -> i64 {
        self.scalar(
            "SELECT count(*) FROM telemetry WHERE device_id = $1",
            Some(device),
        )
        .await
    }

    async fn dead_letters(&self, tenant: Uuid, query: &str) -> Vec<Value> {
        let (status, page) = self
            .api
            .get(&format!("/tenants/{tenant}/dead-letters?limit=1000{query}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["items"].as_array().cloned().expect("items")
    }
}

fn topic(tenant: Uuid, device: Uuid) -> String {
    format!("{tenant}/devices/{device}/telemetry")
}

/// An envelope whose metric `v` is `n`, at `n` milliseconds past a fixed instant.
fn numbered(n: u64) -> Vec<u8> {
    let ts = time::macros::datetime!(2026-11-24 00:00 UTC) + time::Duration::milliseconds(n as i64);
    let ts = ts
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    json!({ "ts": ts, "metrics": { "v": n as f64 } })
        .to_string()
        .into_bytes()
}

fn envelope(ts: &str, metrics: Value) -> Vec<u8> {
    json!({ "ts": ts, "source_topic": "plant/x", "metrics": metrics })
        .to_string()
        .into_bytes()
}

/// The `v` of each dead letter's payload, sorted.
fn values(letters: &[Value]) -> Vec<u64> {
    let mut values: Vec<u64> = letters
        .iter()
        .map(|l| {
            let payload: Value =
                serde_json::from_str(l["payload"].as_str().expect("UTF-8 payload")).expect("JSON");
            payload["metrics"]["v"].as_f64().expect("v") as u64
        })
        .collect();
    values.sort_unstable();
    values
}

/// One MQTT connection publishing at QoS 1, as a device fleet's bridge does.
struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicUsize>,
    sent: usize,
}

impl Publisher {
    async fn connect(broker: &Broker) -> Publisher {
        let url: MqttUrl = broker.url().parse().expect("URL");
        let mut options = url.options(&format!("test-fleet-{}", Uuid::new_v4().simple()));
        options.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let acked = Arc::new(AtomicUsize::new(0));
        let counter = acked.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Publisher {
            client,
            acked,
            sent: 0,
        }
    }

    async fn publish(&mut self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
        self.sent += 1;
    }

    async fn finish(self) {
        let (acked, sent) = (self.acked, self.sent);
        wait_for(DEADLINE, "every publish acknowledged", || async {
            acked.load(Ordering::Relaxed) >= sent
        })
        .await;
        let _ = self.client.disconnect().await;
    }
}

/// Samples the rows of `devices` every 20 ms until told to stop; returns the longest time the
/// count did not grow between its first and its last growth.
fn watch_progress(
    db_url: String,
    devices: Vec<Uuid>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db_url)
            .await
            .expect("connect");
        let (mut last_count, mut last_growth, mut longest) =
            (0i64, None::<Instant>, Duration::ZERO);
        while !*stop.borrow() {
            let count: i64 =
                sqlx::query_scalar("SELECT count(*) FROM telemetry WHERE device_id = ANY($1)")
                    .bind(&devices)
                    .fetch_one(&mut conn)
                    .await
                    .expect("count");
            if count > last_count {
                let now = Instant::now();
                if let Some(before) = last_growth {
                    longest = longest.max(now - before);
                }
                last_growth = Some(now);
                last_count = count;
            }
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        longest
    })
}

/// How a device disappears in the stream tests.
#[derive(Clone, Copy)]
enum Deletion {
    /// Through the API: the processor hears of it at once.
    Api,
    /// Behind the processor's back (its notification suppressed): the cached device makes the
    /// batch's INSERT fail on the foreign key, which the processor must isolate.
    Unannounced,
}

/// Four devices publish in rounds (the doomed one first in each round); mid-stream the doomed
/// one is deleted. The others never stall for a second, every message of theirs is stored once,
/// and the doomed device's messages after its deletion are dead letters, each exactly once, none
/// missing.
async fn delete_mid_stream(deletion: Deletion) {
    const ROUNDS: u64 = 150;
    let stack = Stack::start().await;
    let tenant = stack.api.tenant("t").await;
    let doomed = stack.device(tenant, "doomed").await;
    let mut others = Vec::new();
    for name in ["a", "b", "c"] {
        others.push(stack.device(tenant, name).await);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = watch_progress(stack.db.url.clone(), others.clone(), stop_rx);
    let mut fleet = Publisher::connect(&stack.broker).await;
    for round in 0..ROUNDS {
        if round == ROUNDS / 3 {
            // Mid-stream, once some of the doomed device's messages were stored.
            wait_for(DEADLINE, "the doomed device's first rows", || async {
                stack.rows_of(doomed).await > 0
            })
            .await;
            match deletion {
                Deletion::Api => {
                    let status = stack
                        .api
                        .delete(&format!("/tenants/{tenant}/devices/{doomed}"))
                        .await;
                    assert_eq!(status, StatusCode::NO_CONTENT);
                }
                Deletion::Unannounced => {
                    let mut conn = stack.db.connect().await;
                    let mut tx = sqlx::Connection::begin(&mut conn).await.expect("begin");
                    sqlx::raw_sql(
                        "ALTER TABLE devices DISABLE TRIGGER devices_notify_insert_delete",
                    )
                    .execute(&mut *tx)
                    .await
                    .expect("disable");
                    sqlx::query("DELETE FROM devices WHERE id = $1")
                        .bind(doomed)
                        .execute(&mut *tx)
                        .await
                        .expect("delete");
                    sqlx::raw_sql(
                        "ALTER TABLE devices ENABLE TRIGGER devices_notify_insert_delete",
                    )
                    .execute(&mut *tx)
                    .await
                    .expect("enable");
                    tx.commit().await.expect("commit");
                }
            }
        }
        fleet.publish(topic(tenant, doomed), numbered(round)).await;
        for device in &others {
            fleet.publish(topic(tenant, *device), numbered(round)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // the fleet's pace, not a wait
    }
    fleet.finish().await;
    let expected = ROUNDS as i64 * others.len() as i64;
    wait_for(DEADLINE, "every other device's rows", || async {
        let mut total = 0;
        for device in &others {
            total += stack.rows_of(*device).await;
        }
        total == expected
    })
    .await;
    stop_tx.send(true).expect("stop");
    let longest = progress.await.expect("progress task");
    eprintln!("longest pause of the other devices' rows: {longest:?}");
    // Alone this is ~0.1 s; a loaded CI run of the whole suite saw 1.1 s. What this guards
    // against — the batch retried as if the database were down, or held until a cache expires —
    // costs backoff rounds and cache lifetimes: several seconds, then for ever.
    assert!(
        longest < Duration::from_secs(3),
        "the other devices stalled for {longest:?}"
    );
    // The doomed device's messages processed after its deletion, in order: a suffix of its
    // stream, each once.
    wait_for(DEADLINE, "the doomed device's dead letters", || async {
        values(&stack.dead_letters(tenant, "").await).last() == Some(&(ROUNDS - 1))
    })
    .await;
    let letters = stack.dead_letters(tenant, "").await;
    let got = values(&letters);
    let first = got[0];
    assert!(first > 0, "some were stored before the deletion");
    assert_eq!(
        got,
        (first..ROUNDS).collect::<Vec<_>>(),
        "none missing, none twice"
    );
    for letter in &letters {
        assert_eq!(letter["reason"], "unknown_device", "{letter}");
        assert_eq!(letter["topic"], topic(tenant, doomed));
        assert_eq!(letter["tenant_id"], tenant.to_string());
    }
    assert_eq!(stack.rows_of(doomed).await, 0, "its rows went with it");
    for device in &others {
        let distinct = stack
            .scalar(
                "SELECT count(DISTINCT value) FROM telemetry WHERE device_id = $1",
                Some(*device),
            )
            .await;
        assert_eq!(distinct, ROUNDS as i64, "every message of {device} once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_deleted_mid_stream_stalls_no_other_device_and_its_later_messages_are_dead_letters()
 {
    delete_mid_stream(Deletion::Api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_deleted_behind_the_caches_back_fails_on_the_foreign_key_and_only_its_messages_become_dead_letters()
 {
    delete_mid_stream(Deletion::Unannounced).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_a_dead_letter_while_its_batch_is_stored_and_a_replay_stores_it_once_the_cause_is_gone()
 {
    let stack = Stack::start().await;
    let tenant = stack.api.tenant("t").await;
    let devices = [
        stack.device(tenant, "a").await,
        stack.device(tenant, "b").await,
    ];
    // A rule the database enforces and the processor knows nothing of: 666 is refused.
    let mut conn = stack.db.connect().await;
    sqlx::raw_sql(
        "ALTER TABLE telemetry ADD CONSTRAINT no_666 CHECK (value IS DISTINCT FROM 666) NOT VALID",
    )
    .execute(&mut conn)
    .await
    .expect("constraint");
    let messages: Vec<(String, Vec<u8>)> = (600..700u64)
        .map(|n| (topic(tenant, devices[n as usize % 2]), numbered(n)))
        .collect();
    publish_all(&stack.broker.url(), messages).await;
    wait_for(DEADLINE, "99 rows and one dead letter", || async {
        stack.scalar("SELECT count(*) FROM telemetry", None).await == 99
            && stack.dead_letters(tenant, "").await.len() == 1
    })
    .await;
    let letter = stack.dead_letters(tenant, "").await.remove(0);
    assert_eq!(letter["reason"], "constraint", "{letter}");
    assert!(
        letter["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_666")),
        "{letter}"
    );
    assert_eq!(values(std::slice::from_ref(&letter)), [666]);
    assert_eq!(letter["failures"], 1);
    assert_eq!(
        letter["payload_hex"],
        hex::encode(letter["payload"].as_str().expect("payload"))
    );
    assert_eq!(
        stack.dead_letters(tenant, "&reason=unknown_device").await,
        Vec::<Value>::new()
    );

    // Replayed while the cause is still there: it stays, one failure more.
    let replay = format!("/tenants/{tenant}/dead-letters/replay");
    let (status, done) = stack.api.post(&replay, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        done,
        json!({ "replayed": 1, "stored": 0, "still_failing": 1 })
    );
    let kept = stack.dead_letters(tenant, "").await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["failures"], 2);

    // The cause gone, a replay (with no body at all) stores it, exactly once.
    sqlx::raw_sql("ALTER TABLE telemetry DROP CONSTRAINT no_666")
        .execute(&mut conn)
        .await
        .expect("drop constraint");
    let response = stack
        .api
        .client
        .post(stack.api.url(&replay))
        .send()
        .await
        .expect("replay");
    assert_eq!(response.status(), StatusCode::OK);
    let done: Value = response.json().await.expect("json");
    assert_eq!(
        done,
        json!({ "replayed": 1, "stored": 1, "still_failing": 0 })
    );
    let (_, again) = stack.api.post(&replay, json!({})).await;
    assert_eq!(
        again,
        json!({ "replayed": 0, "stored": 0, "still_failing": 0 })
    );
    assert_eq!(stack.dead_letters(tenant, "").await, Vec::<Value>::new());
    assert_eq!(
        stack.scalar("SELECT count(*) FROM telemetry", None).await,
        100
    );
    assert_eq!(
        stack
            .scalar("SELECT count(*) FROM telemetry WHERE value = 666", None)
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_messages_and_unknown_devices_are_dead_letters_of_their_tenant_kept_once_and_replayable()
 {
    let stack = Stack::start().await;
    let tenant = stack.api.tenant("t").await;
    let device = stack.device(tenant, "a").await;
    let other_tenant = stack.api.tenant("other").await;
    let other_device = stack.device(other_tenant, "theirs").await;
    let missing = Uuid::now_v7();
    let good = envelope("2026-11-24T10:00:00Z", json!({ "v": 1.0 }));
    publish_all(
        &stack.broker.url(),
        vec![
            (topic(tenant, missing), good.clone()),
            (topic(tenant, other_device), good.clone()),
            (topic(tenant, device), b"not json".to_vec()),
            (
                topic(tenant, device),
                envelope("2026-11-24T10:00:00Z", json!({})),
            ),
            (
                format!("{tenant}/devices/not-an-id/telemetry"),
                good.clone(),
            ),
            (topic(tenant, device), good.clone()),
        ],
    )
    .await;
    wait_for(DEADLINE, "five dead letters", || async {
        stack.dead_letters(tenant, "").await.len() == 5
    })
    .await;
    let mut reasons: Vec<String> = stack
        .dead_letters(tenant, "")
        .await
        .iter()
        .map(|l| l["reason"].as_str().expect("reason").to_owned())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "invalid_envelope",
            "invalid_topic",
            "no_metrics",
            "unknown_device",
            "unknown_device"
        ]
    );
    assert_eq!(stack.rows_of(device).await, 1);
    assert_eq!(
        stack.dead_letters(other_tenant, "").await,
        Vec::<Value>::new(),
        "the topic's tenant is the one that sees them"
    );
    // A tenant token reads its own and nobody else's.
    let token = stack.api.token_for(tenant).await;
    let (status, page) = stack
        .api
        .get_as(&token, &format!("/tenants/{tenant}/dead-letters?limit=2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert!(page["next_cursor"].is_string(), "{page}");
    let (status, _) = stack
        .api
        .get_as(&token, &format!("/tenants/{other_tenant}/dead-letters"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = stack
        .api
        .get(&format!("/tenants/{tenant}/dead-letters?reason=nonsense"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The same message again: still one dead letter, two failures.
    publish_all(
        &stack.broker.url(),
        vec![(topic(tenant, missing), good.clone())],
    )
    .await;
    wait_for(DEADLINE, "a second failure", || async {
        let letters = stack.dead_letters(tenant, "").await;
        letters.iter().any(|l| l["failures"] == 2)
    })
    .await;
    assert_eq!(stack.dead_letters(tenant, "").await.len(), 5);

    // The missing device created (by hand, with that id): a replay of unknown devices stores its
    // message and leaves the other tenant's device's message, and the invalid ones, as they were.
    let mut conn = stack.db.connect().await;
    sqlx::query("INSERT INTO devices (id, tenant_id, name) VALUES ($1, $2, 'late')")
        .bind(missing)
        .bind(tenant)
        .execute(&mut conn)
        .await
        .expect("insert device");
    let (status, done) = stack
        .api
        .post(
            &format!("/tenants/{tenant}/dead-letters/replay"),
            json!({ "reason": "unknown_device" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        done,
        json!({ "replayed": 2, "stored": 1, "still_failing": 1 })
    );
    assert_eq!(stack.rows_of(missing).await, 1);
    assert_eq!(stack.dead_letters(tenant, "").await.len(), 4);
    let (status, body) = stack
        .api
        .post(
            &format!("/tenants/{tenant}/dead-letters/replay"),
            json!({ "reason": "nonsense" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_with_more_metrics_than_the_row_bound_is_stored_alone_and_the_stream_goes_on() {
    let stack = Stack::start_with(|config| {
        config.mqtt.batch_max_rows = 50;
        config.mqtt.batch_max_bytes = 64 * 1024;
    })
    .await;
    let tenant = stack.api.tenant("t").await;
    let (big, small) = (
        stack.device(tenant, "big").await,
        stack.device(tenant, "small").await,
    );
    let metrics: serde_json::Map<String, Value> =
        (0..500).map(|i| (format!("m{i}"), json!(i))).collect();
    let mut messages: Vec<(String, Vec<u8>)> = (0..100)
        .map(|n| (topic(tenant, small), numbered(n)))
        .collect();
    messages.insert(
        50,
        (
            topic(tenant, big),
            envelope("2026-11-24T10:00:00Z", Value::Object(metrics)),
        ),
    );
    // Larger than the byte bound, too.
    let text = "x".repeat(100 * 1024);
    messages.push((
        topic(tenant, big),
        envelope("2026-11-24T10:00:01Z", json!({ "text": text })),
    ));
    publish_all(&stack.broker.url(), messages).await;
    wait_for(DEADLINE, "every row", || async {
        stack.rows_of(big).await == 501 && stack.rows_of(small).await == 100
    })
    .await;
    assert_eq!(
        stack.dead_letters(tenant, "").await,
        Vec::<Value>::new(),
        "nothing refused"
    );
}

/// Publishes one value of `T` and returns whether its row was flagged.
async fn flagged(stack: &Stack, tenant: Uuid, device: Uuid, second: u32) -> bool {
    let ts = format!("2026-11-24T10:00:{second:02}Z");
    publish_all(
        &stack.broker.url(),
        vec![(topic(tenant, device), envelope(&ts, json!({ "T": 150.0 })))],
    )
    .await;
    let read = || async {
        let mut conn = stack.db.connect().await;
        sqlx::query_scalar::<_, bool>(
            "SELECT flagged FROM telemetry WHERE device_id = $1 AND ts = $2::timestamptz",
        )
        .bind(device)
        .bind(&ts)
        .fetch_optional(&mut conn)
        .await
        .expect("row")
    };
    wait_for(DEADLINE, "the row", || async { read().await.is_some() }).await;
    read().await.expect("found")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_type_change_applies_to_the_very_next_message_even_after_the_listener_was_lost() {
    let stack = Stack::start().await;
    let tenant = stack.api.tenant("t").await;
    let device = stack.device(tenant, "boiler").await;
    let strict = id_of(
        &stack
            .post(
                &format!("/tenants/{tenant}/device-types"),
                json!({ "name": "strict", "telemetry_schema": { "T": { "max": 100 } } }),
            )
            .await,
    );
    let lenient = id_of(
        &stack
            .post(
                &format!("/tenants/{tenant}/device-types"),
                json!({ "name": "lenient", "telemetry_schema": { "T": { "max": 200 } } }),
            )
            .await,
    );
    let device_path = format!("/tenants/{tenant}/devices/{device}");
    let classify = |kind: Uuid| {
        let (api, path) = (&stack.api, &device_path);
        async move {
            let (status, body) = api.patch(path, json!({ "device_type_id": kind })).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    assert!(
        !flagged(&stack, tenant, device, 0).await,
        "no type, no schema"
    );
    let mut second = 1;
    for _ in 0..3 {
        classify(strict).await;
        assert!(flagged(&stack, tenant, device, second).await, "strict");
        classify(lenient).await;
        assert!(
            !flagged(&stack, tenant, device, second + 1).await,
            "lenient"
        );
        second += 2;
    }
    // The type's schema edited: its devices follow at once.
    let (status, _) = stack
        .api
        .patch(
            &format!("/tenants/{tenant}/device-types/{lenient}"),
            json!({ "telemetry_schema": { "T": { "max": 120 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        flagged(&stack, tenant, device, second).await,
        "edited schema"
    );

    // The listener's connection killed, then a change: the processor has not heard of it, and must
    // not trust its cache.
    let mut conn = stack.db.connect().await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'gito-api device listener' AND datname = current_database()) k",
    )
    .fetch_one(&mut conn)
    .await
    .expect("terminate");
    assert_eq!(killed, 2, "one listener per processor worker");
    classify(strict).await;
    let (status, _) = stack
        .api
        .patch(
            &format!("/tenants/{tenant}/device-types/{lenient}"),
            json!({ "telemetry_schema": { "T": { "max": 200 } } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        flagged(&stack, tenant, device, second + 1).await,
        "strict again"
    );
    classify(lenient).await;
    assert!(
        !flagged(&stack, tenant, device, second + 2).await,
        "lenient again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_devices_are_announced_on_the_tenants_device_events_topic_however_they_are_deleted()
{
    let stack = Stack::start().await;
    let tenant = stack.api.tenant("t").await;
    let (one, two, three) = (
        stack.device(tenant, "one").await,
        stack.device(tenant, "two").await,
        stack.device(tenant, "three").await,
    );
    let events = subscribe(&stack.broker, &format!("{tenant}/device-events")).await;
    let mut events = events;
    let status = stack
        .api
        .delete(&format!("/tenants/{tenant}/devices/{one}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let next = async |events: &mut mpsc::Receiver<Vec<u8>>| {
        let payload = tokio::time::timeout(DEADLINE, events.recv())
            .await
            .expect("an event in time")
            .expect("subscribed");
        DeviceEvent::from_json(&payload).expect("a device event")
    };
    assert_eq!(
        next(&mut events).await,
        DeviceEvent::DeviceDeleted {
            tenant_id: tenant,
            device_id: one,
            external_id: Some("plant/one".into()),
        }
    );
    // A tenant deleted by hand: each of its devices, by the cascade.
    let mut conn = stack.db.connect().await;
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(tenant)
        .execute(&mut conn)
        .await
        .expect("delete tenant");
    let mut gone = vec![];
    for _ in 0..2 {
        match next(&mut events).await {
            DeviceEvent::DeviceDeleted {
                tenant_id,
                device_id,
                ..
            } => {
                assert_eq!(tenant_id, tenant);
                gone.push(device_id);
            }
        }
    }
    gone.sort();
    let mut expected = vec![two, three];
    expected.sort();
    assert_eq!(gone, expected);
}

/// Subscribes at QoS 1 and hands over every payload, once the broker confirmed the subscription.
async fn subscribe(broker: &Broker, filter: &str) -> mpsc::Receiver<Vec<u8>> {
    let url: MqttUrl = broker.url().parse().expect("URL");
    let options = url.options(&format!("test-sub-{}", Uuid::new_v4().simple()));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = mpsc::channel(100);
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p.payload.to_vec()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(DEADLINE, subscribed)
        .await
        .expect("subscribed in time")
        .expect("subscription");
    rx
}
