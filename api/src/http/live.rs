//! Live updates over WebSocket: `GET /tenants/{tenant_id}/ws[?device_id=]` streams that tenant's
//! telemetry and alert events. Every API replica fans out from the broker itself (not only the
//! one that wrote), through a broadcast channel that never waits for a client: a client that
//! falls behind is disconnected instead of slowing anything down.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use gito_wire::topic::{ALERTS_FILTER, TELEMETRY_FILTER};
use gito_wire::{AlertsTopic, Envelope, LiveEvent, TelemetryEvent, TelemetryTopic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Path, Query};
use super::openapi::TenantPath;
use super::{AppState, telemetry, tenants};

/// Events a client may fall behind by before it is disconnected.
const BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct Live {
    events: broadcast::Sender<Fanned>,
}

/// An event on its way to the clients: whom it concerns, and its JSON, serialized once.
#[derive(Debug, Clone)]
struct Fanned {
    tenant_id: Uuid,
    device_id: Uuid,
    json: Arc<str>,
}

impl Default for Live {
    fn default() -> Self {
        let (events, _) = broadcast::channel(BACKLOG);
        Live { events }
    }
}

impl Live {
    /// Subscribes to every tenant's telemetry and alerts (QoS 0: live views want the present)
    /// and hands each event to the connected clients, until `stop` (a supervised task).
    pub async fn fan_out(
        self,
        mut options: MqttOptions,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        options.set_clean_session(true);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for filter in [TELEMETRY_FILTER, ALERTS_FILTER] {
                        let _ = client.try_subscribe(filter, QoS::AtMostOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Some(event) = to_event(&p.topic, &p.payload) {
                        // No receiver is fine: nobody is watching.
                        let _ = self.events.send(Fanned {
                            tenant_id: event.tenant_id(),
                            device_id: event.device_id(),
                            json: event.to_json().into(),
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "live fan-out lost the broker; reconnecting");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
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

/// Stream the tenant's telemetry and alerts over a WebSocket
///
/// Upgrades to a WebSocket (101) that pushes each of the tenant's live events as a JSON text
/// message: `{"type": "telemetry", ...}` and `{"type": "alert", "event": "opened" | "resolved",
/// "alert": {...}}`; `device_id` keeps one device's (404 if it is not the tenant's). Browsers,
/// which cannot set headers here, may pass the token as `?token=`. A client that falls behind is
/// closed with 1013 (try again) and should reconnect; 503 when live updates are off
/// (`GITO_LIVE=off`).
#[utoipa::path(get, path = "/tenants/{tenant_id}/ws", tag = "live", params(TenantPath, LiveFilter),
    responses((status = 101, description = "Switched to the WebSocket protocol")))]
async fn connect(
    State(state): State<AppState>,
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
        telemetry::ensure_device(&state, tenant_id, device_id).await?;
    }
    let events = live.events.subscribe();
    Ok(upgrade.on_upgrade(move |socket| stream(socket, events, tenant_id, filter.device_id)))
}

async fn stream(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<Fanned>,
    tenant_id: Uuid,
    device_id: Option<Uuid>,
) {
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    let wanted = event.tenant_id == tenant_id && device_id.is_none_or(|d| d == event.device_id);
                    if wanted && socket.send(Message::Text(event.json.as_ref().into())).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "disconnecting a WebSocket client that fell behind");
                    let frame = CloseFrame { code: close_code::AGAIN, reason: "too slow: reconnect".into() };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return;
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
