//! Live WebSocket clients under faults: a token revoked while its socket streams (closed within a
//! second), and a client that never reads (dropped after a bounded send, while another client
//! keeps receiving everything).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::publisher::{Plan, Publisher};
use crate::stack::{Options, Stack};
use crate::turn;
use gito_testkit::wait_for;

/// How soon a revoked token's socket must close.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);
/// gito-api's send timeout in the never-reading scenario (shipped: 10 s), shortened to keep the
/// suite quick.
const SEND_TIMEOUT: &str = "2s";
/// How long a client that never reads may stay connected once the server queued 64 KiB for it:
/// the rest of its buffers fill, then the send timeout runs out.
const STALLED_DROPPED_WITHIN: Duration = Duration::from_secs(8);

#[derive(Debug, Default)]
struct Seen {
    /// (arrival, value of metric `v` when a number) of each telemetry event.
    telemetry: Vec<(Instant, Option<f64>)>,
    closed: Option<(Instant, String)>,
}

/// A client that reads everything, as a dashboard does.
struct LiveClient {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveClient {
    async fn connect(url: &str) -> LiveClient {
        let (mut socket, response) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket {url}: {e}"));
        assert_eq!(response.status(), 101);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let why = loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let event: Value = serde_json::from_str(&text).unwrap_or_default();
                        if event["type"] == "telemetry" {
                            let value = event["metrics"]["v"].as_f64();
                            sink.lock()
                                .expect("lock")
                                .telemetry
                                .push((Instant::now(), value));
                        }
                    }
                    Some(Ok(Message::Close(frame))) => break format!("close frame {frame:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("error: {e}"),
                    None => break "end of stream".to_owned(),
                }
            };
            sink.lock().expect("lock").closed = Some((Instant::now(), why));
        });
        LiveClient { seen, task }
    }

    fn telemetry(&self) -> usize {
        self.seen.lock().expect("lock").telemetry.len()
    }

    fn closed(&self) -> Option<(Instant, String)> {
        self.seen.lock().expect("lock").closed.clone()
    }
}

