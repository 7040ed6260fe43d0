//! Live updates over WebSocket: `GET /tenants/{tenant_id}/ws[?device_id=]` streams that tenant's
//! telemetry, alert and connectivity events. Every API replica fans out from the broker itself (not only the
//! one that wrote), through a broadcast channel that never waits for a client: a client that
//! falls behind is disconnected instead of slowing anything down, and so is one that stops
//! reading (a send that cannot finish within `GITO_WS_SEND_TIMEOUT`). A socket opened with a
//! tenant token closes (1008, "token revoked") within a second of the token's revocation.
//! Telemetry is taken from the broker only while at least one client is connected: a replica
//! nobody watches costs the broker no second copy of every message and itself no parsing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use gito_wire::topic::{ALERTS_FILTER, TELEMETRY_FILTER};
use gito_wire::{AlertsTopic, Envelope, LiveEvent, TelemetryEvent, TelemetryTopic};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::auth::{Credential, Principal};
use super::error::ApiError;
use super::extract::{Path, Query};
use super::openapi::TenantPath;
use super::token_cache::Revocation;
use super::{AppState, telemetry, tenants};
use crate::status::{self, Health};

/// Events a client may fall behind by before it is disconnected: with the socket's own buffers,
/// all a client can hold up.
const BACKLOG: usize = 4096;
/// Sending a close frame, at most: a client that does not read will not take it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a new socket waits for the fan-out's telemetry subscription, at most.
const TELEMETRY_WAIT: Duration = Duration::from_secs(1);
/// Looking a token up again, at most; past it the socket is closed (1013) as unverifiable.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Live {
    events: broadcast::Sender<Fanned>,
    send_timeout: Duration,
    /// Clients dropped because a send did not finish in time.
    stalled: Arc<AtomicU64>,
    /// Clients connected, and a wake-up for the fan-out whenever that changes: it subscribes to
    /// telemetry or leaves it.
    clients: Arc<(AtomicUsize, Notify)>,
    /// Whether the broker has acknowledged the telemetry subscription (and not left it since).
    flowing: Arc<watch::Sender<bool>>,
}

/// An event on its way to the clients: whom it concerns, and its JSON, serialized once.
#[derive(Debug, Clone)]
struct Fanned {
    tenant_id: Uuid,
    /// `None` for a tenant-level alert: only clients without a device filter get it.
    device_id: Option<Uuid>,
    json: Arc<str>,
}

impl Live {
    /// `send_timeout`: how long one message to a client may take before it is dropped.
    pub fn new(send_timeout: Duration) -> Live {
        let (events, _) = broadcast::channel(BACKLOG);
        Live {
            events,
            send_timeout,
            stalled: Arc::default(),
            clients: Arc::default(),
            flowing: Arc::new(watch::channel(false).0),
        }
    }

