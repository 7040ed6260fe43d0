//! The bridge's envelope on `{tenant_id}/devices/{device_id}/telemetry`, parsed into types
//! (docs/ARCHITECTURE.md has the contract). Anything else is an `Invalid` with its reason.

use std::collections::BTreeMap;

use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

const MAX_METRIC_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub tenant_id: Uuid,
    pub device_id: Uuid,
    pub ts: OffsetDateTime,
    pub metrics: BTreeMap<String, MetricValue>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum MetricValue {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl MetricValue {
    /// The number alert rules compare: booleans count as 1 and 0, text not at all.
    pub fn numeric(&self) -> Option<f64> {
        match self {
            MetricValue::Number(n) => Some(*n),
            MetricValue::Bool(b) => Some(f64::from(u8::from(*b))),
            MetricValue::Text(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Topic,
    Envelope,
    NoMetrics,
    /// A metric name or text value PostgreSQL cannot store, or an absurd one.
    Metric,
}

impl Invalid {
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Topic => "invalid_topic",
            Invalid::Envelope => "invalid_envelope",
            Invalid::NoMetrics => "no_metrics",
            Invalid::Metric => "invalid_metric",
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(with = "time::serde::rfc3339")]
    ts: OffsetDateTime,
    #[allow(dead_code, reason = "part of the contract; kept for logs, not stored")]
    source_topic: Option<String>,
    metrics: BTreeMap<String, MetricValue>,
}

/// `(tenant_id, device_id)` of a telemetry topic.
pub fn parse_topic(topic: &str) -> Result<(Uuid, Uuid), Invalid> {
    let mut levels = topic.split('/');
    match (
        levels.next(),
        levels.next(),
        levels.next(),
        levels.next(),
        levels.next(),
    ) {
        (Some(tenant), Some("devices"), Some(device), Some("telemetry"), None) => Ok((
            Uuid::try_parse(tenant).map_err(|_| Invalid::Topic)?,
            Uuid::try_parse(device).map_err(|_| Invalid::Topic)?,
        )),
        _ => Err(Invalid::Topic),
    }
}

pub fn parse(topic: &str, payload: &[u8]) -> Result<Telemetry, Invalid> {
    let (tenant_id, device_id) = parse_topic(topic)?;
    let envelope: Envelope = serde_json::from_slice(payload).map_err(|_| Invalid::Envelope)?;
    if envelope.metrics.is_empty() {
        return Err(Invalid::NoMetrics);
    }
    for (name, value) in &envelope.metrics {
        let bad_name =
            name.is_empty() || name.chars().count() > MAX_METRIC_CHARS || name.contains('\0');
        let bad_value = match value {
            MetricValue::Number(n) => !n.is_finite(),
            MetricValue::Text(t) => t.contains('\0'),
            MetricValue::Bool(_) => false,
        };
        if bad_name || bad_value {
            return Err(Invalid::Metric);
        }
    }
    Ok(Telemetry {
        tenant_id,
        device_id,
        ts: envelope.ts,
        metrics: envelope.metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "0192f0c4-0000-7000-8000-000000000001";
    const DEVICE: &str = "0192f0c4-0000-7000-8000-000000000002";

    fn topic() -> String {
        format!("{TENANT}/devices/{DEVICE}/telemetry")
    }

    #[test]
    fn the_bridge_envelope_parses() {
        let t = parse(&topic(), br#"{"ts":"2026-11-24T10:00:00Z","source_topic":"a/b","metrics":{"t":72.5,"on":true,"mode":"auto"}}"#)
            .expect("valid");
        assert_eq!(t.tenant_id.to_string(), TENANT);
        assert_eq!(t.metrics.len(), 3);
        assert_eq!(t.metrics["on"].numeric(), Some(1.0));
        assert_eq!(t.metrics["mode"].numeric(), None);
    }

    #[test]
    fn everything_else_is_invalid_with_a_reason() {
        for (topic, payload, reason) in [
            ("a/devices/b/telemetry".to_owned(), "{}", Invalid::Topic),
            (
                format!("{TENANT}/devices/{DEVICE}/other"),
                "{}",
                Invalid::Topic,
            ),
            (
                format!("{TENANT}/devices/{DEVICE}/telemetry/x"),
                "{}",
                Invalid::Topic,
            ),
            (topic(), "not json", Invalid::Envelope),
            (
                topic(),
                r#"{"ts":"yesterday","metrics":{"t":1}}"#,
                Invalid::Envelope,
            ),
            (
                topic(),
                r#"{"ts":"2026-11-24T10:00:00Z","metrics":{}}"#,
                Invalid::NoMetrics,
            ),
            (
                topic(),
                r#"{"ts":"2026-11-24T10:00:00Z","metrics":{"":1}}"#,
                Invalid::Metric,
            ),
            (
                topic(),
                r#"{"ts":"2026-11-24T10:00:00Z","metrics":{"t":"a\u0000b"}}"#,
                Invalid::Metric,
            ),
        ] {
            assert_eq!(
                parse(&topic, payload.as_bytes()),
                Err(reason),
                "{topic} {payload}"
            );
        }
    }
}
