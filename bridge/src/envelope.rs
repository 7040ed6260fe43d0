//! The message gito-bridge publishes to the local broker and the processor consumes: the
//! contract between them (docs/ARCHITECTURE.md). Topic `{tenant_id}/devices/{device_id}/telemetry`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::payload::MetricValue;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Event time from the payload, else the time the bridge received the message.
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    /// The topic on the external broker, for tracing a value back to its source.
    pub source_topic: String,
    pub metrics: BTreeMap<String, MetricValue>,
}

pub fn telemetry_topic(tenant_id: Uuid, device_id: Uuid) -> String {
    format!("{tenant_id}/devices/{device_id}/telemetry")
}
