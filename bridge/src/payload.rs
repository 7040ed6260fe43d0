//! Telemetry payloads as devices send them, parsed into metrics: a JSON object (each numeric or
//! boolean field is a metric; `ts`/`timestamp` is the event time), a bare number, `true`/`false`,
//! or any other UTF-8 text, kept as a string value.

use std::collections::BTreeMap;

use gito_wire::MetricValue;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The event time the payload carried, if any.
    pub ts: Option<OffsetDateTime>,
    pub metrics: BTreeMap<String, MetricValue>,
}

/// Why a payload is skipped; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejected {
    TooLarge,
    InvalidUtf8,
    NonFinite,
    InvalidTimestamp,
    /// Empty payload, or a JSON object without a numeric or boolean field.
    NoMetrics,
}

impl Rejected {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::TooLarge => "too_large",
            Rejected::InvalidUtf8 => "invalid_utf8",
            Rejected::NonFinite => "non_finite",
            Rejected::InvalidTimestamp => "invalid_timestamp",
            Rejected::NoMetrics => "no_metrics",
        }
    }
}

/// Epoch milliseconds up to the end of year 9999.
const MAX_EPOCH_MS: f64 = 253_402_300_799_999.0;

pub fn parse(payload: &[u8], topic_metric: &str, max_bytes: usize) -> Result<Reading, Rejected> {
    if payload.len() > max_bytes {
        return Err(Rejected::TooLarge);
    }
    let text = std::str::from_utf8(payload).map_err(|_| Rejected::InvalidUtf8)?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Rejected::NoMetrics);
    }
    let single = |value| {
        Ok(Reading {
            ts: None,
            metrics: BTreeMap::from([(topic_metric.to_owned(), value)]),
        })
    };
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(fields)) => parse_object(fields),
        Ok(Value::Number(n)) => single(MetricValue::Number(finite(n.as_f64())?)),
        Ok(Value::Bool(b)) => single(MetricValue::Bool(b)),
        Ok(Value::String(s)) => single(MetricValue::Text(s)),
        Ok(Value::Array(_) | Value::Null) => single(MetricValue::Text(trimmed.to_owned())),
        // JSON whose only fault is a number beyond f64 (`{"v": 1e999}`).
        Err(e) if e.is_syntax() && e.to_string().starts_with("number out of range") => {
            Err(Rejected::NonFinite)
        }
        // Not JSON. `NaN`, `inf` and `1e999` parse as floats here; they are refused, not stored.
        Err(_) => match trimmed.parse::<f64>() {
            Ok(f) if !f.is_finite() => Err(Rejected::NonFinite),
            _ => single(MetricValue::Text(text.to_owned())),
        },
    }
}

fn parse_object(fields: serde_json::Map<String, Value>) -> Result<Reading, Rejected> {
    let mut ts = None;
    let mut metrics = BTreeMap::new();
    for (key, value) in fields {
        if key == "ts" || (key == "timestamp" && ts.is_none()) {
            ts = Some(timestamp(&value)?);
            continue;
        }
        match value {
            Value::Number(n) => {
                metrics.insert(key, MetricValue::Number(finite(n.as_f64())?));
            }
            Value::Bool(b) => {
                metrics.insert(key, MetricValue::Bool(b));
            }
            _ => {}
        }
    }
    if metrics.is_empty() {
        return Err(Rejected::NoMetrics);
    }
    Ok(Reading { ts, metrics })
}

fn finite(value: Option<f64>) -> Result<f64, Rejected> {
    value.filter(|f| f.is_finite()).ok_or(Rejected::NonFinite)
}

fn timestamp(value: &Value) -> Result<OffsetDateTime, Rejected> {
    match value {
        Value::String(s) => {
            OffsetDateTime::parse(s, &Rfc3339).map_err(|_| Rejected::InvalidTimestamp)
        }
        Value::Number(n) => {
            let ms = n
                .as_f64()
                .filter(|ms| (0.0..=MAX_EPOCH_MS).contains(ms))
                .ok_or(Rejected::InvalidTimestamp)?;
            // Whole milliseconds: sub-millisecond epoch floats are noise from the sender.
            let nanos = (ms.round() as i128) * 1_000_000;
            OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| Rejected::InvalidTimestamp)
        }
        _ => Err(Rejected::InvalidTimestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const LIMIT: usize = 1024;

    fn metrics(payload: &str) -> BTreeMap<String, MetricValue> {
        parse(payload.as_bytes(), "T", LIMIT)
            .expect("parses")
            .metrics
    }

    #[test]
    fn bare_values_become_the_topics_metric() {
        assert_eq!(
            metrics("72.5"),
            BTreeMap::from([("T".into(), MetricValue::Number(72.5))])
        );
        assert_eq!(
            metrics(" -3 \n"),
            BTreeMap::from([("T".into(), MetricValue::Number(-3.0))])
        );
        assert_eq!(
            metrics("true"),
            BTreeMap::from([("T".into(), MetricValue::Bool(true))])
        );
        assert_eq!(
            metrics("open"),
            BTreeMap::from([("T".into(), MetricValue::Text("open".into()))])
        );
        assert_eq!(
            metrics("\"closed\""),
            BTreeMap::from([("T".into(), MetricValue::Text("closed".into()))])
        );
    }

    #[test]
    fn json_objects_give_one_metric_per_numeric_or_boolean_field_and_an_event_time() {
        let reading = parse(br#"{"temp": 21.5, "on": false, "label": "x", "nested": {"a": 1}, "ts": "2026-11-24T10:00:00Z"}"#, "T", LIMIT)
            .expect("parses");
        assert_eq!(reading.ts, Some(datetime!(2026-11-24 10:00:00 UTC)));
        assert_eq!(
            reading.metrics,
            BTreeMap::from([
                ("on".into(), MetricValue::Bool(false)),
                ("temp".into(), MetricValue::Number(21.5))
            ])
        );
        let epoch = parse(br#"{"v": 1, "timestamp": 1795515200000}"#, "T", LIMIT).expect("parses");
        assert_eq!(epoch.ts, Some(datetime!(2026-11-24 10:13:20 UTC)));
    }

    #[test]
    fn bad_payloads_are_rejected_with_their_reason() {
        assert_eq!(parse(&[0xff, 0xfe], "T", LIMIT), Err(Rejected::InvalidUtf8));
        assert_eq!(
            parse(&vec![b'1'; LIMIT + 1], "T", LIMIT),
            Err(Rejected::TooLarge)
        );
        for text in ["NaN", "inf", "-infinity", "1e999"] {
            assert_eq!(
                parse(text.as_bytes(), "T", LIMIT),
                Err(Rejected::NonFinite),
                "{text}"
            );
        }
        assert_eq!(
            parse(br#"{"v": 1e999}"#, "T", LIMIT),
            Err(Rejected::NonFinite)
        );
        assert_eq!(
            parse(br#"{"v": 1, "ts": "yesterday"}"#, "T", LIMIT),
            Err(Rejected::InvalidTimestamp)
        );
        assert_eq!(
            parse(br#"{"v": 1, "ts": -5}"#, "T", LIMIT),
            Err(Rejected::InvalidTimestamp)
        );
        assert_eq!(
            parse(br#"{"label": "x"}"#, "T", LIMIT),
            Err(Rejected::NoMetrics)
        );
        assert_eq!(parse(b"   ", "T", LIMIT), Err(Rejected::NoMetrics));
    }
}
