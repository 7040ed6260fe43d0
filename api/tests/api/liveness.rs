//! A replica takes telemetry from the broker only while a WebSocket client watches, and a socket
//! gets every message published once it is open. Long waits are bounded and dead peers are
//! noticed: a WebSocket closes within a second of its
//! token's revocation on any replica, a client that stops reading is dropped without holding up
//! the others, the token listener's connection is replaced when it dies (even without a word,
//! as a half-open TCP connection does), a pooled connection that dies costs at most its request
//! a 503, and a booting replica gives up on a migration lock held too long, naming the holder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use gito_testkit::{ADMIN_TOKEN, Broker, TestApi, TestDb, publish_all, serve_config, wait_for};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::helpers::{ApiProcess, TestApp, gito_api, id_of};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const POLICY_VIOLATION: u16 = 1008;
const LISTENER: &str = "gito-api token-listener";

/// A replica with the live fan-out on `broker`.
async fn live_replica(db_url: &str, broker: &Broker) -> TestApi {
    let mut config = serve_config(db_url, "127.0.0.1:0".parse().expect("address"));
    config.live = true;
    config.mqtt.mqtt_url = broker.url().parse().expect("MQTT URL");
    TestApi::start_with(config).await
}

async fn open(addr: SocketAddr, tenant: Uuid, token: &str) -> Ws {
    let url = format!("ws://{addr}/tenants/{tenant}/ws?token={token}");
    tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket")
        .0
}

/// The close frame `ws` receives before `by` (events before it are skipped).
async fn close_frame(ws: &mut Ws, by: Instant, what: &str) -> (u16, String) {
    let frame = timeout_at(by, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("{what}: ended without a close frame: {other:?}"),
            }
        }
    })
    .await;
    frame.unwrap_or_else(|_| panic!("{what}: not closed in time"))
}

fn telemetry(tenant: Uuid) -> (String, Vec<u8>) {
    let topic = format!("{tenant}/devices/{}/telemetry", Uuid::now_v7());
    let payload =
        json!({ "ts": "2026-11-24T10:00:00Z", "source_topic": "x", "metrics": { "T": 1.0 } });
    (topic, payload.to_string().into_bytes())
}

