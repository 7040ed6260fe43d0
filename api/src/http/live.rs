//! Live updates over WebSocket: `GET /tenants/{tenant_id}/ws[?device_id=]` streams that tenant's
//! telemetry and alert events. Every API replica fans out from the broker itself (not only the
//! one that wrote), through a broadcast channel that never waits for a client: a client that
//! falls behind is disconnected instead of slowing anything down.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Path, Query};
use super::openapi::TenantPath;
use super::{AppState, tenants};
use crate::processor::envelope;

/// Events a client may fall behind by before it is disconnected.
const BACKLOG: usize = 4096;

#[derive(Clone)]
pub struct Live {
    events: broadcast::Sender<LiveEvent>,
}

#[derive(Debug, Clone)]
pub struct LiveEvent {
    tenant_id: Uuid,
    device_id: Option<Uuid>,
    json: Arc<str>,
}

impl Live {
    /// Subscribes to every tenant's telemetry and alerts (QoS 0: live views want the present).
    pub fn start(mut options: MqttOptions, shutdown: CancellationToken) -> Live {
        options.set_clean_session(true);
        let (events, _) = broadcast::channel(BACKLOG);
        let sender = events.clone();
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => return,
                    event = eventloop.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for filter in ["+/devices/+/telemetry", "+/alerts"] {
                            let _ = client.try_subscribe(filter, QoS::AtMostOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(event) = to_event(&p.topic, &p.payload) {
                            // No receiver is fine: nobody is watching.
                            let _ = sender.send(event);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "live fan-out lost the broker; reconnecting");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        Live { events }
    }
}

fn to_event(topic: &str, payload: &[u8]) -> Option<LiveEvent> {
    if let Some(tenant) = topic.strip_suffix("/alerts") {
        let tenant_id = Uuid::try_parse(tenant).ok()?;
        let body: Value = serde_json::from_slice(payload).ok()?;
        let device_id = body["alert"]["device_id"]
            .as_str()
            .and_then(|d| Uuid::try_parse(d).ok());
        return Some(LiveEvent {
            tenant_id,
            device_id,
            json: body.to_string().into(),
        });
    }
    let t = envelope::parse(topic, payload).ok()?;
    let metrics: serde_json::Map<String, Value> = t
        .metrics
        .iter()
        .map(|(k, v)| {
            let value = match v {
                envelope::MetricValue::Number(n) => json!(n),
                envelope::MetricValue::Bool(b) => json!(b),
                envelope::MetricValue::Text(s) => json!(s),
            };
            (k.clone(), value)
        })
        .collect();
    let ts =
        t.ts.format(&time::format_description::well_known::Rfc3339)
            .ok()?;
    let body = json!({ "type": "telemetry", "tenant_id": t.tenant_id, "device_id": t.device_id, "ts": ts, "metrics": metrics });
    Some(LiveEvent {
        tenant_id: t.tenant_id,
        device_id: Some(t.device_id),
        json: body.to_string().into(),
    })
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

/// Upgrades to a WebSocket that pushes the tenant's telemetry and alert events as JSON text
/// messages. A client that falls behind is closed with 1013 (try again) and should reconnect.
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
    let events = live.events.subscribe();
    Ok(upgrade.on_upgrade(move |socket| stream(socket, events, tenant_id, filter.device_id)))
}

async fn stream(
    mut socket: WebSocket,
    mut events: broadcast::Receiver<LiveEvent>,
    tenant_id: Uuid,
    device_id: Option<Uuid>,
) {
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    let wanted = event.tenant_id == tenant_id && (device_id.is_none() || event.device_id == device_id);
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
