//! One batch, start to finish: parse each message into the wire contract's types, check its
//! device (and that the device belongs to the topic's tenant), then store the rows, touch the
//! devices and evaluate alert rules in one transaction.

use std::collections::{BTreeSet, HashMap};

use anyhow::Context as _;
use gito_wire::{AlertEvent, Envelope, Invalid, MetricValue, TelemetryTopic};
use rumqttc::Publish;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::alerts::{self, Sample};
use super::counters::Counters;
use super::devices::DeviceCache;
use super::store::{self, Rows};

/// One valid message: its topic and its envelope.
struct Telemetry {
    topic: TelemetryTopic,
    envelope: Envelope,
}

fn parse(message: &Publish) -> Result<Telemetry, Invalid> {
    let topic: TelemetryTopic = message.topic.parse()?;
    let envelope = Envelope::from_json(&message.payload)?;
    Ok(Telemetry { topic, envelope })
}

/// Parses, checks and stores one batch in one transaction; returns the alert changes.
pub async fn process(
    pool: &PgPool,
    cache: &DeviceCache,
    counters: &Counters,
    batch: &[Publish],
) -> anyhow::Result<Vec<AlertEvent>> {
    Counters::add(&counters.messages, batch.len() as u64);
    let parsed: Vec<Telemetry> = batch
        .iter()
        .filter_map(|m| match parse(m) {
            Ok(t) => Some(t),
            Err(reason) => {
                drop_message(counters, reason.as_str(), &m.topic);
                None
            }
        })
        .collect();
    let ids: Vec<Uuid> = parsed.iter().map(|t| t.topic.device_id).collect();
    let known = cache
        .lookup(pool, &ids)
        .await
        .context("looking up devices")?;
    let mut rows = Rows::default();
    let mut newest: HashMap<Uuid, OffsetDateTime> = HashMap::new();
    let mut samples = Vec::new();
    let mut tenants = BTreeSet::new();
    for Telemetry { topic, envelope } in &parsed {
        let Some(device) = known
            .get(&topic.device_id)
            .and_then(Option::as_ref)
            .filter(|d| d.tenant_id == topic.tenant_id)
        else {
            // Unknown device, or a device of another tenant: a publisher may never write there.
            drop_message(counters, "unknown_device", &topic.to_string());
            continue;
        };
        tenants.insert(topic.tenant_id);
        let seen = newest.entry(topic.device_id).or_insert(envelope.ts);
        *seen = (*seen).max(envelope.ts);
        for (metric, value) in &envelope.metrics {
            let number = value.numeric();
            rows.device_id.push(topic.device_id);
            rows.ts.push(envelope.ts);
            rows.metric.push(metric.clone());
            rows.flagged.push(device.is_unexpected(metric, number));
            match value {
                MetricValue::Number(n) => {
                    rows.value.push(Some(*n));
                    rows.value_json.push(None);
                }
                MetricValue::Bool(b) => {
                    rows.value.push(number);
                    rows.value_json.push(Some((*b).into()));
                }
                MetricValue::Text(s) => {
                    rows.value.push(None);
                    rows.value_json.push(Some(s.clone().into()));
                }
            }
            if let Some(value) = number {
                samples.push(Sample {
                    device_id: topic.device_id,
                    device,
                    ts: envelope.ts,
                    metric,
                    value,
                });
            }
        }
    }
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let inserted = store::insert(&mut tx, &rows).await?;
    let (devices, times): (Vec<Uuid>, Vec<OffsetDateTime>) = newest.into_iter().unzip();
    store::touch(&mut tx, &devices, &times).await?;
    let tenants: Vec<Uuid> = tenants.into_iter().collect();
    let rules = alerts::rules_for(&mut tx, &tenants).await?;
    let events = if rules.is_empty() {
        Vec::new()
    } else {
        alerts::evaluate(&mut tx, &rules, &samples).await?
    };
    tx.commit().await?;
    Counters::add(&counters.rows, inserted);
    Counters::add(&counters.duplicate_rows, rows.len() as u64 - inserted);
    Counters::add(
        &counters.flagged,
        rows.flagged.iter().filter(|f| **f).count() as u64,
    );
    Ok(events)
}

fn drop_message(counters: &Counters, reason: &str, topic: &str) {
    Counters::add(&counters.dropped, 1);
    tracing::warn!(reason, topic, "message dropped");
}