/// Publishes events of `tenant` until every socket received one: proves they are all open.
async fn receives_events(broker: &Broker, tenant: Uuid, sockets: &mut [&mut Ws]) {
    let mut received = vec![false; sockets.len()];
    let all = timeout(Duration::from_secs(15), async {
        while received.contains(&false) {
            publish_all(&broker.url(), vec![telemetry(tenant)]).await;
            for (ws, got) in sockets.iter_mut().zip(received.iter_mut()) {
                while !*got {
                    match timeout(Duration::from_millis(300), ws.next()).await {
                        Ok(Some(Ok(Message::Text(_)))) => *got = true,
                        Ok(other) => panic!("a socket that should stay open got {other:?}"),
                        Err(_) => break,
                    }
                }
            }
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "not every socket received events: {received:?}"
    );
}

/// The pid of the token listener's backend on `db`, other than `not`.
async fn listener_pid(pool: &PgPool, db: &str, not: Option<i32>) -> i32 {
    let found = timeout(Duration::from_secs(10), async {
        loop {
            let pid = sqlx::query_scalar::<_, i32>(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 \
                 AND query <> '' AND pid <> $3",
            )
            .bind(db)
            .bind(LISTENER)
            .bind(not.unwrap_or(0))
            .fetch_optional(pool)
            .await
            .expect("pg_stat_activity");
            if let Some(pid) = pid {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.expect("the token listener's connection within 10 s")
}

/// The latest `$SYS/broker/subscriptions/count` of a broker started with `sys_interval 1`
/// (this watcher's own subscription included).
struct Subscriptions {
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriptions {
    fn watch(broker: &Broker) -> Subscriptions {
        let url: gito_runtime::mqtt::MqttUrl = broker.url().parse().expect("broker URL");
        let options = url.options(&format!("sys-watcher-{}", Uuid::new_v4().simple()));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        let count = Arc::new(AtomicUsize::new(usize::MAX));
        let task = tokio::spawn({
            let count = count.clone();
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(
                                "$SYS/broker/subscriptions/count",
                                rumqttc::QoS::AtMostOnce,
                            );
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            if let Some(n) = std::str::from_utf8(&p.payload)
                                .ok()
                                .and_then(|s| s.trim().parse().ok())
                            {
                                count.store(n, Ordering::SeqCst);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        Subscriptions { count, task }
    }

    async fn until(&self, n: usize, what: &str) {
        wait_for(Duration::from_secs(15), what, || async {
            self.count.load(Ordering::SeqCst) == n
        })
        .await;
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_reaches_a_replica_only_while_a_websocket_watches_and_from_the_moment_it_opens() {
    let db = TestDb::migrated().await;
    let broker = Broker::start_with("sys_interval 1\n").await;
    let api = live_replica(&db.url, &broker).await;
    let tenant = api.tenant("t").await;
    let token = api.token_for(tenant).await;
    let subscriptions = Subscriptions::watch(&broker);
    // Nobody watching: the replica takes alerts and connectivity only (one subscription; the
    // other is the watcher's own).
    subscriptions
        .until(2, "the replica subscribed to alerts only")
        .await;

    let mut ws = open(api.addr, tenant, &token).await;
    assert_eq!(
        subscriptions.count.load(Ordering::SeqCst),
        2,
        "$SYS lags a second behind"
    );
    // The socket is open: the very next message reaches it, no retry.
    publish_all(&broker.url(), vec![telemetry(tenant)]).await;
    match timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => assert!(text.contains("\"telemetry\""), "{text}"),
        other => panic!("the first message after the socket opened: {other:?}"),
    }
    subscriptions
        .until(3, "telemetry subscribed while a client watches")
        .await;

    drop(ws);
    subscriptions
        .until(2, "telemetry left once the last client went")
        .await;
    // And taken again for the next client.
    let mut again = open(api.addr, tenant, &token).await;
    publish_all(&broker.url(), vec![telemetry(tenant)]).await;
    match timeout(Duration::from_secs(10), again.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => assert!(text.contains("\"telemetry\""), "{text}"),
        other => panic!("the first message for the next client: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_websocket_closes_within_a_second_of_its_token_being_revoked_on_any_replica() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let revoking = TestApi::start(&db.url, "127.0.0.1:0".parse().expect("address")).await;
    let streaming = live_replica(&db.url, &broker).await;
    let pool = PgPool::connect(&db.url).await.expect("pool");
    let tenant = revoking.tenant("t").await;
    let by_api = revoking.token_for(tenant).await;
    let by_hand = revoking.token_for(tenant).await;
    let kept = revoking.token_for(tenant).await;
    let mut ws_by_api = open(streaming.addr, tenant, &by_api).await;
    let mut ws_by_hand = open(streaming.addr, tenant, &by_hand).await;
    let mut ws_kept = open(streaming.addr, tenant, &kept).await;
    let mut ws_admin = open(streaming.addr, tenant, ADMIN_TOKEN).await;
    receives_events(
        &broker,
        tenant,
        &mut [&mut ws_by_api, &mut ws_by_hand, &mut ws_kept, &mut ws_admin],
    )
    .await;

    // Revoked through the other replica's API.
    let (_, page) = revoking.get(&format!("/tenants/{tenant}/tokens")).await;
    let prefix = &by_api[..by_api.rfind('_').expect("token shape")];
    let id = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|t| prefix.starts_with(t["prefix"].as_str().expect("prefix")))
        .map(id_of)
        .expect("the token is listed");
    let revoked_at = Instant::now();
    let path = format!("/tenants/{tenant}/tokens/{id}");
    assert_eq!(revoking.delete(&path).await, StatusCode::NO_CONTENT);
    let by = revoked_at + Duration::from_secs(1);
    let frame = close_frame(&mut ws_by_api, by, "revoked through the API").await;
    assert_eq!(frame, (POLICY_VIOLATION, "token revoked".to_owned()));

    // Deleted by hand in the database.
    let key_id = by_hand.split('_').nth(1).expect("key id");
    let revoked_at = Instant::now();
    sqlx::query("DELETE FROM api_tokens WHERE key_id = $1")
        .bind(key_id)
        .execute(&pool)
        .await
        .expect("delete");
    let by = revoked_at + Duration::from_secs(1);
    let frame = close_frame(&mut ws_by_hand, by, "deleted by hand").await;
    assert_eq!(frame, (POLICY_VIOLATION, "token revoked".to_owned()));

    // The other token's socket and the admin's are untouched.
    receives_events(&broker, tenant, &mut [&mut ws_kept, &mut ws_admin]).await;

    // All at once: the admin token cannot be revoked, its socket stays.
    let revoked_at = Instant::now();
    sqlx::query("TRUNCATE api_tokens")
        .execute(&pool)
        .await
        .expect("truncate");
    let by = revoked_at + Duration::from_secs(1);
    let frame = close_frame(&mut ws_kept, by, "truncated").await;
    assert_eq!(frame, (POLICY_VIOLATION, "token revoked".to_owned()));
    receives_events(&broker, tenant, &mut [&mut ws_admin]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_after_the_send_timeout_while_another_keeps_receiving()
{
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let mut command = gito_api(&db.url, &["serve"]);
    command
        .env("GITO_LIVE", "on")
        .env("GITO_MQTT_URL", broker.url())
        .env("GITO_WS_SEND_TIMEOUT", "2s");
    let mut api = ApiProcess::start(command);
    let addr = api.wait_ready(Duration::from_secs(30)).await;
    let tenant = gito_testkit::create_tenant(&format!("http://{addr}"), "t").await;
    let url = format!("ws://{addr}/tenants/{tenant}/ws?token={ADMIN_TOKEN}");

    // A client with a small receive buffer that never reads a byte.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let (stalled, _) = tokio_tungstenite::client_async(&url, stream)
        .await
        .expect("websocket");
    // One that reads everything, counting.
    let (mut reader, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("websocket");
    receives_events(&broker, tenant, &mut [&mut reader]).await;
    let read = Arc::new(AtomicUsize::new(0));
    let counting = read.clone();
    let reading = tokio::spawn(async move {
        while let Some(message) = reader.next().await {
            match message.expect("the reader stays connected") {
                Message::Text(_) => counting.fetch_add(1, Ordering::SeqCst),
                other => panic!("the reader got {other:?}"),
            };
        }
    });

    // Events of 8 KiB, published in rounds the reader keeps up with, until the server gives up on
    // the client that does not read.
    let dropped = "dropped a WebSocket client that stopped reading";
    let big = "x".repeat(8 * 1024);
    let mut published = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while api.count(dropped) == 0 {
        assert!(
            Instant::now() < deadline,
            "never dropped: {:#?}",
            api.log_lines()
        );
        let round: Vec<_> = (0..100)
            .map(|_| {
                let (topic, _) = telemetry(tenant);
                let payload = json!({ "ts": "2026-11-24T10:00:00Z", "source_topic": "x", "metrics": { "big": big } });
                (topic, payload.to_string().into_bytes())
            })
            .collect();
        published += round.len();
        publish_all(&broker.url(), round).await;
        wait_for(Duration::from_secs(20), "the reader keeps up", || async {
            read.load(Ordering::SeqCst) == published
        })
        .await;
    }
    // After the drop, the reader still receives every event.
    publish_all(&broker.url(), (0..10).map(|_| telemetry(tenant)).collect()).await;
    published += 10;
    wait_for(
        Duration::from_secs(20),
        "the reader receives the rest",
        || async { read.load(Ordering::SeqCst) == published },
    )
    .await;
    assert!(!reading.is_finished());
    let lines: Vec<String> = api
        .log_lines()
        .into_iter()
        .filter(|l| l.contains(dropped))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains(r#""dropped_total":1"#), "{}", lines[0]);
    assert!(
        lines[0].contains(r#""send_timeout_ms":2000"#),
        "{}",
        lines[0]
    );
    assert_eq!(api.count("fell behind"), 0, "{:#?}", api.log_lines());
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_connection_is_replaced_and_revocations_close_sockets_again() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let api = live_replica(&db.url, &broker).await;
    let pool = PgPool::connect(&db.url).await.expect("pool");
    let tenant = api.tenant("t").await;
    let token = api.token_for(tenant).await;
    let mut ws = open(api.addr, tenant, &token).await;
    receives_events(&broker, tenant, &mut [&mut ws]).await;

    let killed = listener_pid(&pool, &db.name, None).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(killed)
        .fetch_one(&pool)
        .await
        .expect("terminate");
    assert!(terminated);
    listener_pid(&pool, &db.name, Some(killed)).await;
    // The token is still valid: its socket survived the listener's loss and the sweeps.
    receives_events(&broker, tenant, &mut [&mut ws]).await;

    let revoked_at = Instant::now();
    sqlx::query("DELETE FROM api_tokens")
        .execute(&pool)
        .await
        .expect("delete");
    let frame = close_frame(
        &mut ws,
        revoked_at + Duration::from_secs(1),
        "after the kill",
    )
    .await;
    assert_eq!(frame, (POLICY_VIOLATION, "token revoked".to_owned()));
    let (status, _) = api
        .get_as(&token, &format!("/tenants/{tenant}/devices"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_connection_that_stops_answering_is_abandoned_by_its_heartbeat() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let proxy = Proxy::start(&db.url).await;
    let api = live_replica(&proxy.url, &broker).await;
    let pool = PgPool::connect(&db.url).await.expect("pool");
    let tenant = api.tenant("t").await;
    let token = api.token_for(tenant).await;
    let devices = format!("/tenants/{tenant}/devices");
    assert_eq!(api.get_as(&token, &devices).await.0, StatusCode::OK);
    let mut ws = open(api.addr, tenant, &token).await;
    wait_for(
        Duration::from_secs(10),
        "the listener connected",
        || async { proxy.listeners() == 1 },
    )
    .await;
    listener_pid(&pool, &db.name, None).await;

    // The listener's connection goes silent, as to a peer that vanished without a reset: no
    // notification reaches it, and nothing tells it so but its heartbeat.
    proxy.freeze_listeners();
    let frozen_at = Instant::now();
    sqlx::query("DELETE FROM api_tokens")
        .execute(&pool)
        .await
        .expect("delete");
    // Heartbeat every 5 s, answered within 3 s, then the sweep: 8 s and a little (slack for a
    // loaded machine).
    let by = frozen_at + Duration::from_secs(12);
    let frame = close_frame(&mut ws, by, "with a silent listener").await;
    assert_eq!(frame, (POLICY_VIOLATION, "token revoked".to_owned()));
    assert_eq!(
        api.get_as(&token, &devices).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A new listener connection, and revocations are heard at once again.
    wait_for(
        Duration::from_secs(10),
        "a new listener connection",
        || async { proxy.listeners() == 2 },
    )
    .await;
    let token = api.token_for(tenant).await;
    assert_eq!(api.get_as(&token, &devices).await.0, StatusCode::OK);
    let mut ws = open(api.addr, tenant, &token).await;
    receives_events(&broker, tenant, &mut [&mut ws]).await;
    let revoked_at = Instant::now();
    sqlx::query("DELETE FROM api_tokens")
        .execute(&pool)
        .await
        .expect("delete");
    let by = revoked_at + Duration::from_secs(1);
    let frame = close_frame(&mut ws, by, "with the new listener").await;
    assert_eq!(frame, (POLICY_VIOLATION, "token revoked".to_owned()));
}

#[tokio::test]
async fn a_replica_waiting_for_a_held_migration_lock_gives_up_naming_the_holder() {
    let db = TestDb::migrated().await;
    let holder_name = format!("liveness-lock-holder-{}", Uuid::new_v4().simple());
    let options: PgConnectOptions = db.url.parse().expect("URL");
    let mut holder = PgConnection::connect_with(&options.application_name(&holder_name))
        .await
        .expect("holder connects");
    let (pid, user): (i32, String) = sqlx::query_as("SELECT pg_backend_pid(), current_user::text")
        .fetch_one(&mut holder)
        .await
        .expect("pid");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(gito_api::migrate::LOCK_KEY)
        .execute(&mut holder)
        .await
        .expect("lock");
    let expected = format!(
        "gave up after 2s waiting for the migration lock (PostgreSQL advisory lock {}), \
         held by pid {pid} (application_name {holder_name:?}, user {user}, client ",
        gito_api::migrate::LOCK_KEY
    );

    // Booting.
    let started = Instant::now();
    let mut command = gito_api(&db.url, &["serve"]);
    command.env("GITO_MIGRATION_ADVISORY_LOCK_WAIT", "2s");
    let mut api = ApiProcess::start(command);
    let status = timeout(Duration::from_secs(30), api.child.wait())
        .await
        .expect("gives up in time")
        .expect("wait");
    let waited = started.elapsed();
    assert_eq!(status.code(), Some(1), "{:#?}", api.log_lines());
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    wait_for(Duration::from_secs(5), "the exit line", || async {
        api.count("gito-api: ") > 0
    })
    .await;
    let logs = api.log_lines();
    let last = logs.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.starts_with(&format!("gito-api: migrating on boot: {expected}")),
        "{last}"
    );
    assert!(last.contains("state \"idle\""), "{last}");
    assert_eq!(
        api.count("another process holds the migration lock; waiting for it"),
        1,
        "{logs:#?}"
    );

    // The command the container's entrypoint runs.
    let output = gito_api(&db.url, &["migrate", "up", "--advisory-lock-wait", "2s"])
        .output()
        .await
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("gito-api: {expected}")), "{last}");

    // Released, it migrates.
    holder.close().await.expect("close");
    let output = gito_api(&db.url, &["migrate", "up", "--advisory-lock-wait", "2s"])
        .output()
        .await
        .expect("runs");
    assert!(output.status.success(), "{output:?}");
}

/// A TCP proxy to PostgreSQL that can make the token listener's connections go silent while
/// keeping them open (a half-open connection, as after a peer vanished without a reset).
struct Proxy {
    url: String,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    listeners: std::sync::Mutex<Vec<Arc<AtomicBool>>>,
}

impl Proxy {
    async fn start(db_url: &str) -> Proxy {
        let options: PgConnectOptions = db_url.parse().expect("URL");
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(ProxyState::default());
        let accepting = state.clone();
        let target = upstream.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = TcpStream::connect(&target).await.expect("upstream");
                tokio::spawn(relay(client, upstream, accepting.clone()));
            }
        });
        let at = format!("@{upstream}/");
        assert!(db_url.contains(&at), "{db_url} does not name {upstream}");
        let url = db_url.replace(&at, &format!("@127.0.0.1:{port}/"));
        let url = format!(
            "{url}{}sslmode=disable",
            if url.contains('?') { '&' } else { '?' }
        );
        Proxy { url, state }
    }

    /// Token listener connections seen so far.
    fn listeners(&self) -> usize {
        self.state.listeners.lock().expect("lock").len()
    }

    /// From now on, the listener connections seen so far pass nothing either way.
    fn freeze_listeners(&self) {
        for frozen in self.state.listeners.lock().expect("lock").iter() {
            frozen.store(true, Ordering::SeqCst);
        }
    }
}

async fn relay(client: TcpStream, upstream: TcpStream, state: Arc<ProxyState>) {
    let frozen = Arc::new(AtomicBool::new(false));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let outbound_frozen = frozen.clone();
    let outbound = async move {
        let mut buf = vec![0; 16 * 1024];
        let mut listener = false;
        loop {
            let n = client_read.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            // The startup packet carries the application_name.
            if !listener
                && buf[..n]
                    .windows(LISTENER.len())
                    .any(|w| w == LISTENER.as_bytes())
            {
                listener = true;
                state
                    .listeners
                    .lock()
                    .expect("lock")
                    .push(outbound_frozen.clone());
            }
            if outbound_frozen.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if upstream_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let inbound = async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = upstream_read.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            if frozen.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side closing ends both (a frozen one never closes: it stays half-open).
    tokio::select! {
        () = outbound => {}
        () = inbound => {}
    }
}

/// The pool pings a connection before a request only after it was idle for a while (sqlx pings
/// it as it comes back anyway): a connection terminated in between fails the request that gets
/// it, which answers 503 with `Retry-After: 1`, never 500, and the next request gets a new
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_pool_connection_costs_at_most_a_503_and_is_replaced() {
    let app = TestApp::spawn().await;
    let tenant = app.tenant("t").await;
    let (_, device) = app
        .post(
            &format!("/tenants/{tenant}/devices"),
            json!({ "name": "d" }),
        )
        .await;
    let path = format!("/tenants/{tenant}/devices/{}", id_of(&device));
    for _ in 0..5 {
        assert_eq!(app.get(&path).await.0, StatusCode::OK);
    }
    // Every pooled connection of the API, just back in the pool (no ping before the next use).
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'gito-api'",
    )
    .fetch_all(&app.pool)
    .await
    .expect("terminate");
    assert!(!terminated.is_empty(), "the API holds pooled connections");
    let client = gito_testkit::admin_client();
    let mut statuses = Vec::new();
    for _ in 0..terminated.len() + 5 {
        let response = client
            .get(app.api.url(&path))
            .send()
            .await
            .expect("answered");
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                response.headers().get("retry-after").map(|v| v.as_bytes()),
                Some(&b"1"[..]),
                "a 503 says when to retry"
            );
        }
        statuses.push(response.status());
    }
    println!(
        "after terminating {} connections: {statuses:?}",
        terminated.len()
    );
    let unavailable = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(
        unavailable <= terminated.len(),
        "at most one 503 per terminated connection: {statuses:?}"
    );
    assert!(
        statuses[statuses.len() - 5..]
            .iter()
            .all(|s| *s == StatusCode::OK),
        "replaced: {statuses:?}"
    );
}
