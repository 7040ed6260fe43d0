//! The envelope: one message of one device, as gito-bridge publishes it and the processor (and
//! the live fan-out) reads it, on a [`TelemetryTopic`](crate::TelemetryTopic). JSON, UTF-8:
//! `{"ts": RFC 3339, "source_topic": "...", "metrics": {"name": number | bool | string}}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::limits::MAX_METRIC_CHARS;

/// One metric's value. A number is finite; text holds no NUL (PostgreSQL cannot store it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Event time from the payload, else the time the bridge received the message.
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    /// The topic on the external broker, for tracing a value back to its source. Envelopes
    /// published by hand may leave it out.
    #[serde(default)]
    pub source_topic: String,
    pub metrics: BTreeMap<String, MetricValue>,
}

/// Why a message is not a valid envelope on a valid topic; each reason is counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("not a telemetry topic")]
    Topic,
    #[error("not an envelope")]
    Envelope,
    #[error("no metrics")]
    NoMetrics,
    /// A metric name or text value PostgreSQL cannot store, or an absurd one.
    #[error("a metric name or value that cannot be stored")]
    Metric,
}

impl Invalid {
    /// The reason as counters and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::Topic => "invalid_topic",
            Invalid::Envelope => "invalid_envelope",
            Invalid::NoMetrics => "no_metrics",
            Invalid::Metric => "invalid_metric",
        }
    }
}

impl Envelope {
    /// The JSON the bridge publishes.
    pub fn to_json(&self) -> Vec<u8> {
        // Cannot fail: string keys, and a time the bridge produced within RFC 3339's range.
        serde_json::to_vec(self).expect("an envelope serializes")
    }

    /// Parses and validates a payload as the processor reads it.
    pub fn from_json(payload: &[u8]) -> Result<Envelope, Invalid> {
        let envelope: Envelope = serde_json::from_slice(payload).map_err(|_| Invalid::Envelope)?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// At least one metric; names non-empty, at most `MAX_METRIC_CHARS`, no NUL; numbers finite.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.metrics.is_empty() {
            return Err(Invalid::NoMetrics);
        }
        for (name, value) in &self.metrics {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_else_is_invalid_with_a_reason() {
        for (payload, reason) in [
            ("not json", Invalid::Envelope),
            (r#"{"ts":"yesterday","metrics":{"t":1}}"#, Invalid::Envelope),
            (
                r#"{"ts":"2026-11-24T10:00:00Z","metrics":{}}"#,
                Invalid::NoMetrics,
            ),
            (
                r#"{"ts":"2026-11-24T10:00:00Z","metrics":{"":1}}"#,
                Invalid::Metric,
            ),
            (
                r#"{"ts":"2026-11-24T10:00:00Z","metrics":{"t":"a\u0000b"}}"#,
                Invalid::Metric,
            ),
        ] {
            assert_eq!(
                Envelope::from_json(payload.as_bytes()),
                Err(reason),
                "{payload}"
            );
        }
        let long = format!(
            r#"{{"ts":"2026-11-24T10:00:00Z","metrics":{{"{}":1}}}}"#,
            "m".repeat(MAX_METRIC_CHARS + 1)
        );
        assert_eq!(Envelope::from_json(long.as_bytes()), Err(Invalid::Metric));
    }

    #[test]
    fn booleans_are_numeric_for_rules_and_text_is_not() {
        let e = Envelope::from_json(
            br#"{"ts":"2026-11-24T10:00:00Z","metrics":{"on":true,"mode":"auto"}}"#,
        )
        .expect("valid without source_topic");
        assert_eq!(e.source_topic, "");
        assert_eq!(e.metrics["on"].numeric(), Some(1.0));
        assert_eq!(e.metrics["mode"].numeric(), None);
    }
}