    /// Subscribes to every tenant's telemetry and events (alerts, connectivity; QoS 0: live views want the present)
    /// and hands each event to the connected clients, until `stop` (a supervised task).
    /// `health`: `live` up while connected, and `broker` too if `reports_broker` (no processor).
    pub async fn fan_out(
        self,
        mut options: MqttOptions,
        health: Health,
        reports_broker: bool,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        options.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let mut telemetry = Following::default();
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = self.clients.1.notified() => {
                    telemetry.follow(&self, &client);
                    continue;
                }
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    health.up(status::LIVE);
                    if reports_broker {
                        health.up(status::BROKER);
                    }
                    telemetry = Following::default();
                    self.flowing.send_replace(false);
                    if client.try_subscribe(ALERTS_FILTER, QoS::AtMostOnce).is_ok() {
                        telemetry.queued.push_back(false);
                    }
                    telemetry.follow(&self, &client);
                }
                Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => {
                    if telemetry.queued.pop_front() == Some(true) {
                        telemetry.pkid = Some(pkid);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if telemetry.pkid == Some(ack.pkid) {
                        self.flowing.send_replace(telemetry.asked);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(event) = to_event(&p.topic, &p.payload) {
                        // No receiver is fine: the last client just left.
                        let _ = self.events.send(Fanned {
                            tenant_id: event.tenant_id(),
                            device_id: event.device_id(),
                            json: event.to_json().into(),
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.flowing.send_replace(false);
                    health.down(status::LIVE, &e);
                    if reports_broker {
                        health.down(status::BROKER, &e);
                    }
                    tracing::debug!(error = %e, "live fan-out lost the broker; reconnecting");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Waits (at most `TELEMETRY_WAIT`) until the broker has acknowledged the fan-out's
    /// telemetry subscription, so that a client whose socket opens gets every message published
    /// from then on. Past the wait (the broker is away) the socket opens anyway.
    async fn telemetry_flowing(&self) {
        let mut flowing = self.flowing.subscribe();
        let _ = timeout(TELEMETRY_WAIT, flowing.wait_for(|f| *f)).await;
    }
}

/// The fan-out's telemetry subscription in one broker session: asked for while any client is
/// connected, left once none is.
#[derive(Debug, Default)]
struct Following {
    /// Subscribed (or on its way) in this session.
    asked: bool,
    /// The subscribe requests queued and not sent yet, oldest first: whether each is telemetry's
    /// (the event loop sends them in order and reports each packet id as it goes out).
    queued: VecDeque<bool>,
    /// The packet id of the telemetry subscription once sent; its SubAck means it is flowing.
    pkid: Option<u16>,
}

impl Following {
    fn follow(&mut self, live: &Live, client: &AsyncClient) {
        let watched = live.clients.0.load(Ordering::Acquire) > 0;
        if watched && !self.asked {
            // A full request queue: the broker connection is in trouble, and the next session
            // (ConnAck) subscribes from scratch.
            if client
                .try_subscribe(TELEMETRY_FILTER, QoS::AtMostOnce)
                .is_ok()
            {
                self.asked = true;
                self.queued.push_back(true);
            }
        } else if !watched && self.asked && client.try_unsubscribe(TELEMETRY_FILTER).is_ok() {
            self.asked = false;
            self.pkid = None;
            live.flowing.send_replace(false);
        }
    }
}

/// The event a message on the local broker stands for; `None` for anything that is not one
/// (the processor has already counted and dropped it).
fn to_event(topic: &str, payload: &[u8]) -> Option<LiveEvent> {
    if let Ok(alerts) = topic.parse::<AlertsTopic>() {
        let event: LiveEvent = serde_json::from_slice(payload).ok()?;
        return (event.tenant_id() == alerts.tenant_id).then_some(event);
    }
    let topic: TelemetryTopic = topic.parse().ok()?;
    let envelope = Envelope::from_json(payload).ok()?;
    // To the microsecond, as stored and as the REST API answers.
    let ts = envelope
        .ts
        .replace_nanosecond(envelope.ts.nanosecond() / 1_000 * 1_000)
        .ok()?;
    Some(LiveEvent::Telemetry(TelemetryEvent {
        tenant_id: topic.tenant_id,
        device_id: topic.device_id,
        ts,
        metrics: envelope.metrics,
    }))
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(connect))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LiveFilter {
    /// Only this device's events.
    device_id: Option<Uuid>,
    /// The token, for browsers (they cannot set headers on a WebSocket); checked by the auth
    /// layer before this handler runs.
    #[serde(default, rename = "token")]
    #[param(rename = "token")]
    _token: Option<String>,
}

/// Stream the tenant's telemetry, alerts and connectivity over a WebSocket
///
/// Upgrades to a WebSocket (101) that pushes each of the tenant's live events as a JSON text
/// message: `{"type": "telemetry", ...}`, `{"type": "alert", "event": "opened" | "resolved",
/// "alert": {...}}` and `{"type": "connectivity", "device_id": ..., "connectivity": "online" |
/// "offline", "at": ...}`; `device_id` keeps one device's (404 if it is not the tenant's; alerts
/// of tenant-level rules, which have no device, are then left out). Browsers,
/// which cannot set headers here, may pass the token as `?token=`. A client that falls behind is
/// closed with 1013 (try again) and should reconnect, one that stops reading is dropped; a socket
/// opened with a tenant token is closed with 1008 ("token revoked") within a second of the
/// token's revocation. 503 when live updates are off (`GITO_LIVE=off`).
#[utoipa::path(get, path = "/tenants/{tenant_id}/ws", tag = "live", params(TenantPath, LiveFilter),
    responses((status = 101, description = "Switched to the WebSocket protocol")))]
async fn connect(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    credential: Option<Extension<Credential>>,
    Path(tenant_id): Path<Uuid>,
    Query(filter): Query<LiveFilter>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let live = state
        .live
        .clone()
        .ok_or_else(|| ApiError::Unavailable("live updates are disabled (GITO_LIVE=off)".into()))?;
    tenants::ensure_exists(&state.pool, tenant_id).await?;
    // A filter on a device that is not there would stay silent forever: say so instead.
    if let Some(device_id) = filter.device_id {
        telemetry::ensure_device(&state.pool, tenant_id, device_id).await?;
    }
    // The admin token cannot be revoked; a tenant token is watched as long as the socket is open.
    let guard = match (principal, credential) {
        (Principal::Tenant(_), Some(Extension(credential))) => Some(TokenGuard {
            state,
            credential,
            tenant_id,
        }),
        _ => None,
    };
    // Counted from here (an upgrade that fails drops the gauge with the closure), so that the
    // fan-out takes telemetry before the socket opens.
    let watching = ClientGauge::open(live.clients.clone());
    let events = live.events.subscribe();
    live.telemetry_flowing().await;
    let client = Client {
        tenant_id,
        device_id: filter.device_id,
    };
    Ok(upgrade.on_upgrade(move |socket| stream(socket, live, events, client, guard, watching)))
}

/// What one client asked for.
#[derive(Debug, Clone, Copy)]
struct Client {
    tenant_id: Uuid,
    device_id: Option<Uuid>,
}

impl Client {
    fn wants(&self, event: &Fanned) -> bool {
        event.tenant_id == self.tenant_id
            && self.device_id.is_none_or(|d| event.device_id == Some(d))
    }
}

async fn stream(
    mut socket: WebSocket,
    live: Live,
    mut events: broadcast::Receiver<Fanned>,
    client: Client,
    guard: Option<TokenGuard>,
    _watching: ClientGauge,
) {
    // One future for the socket's whole life, polled beside everything it waits for (sends
    // included), so that a revocation closes it whatever it is doing.
    let verdict = async move {
        match guard {
            Some(guard) => guard.revoked().await,
            None => std::future::pending().await,
        }
    };
    let mut verdict = std::pin::pin!(verdict);
    loop {
        tokio::select! {
            frame = &mut verdict => return revoke(socket, frame).await,
            event = events.recv() => match event {
                Ok(event) if client.wants(&event) => {
                    let message = Message::Text(event.json.as_ref().into());
                    tokio::select! {
                        frame = &mut verdict => return revoke(socket, frame).await,
                        sent = timeout(live.send_timeout, socket.send(message)) => match sent {
                            Ok(Ok(())) => metrics::counter!("gito_live_events_sent_total").increment(1),
                            Ok(Err(_)) => return,
                            Err(_) => {
                                dropped("stalled");
                                let dropped_total = live.stalled.fetch_add(1, Ordering::Relaxed) + 1;
                                tracing::warn!(
                                    dropped_total,
                                    send_timeout_ms = u64::try_from(live.send_timeout.as_millis()).unwrap_or(u64::MAX),
                                    "dropped a WebSocket client that stopped reading (a message did not go out within GITO_WS_SEND_TIMEOUT)"
                                );
                                return;
                            }
                        },
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    dropped("lagged");
                    tracing::info!(missed, "disconnecting a WebSocket client that fell behind");
                    let frame = CloseFrame { code: close_code::AGAIN, reason: "too slow: reconnect".into() };
                    return close(socket, frame).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Counts an open client for as long as it lives (`gito_live_clients`, and for the fan-out,
/// which it wakes as it comes and goes).
struct ClientGauge(Arc<(AtomicUsize, Notify)>);

impl ClientGauge {
    fn open(clients: Arc<(AtomicUsize, Notify)>) -> ClientGauge {
        metrics::gauge!("gito_live_clients").increment(1.0);
        clients.0.fetch_add(1, Ordering::AcqRel);
        clients.1.notify_one();
        ClientGauge(clients)
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        metrics::gauge!("gito_live_clients").decrement(1.0);
        self.0.0.fetch_sub(1, Ordering::AcqRel);
        self.0.1.notify_one();
    }
}

/// `reason`: `lagged`, `stalled` or `revoked` (the token was revoked or cannot be verified).
fn dropped(reason: &'static str) {
    metrics::counter!("gito_live_clients_dropped_total", "reason" => reason).increment(1);
}

async fn revoke(socket: WebSocket, frame: CloseFrame) {
    dropped("revoked");
    close(socket, frame).await;
}

/// Sends `frame` if the client takes it soon, then drops the connection either way.
async fn close(mut socket: WebSocket, frame: CloseFrame) {
    let _ = timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
}

/// A tenant token behind an open socket, and how to tell when it stops being valid.
struct TokenGuard {
    state: AppState,
    credential: Credential,
    tenant_id: Uuid,
}

impl TokenGuard {
    /// Completes with the close frame once the token is revoked, or can no longer be vouched for.
    async fn revoked(self) -> CloseFrame {
        let Some(key_id) = self.credential.key_id() else {
            return revoked();
        };
        let mut watch = self.state.tokens.watch(key_id);
        // Checked by the auth layer before the watch began: once more, in case it fell between.
        if let Some(frame) = self.check().await {
            return frame;
        }
        loop {
            let check = match watch.revocations.recv().await {
                Ok(Revocation::Evicted(key)) => *key == *watch.key_id(),
                Ok(Revocation::Gone(key)) if *key == *watch.key_id() => {
                    tracing::info!("closing a WebSocket: its token was revoked");
                    return revoked();
                }
                Ok(Revocation::Gone(_)) => false,
                Ok(Revocation::Unverifiable) => return unverifiable(),
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                // The cache is gone: the process is stopping.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            };
            if check && let Some(frame) = self.check().await {
                return frame;
            }
        }
    }

    /// `None` while the token still stands for this tenant.
    async fn check(&self) -> Option<CloseFrame> {
        match timeout(RECHECK_TIMEOUT, self.credential.resolve(&self.state)).await {
            Ok(Ok(Principal::Tenant(tenant_id))) if tenant_id == self.tenant_id => None,
            Ok(Ok(_) | Err(ApiError::Unauthorized(_))) => {
                tracing::info!("closing a WebSocket: its token was revoked");
                Some(revoked())
            }
            Ok(Err(_)) | Err(_) => Some(unverifiable()),
        }
    }
}

fn revoked() -> CloseFrame {
    CloseFrame {
        code: close_code::POLICY,
        reason: "token revoked".into(),
    }
}

fn unverifiable() -> CloseFrame {
    CloseFrame {
        code: close_code::AGAIN,
        reason: "cannot verify the token: reconnect".into(),
    }
}
