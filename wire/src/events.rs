//! What WebSocket clients receive, and what the processor and the connectivity sweeper announce
//! on an [`AlertsTopic`](crate::AlertsTopic): one JSON object per event, told apart by `"type"`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::envelope::MetricValue;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    Telemetry(TelemetryEvent),
    Alert(AlertEvent),
    Connectivity(ConnectivityEvent),
}

impl LiveEvent {
    pub fn tenant_id(&self) -> Uuid {
        match self {
            LiveEvent::Telemetry(t) => t.tenant_id,
            LiveEvent::Alert(a) => a.alert.tenant_id,
            LiveEvent::Connectivity(c) => c.tenant_id,
        }
    }

    /// The device the event concerns; `None` for a tenant-level alert (a staleness rule's).
    pub fn device_id(&self) -> Option<Uuid> {
        match self {
            LiveEvent::Telemetry(t) => Some(t.device_id),
            LiveEvent::Alert(a) => a.alert.device_id,
            LiveEvent::Connectivity(c) => Some(c.device_id),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a live event serializes")
    }
}

/// One envelope of one device, as it was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEvent {
    pub tenant_id: Uuid,
    pub device_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    pub metrics: BTreeMap<String, MetricValue>,
}

/// An alert the processor opened or resolved, committed with the batch that caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub event: AlertChange,
    pub alert: Alert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertChange {
    Opened,
    Resolved,
}

/// An alert as the REST API lists it and events carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub rule_id: Uuid,
    /// `null` for an alert of a tenant-level rule (kind `stale`).
    pub device_id: Option<Uuid>,
    pub value: f64,
    /// `open`, `acknowledged` or `resolved`.
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub acknowledged_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
}

/// Whether a device is heard from: `offline` once nothing arrived for its inactivity timeout (or
/// never anything), `online` again with its next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Connectivity {
    Online,
    Offline,
}

impl Connectivity {
    pub fn as_str(self) -> &'static str {
        match self {
            Connectivity::Online => "online",
            Connectivity::Offline => "offline",
        }
    }

    pub fn of(online: bool) -> Connectivity {
        if online {
            Connectivity::Online
        } else {
            Connectivity::Offline
        }
    }
}

/// A device went online or offline, at `at` (the database's clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectivityEvent {
    pub tenant_id: Uuid,
    pub device_id: Uuid,
    pub connectivity: Connectivity,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}
