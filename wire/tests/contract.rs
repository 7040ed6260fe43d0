//! The contract as a reader outside gito sees it: the golden examples parse, serialize back to
//! the same JSON, and are exactly what docs/ARCHITECTURE.md shows; any valid envelope survives
//! the bridge's serialization and the processor's parsing unchanged.

use std::collections::BTreeMap;

use gito_wire::{Envelope, LiveEvent, MetricValue};
use proptest::prelude::*;
use serde_json::Value;
use time::OffsetDateTime;

const ENVELOPE: &str = include_str!("../golden/envelope.json");
const TELEMETRY_EVENT: &str = include_str!("../golden/telemetry_event.json");
const ALERT_EVENT: &str = include_str!("../golden/alert_event.json");
const CONNECTIVITY_EVENT: &str = include_str!("../golden/connectivity_event.json");
const ARCHITECTURE: &str = include_str!("../../docs/ARCHITECTURE.md");

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("golden files are JSON")
}

#[test]
fn the_golden_envelope_parses_and_serializes_back_to_itself() {
    let envelope = Envelope::from_json(ENVELOPE.as_bytes()).expect("valid envelope");
    assert_eq!(envelope.metrics["CHIMNEY_TEMP"], MetricValue::Number(72.5));
    assert_eq!(envelope.metrics["burner_on"], MetricValue::Bool(true));
    assert_eq!(envelope.metrics["mode"], MetricValue::Text("auto".into()));
    let back: Value = serde_json::from_slice(&envelope.to_json()).expect("JSON");
    assert_eq!(back, json(ENVELOPE));
}

#[test]
fn the_golden_live_events_parse_and_serialize_back_to_themselves() {
    for golden in [TELEMETRY_EVENT, ALERT_EVENT, CONNECTIVITY_EVENT] {
        let event: LiveEvent = serde_json::from_str(golden).expect("a live event");
        let back: Value = serde_json::from_str(&event.to_json()).expect("JSON");
        assert_eq!(back, json(golden), "{golden}");
    }
    let LiveEvent::Alert(alert) = serde_json::from_str(ALERT_EVENT).expect("event") else {
        panic!("the alert example is an alert event");
    };
    assert_eq!(alert.alert.state, "open");
}

#[test]
fn docs_quote_the_golden_examples_verbatim() {
    for (name, golden) in [
        ("envelope.json", ENVELOPE),
        ("telemetry_event.json", TELEMETRY_EVENT),
        ("alert_event.json", ALERT_EVENT),
        ("connectivity_event.json", CONNECTIVITY_EVENT),
    ] {
        assert!(
            ARCHITECTURE.contains(golden.trim_end()),
            "docs/ARCHITECTURE.md must quote wire/golden/{name} as it is"
        );
    }
}

fn metric_value() -> impl Strategy<Value = MetricValue> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(MetricValue::Number),
        any::<bool>().prop_map(MetricValue::Bool),
        "[^\u{0}]{0,40}".prop_map(MetricValue::Text),
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    // Any instant from 1970 to the end of year 9999, to the nanosecond.
    let ts = (0i64..253_402_300_800, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        OffsetDateTime::from_unix_timestamp(secs).expect("in range")
            + time::Duration::nanoseconds(i64::from(nanos))
    });
    let metrics = prop::collection::btree_map("[^\u{0}]{1,40}", metric_value(), 1..8);
    (ts, ".{0,60}", metrics).prop_map(|(ts, source_topic, metrics)| Envelope {
        ts,
        source_topic,
        metrics: metrics.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

proptest! {
    #[test]
    fn every_valid_envelope_round_trips(envelope in envelope()) {
        prop_assert_eq!(envelope.validate(), Ok(()));
        let parsed = Envelope::from_json(&envelope.to_json());
        prop_assert_eq!(parsed, Ok(envelope));
    }
}