impl Drop for LiveClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_closes_its_live_websocket_within_a_second() {
    let _turn = turn().await;
    let stack = Stack::start(Options::default()).await;
    let tokens = format!("/tenants/{}/tokens", stack.tenant);
    let (status, created) = stack
        .admin(
            reqwest::Method::POST,
            &tokens,
            Some(json!({ "name": "dashboard" })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (id, secret) = (
        created["id"].as_str().expect("token id").to_owned(),
        created["token"].as_str().expect("token secret").to_owned(),
    );
    let plan = Plan::new("WSREVOKE", 5, 2000, 200);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    let url = format!(
        "ws://127.0.0.1:{}/tenants/{}/ws?token={secret}",
        stack.api_port, stack.tenant
    );
    let client = LiveClient::connect(&url).await;
    wait_for(
        Duration::from_secs(15),
        "live telemetry on the socket",
        || async { client.telemetry() >= 20 },
    )
    .await;

    let (status, body) = stack
        .admin(reqwest::Method::DELETE, &format!("{tokens}/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let revoked = Instant::now();
    let received_at_revocation = client.telemetry();
    let deadline = Duration::from_secs(5);
    while client.closed().is_none() && revoked.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let closed = client.closed();
    let after = client.telemetry() - received_at_revocation;
    let took = closed.as_ref().map(|(at, _)| at.duration_since(revoked));
    let line = match &took {
        Some(took) => format!(
            "fault-matrix: token revoked with a live WebSocket: closed after {:.3} s (at most {:.0} s), {after} events sent after the revocation, {}",
            took.as_secs_f64(),
            CLOSE_WITHIN.as_secs_f64(),
            closed
                .as_ref()
                .map(|(_, why)| why.as_str())
                .unwrap_or_default()
        ),
        None => format!(
            "fault-matrix: token revoked with a live WebSocket: still open {:.0} s later, {after} events sent after the revocation",
            deadline.as_secs_f64()
        ),
    };
    print_line(&line);
    assert!(took.is_some_and(|t| t <= CLOSE_WITHIN), "{line}");
    drop(devices);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_never_reads_is_dropped_while_another_keeps_receiving() {
    let _turn = turn().await;
    let stack = Stack::start(Options {
        api_env: vec![("GITO_WS_SEND_TIMEOUT", SEND_TIMEOUT.to_owned())],
        ..Options::default()
    })
    .await;
    let path = format!("/tenants/{}/ws?token={}", stack.tenant, stack.token);
    let reader = LiveClient::connect(&format!("ws://127.0.0.1:{}{path}", stack.api_port)).await;
    let stalled = StalledClient::connect(stack.api_port, &path).await;

    // Numbered readings the reader must all see, and 16 KB readings that fill the stalled
    // client's buffers (the server's send buffer grows to 4 MiB).
    let plan = Plan::new("WSSLOW", 4, 2400, 300);
    let mut devices = Publisher::connect(&stack.external.url()).await;
    devices.stream(&plan);
    let padding = tokio::spawn({
        let url = stack.external.url();
        async move {
            let padder = Publisher::connect(&url).await;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for i in 0..500 {
                tick.tick().await;
                let text = format!("pad-{i}-{}", "x".repeat(16 * 1024));
                padder.publish("WSPAD/P000/v", text).await;
            }
            padder
        }
    });

    // Blocked: the server has a full send queue towards it.
    let blocked = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(state) = stalled.server_side() {
                if state.tx_queue > 64 * 1024 || !state.established {
                    return Instant::now();
                }
            } else {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the stalled client's buffers fill up");
    let dropped_after = tokio::time::timeout(STALLED_DROPPED_WITHIN, async {
        loop {
            if stalled.server_side().is_none_or(|s| !s.established) {
                return blocked.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .ok();
    let padder = padding.await.expect("the padding publisher");
    padder.finish().await;
    devices.finish().await;
    let report = stack.settle(plan.prefix, &plan.all()).await;

    // The reader saw every numbered reading, with no pause longer than a second while they flowed.
    let received = {
        let seen = reader.seen.lock().expect("lock");
        let values: std::collections::BTreeSet<u64> = seen
            .telemetry
            .iter()
            .filter_map(|(_, v)| v.map(|v| v as u64))
            .collect();
        let arrivals: Vec<Instant> = seen.telemetry.iter().map(|(at, _)| *at).collect();
        let gap = arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        (values.len(), gap)
    };
    let dropped = match dropped_after {
        Some(after) => format!(
            "dropped {:.1} s after 64 KiB were queued for it (send timeout {SEND_TIMEOUT})",
            after.as_secs_f64()
        ),
        None => format!(
            "still connected {:.0} s after 64 KiB were queued for it (send timeout {SEND_TIMEOUT})",
            STALLED_DROPPED_WITHIN.as_secs_f64()
        ),
    };
    let line = format!(
        "fault-matrix: a WebSocket client that never reads: {dropped}; the other client received {} of {} readings, longest gap {:.2} s; {}",
        received.0,
        plan.count,
        received.1.as_secs_f64(),
        report.line("stored")
    );
    print_line(&line);
    assert!(dropped_after.is_some(), "{line}");
    assert_eq!(received.0 as u64, plan.count, "{line}");
    assert!(received.1 <= Duration::from_secs(1), "{line}");
    report.assert_exact("a WebSocket client that never reads");
    assert!(
        reader.closed().is_none(),
        "the reading client was closed: {line}"
    );
}

fn print_line(line: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{line}\n").as_bytes());
}

/// A client that completes the handshake and then never reads, with a small receive buffer.
struct StalledClient {
    _socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    server_port: u16,
    local_port: u16,
}

/// The server's end of a connection, from /proc/net/tcp.
struct SocketState {
    established: bool,
    tx_queue: u64,
}

impl StalledClient {
    async fn connect(server_port: u16, path: &str) -> StalledClient {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket
            .connect(([127, 0, 0, 1], server_port).into())
            .await
            .expect("connect to gito-api");
        let local_port = stream.local_addr().expect("local address").port();
        let url = format!("ws://127.0.0.1:{server_port}{path}");
        let (socket, response) =
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
                .await
                .expect("WebSocket handshake");
        assert_eq!(response.status(), 101);
        StalledClient {
            _socket: socket,
            server_port,
            local_port,
        }
    }

    /// The server's socket towards this client; `None` once it is gone.
    fn server_side(&self) -> Option<SocketState> {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
        let port_of = |address: &str| {
            address
                .rsplit_once(':')
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
        };
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, queues) = (fields[1], fields[2], fields[3], fields[4]);
            if port_of(local)? != self.server_port || port_of(remote)? != self.local_port {
                return None;
            }
            let tx_queue = u64::from_str_radix(queues.split(':').next()?, 16).ok()?;
            Some(SocketState {
                established: state == "01",
                tx_queue,
            })
        })
    }
}
