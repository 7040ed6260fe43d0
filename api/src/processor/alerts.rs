//! Alert evaluation for a committed-with-it batch. A rule opens one alert per device when its
//! condition becomes true and resolves it when it turns false. Values are taken in event-time order
//! per device, and a value older than the last one evaluated (a replayed backlog, a late batch of
//! another processor) changes nothing, so no stale alert is left open.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::devices::DeviceInfo;
use crate::domain::alerts::{Alert, AlertRule};
use gito_wire::{AlertChange, AlertEvent};

/// (rule, device) → the rule and that device's values, in a stable (lock) order.
type Series<'a> = BTreeMap<(Uuid, Uuid), (&'a AlertRule, Vec<(OffsetDateTime, f64)>)>;

/// One numeric value of a device, as the batch carries it.
pub struct Sample<'a> {
    pub device_id: Uuid,
    pub device: &'a DeviceInfo,
    pub ts: OffsetDateTime,
    pub metric: &'a str,
    pub value: f64,
}

pub async fn rules_for(
    conn: &mut PgConnection,
    tenants: &[Uuid],
) -> Result<Vec<AlertRule>, sqlx::Error> {
    sqlx::query_as!(
        AlertRule,
        "SELECT id, tenant_id, name, kind, metric, operator, threshold, after_secs, device_id,
                device_type_id, device_type, created_at, updated_at
         FROM alert_rules WHERE tenant_id = ANY($1) AND kind = 'metric'",
        tenants
    )
    .fetch_all(conn)
    .await
}

fn applies(rule: &AlertRule, sample: &Sample<'_>) -> bool {
    rule.metric.as_deref() == Some(sample.metric)
        && rule.tenant_id == sample.device.tenant_id
        && rule.device_id.is_none_or(|d| d == sample.device_id)
        && rule
            .device_type_id
            .is_none_or(|t| sample.device.device_type_id == Some(t))
        && rule
            .device_type
            .as_ref()
            .is_none_or(|t| sample.device.device_type.as_ref() == Some(t))
}

/// Evaluates `samples` against `rules` inside the batch's transaction; returns what changed.
pub async fn evaluate(
    conn: &mut PgConnection,
    rules: &[AlertRule],
    samples: &[Sample<'_>],
) -> Result<Vec<AlertEvent>, sqlx::Error> {
    // (rule, device) → its values in event-time order. A BTreeMap keeps the lock order stable.
    let mut series: Series<'_> = BTreeMap::new();
    for sample in samples {
        for rule in rules.iter().filter(|r| applies(r, sample)) {
            series
                .entry((rule.id, sample.device_id))
                .or_insert((rule, Vec::new()))
                .1
                .push((sample.ts, sample.value));
        }
    }
    if series.is_empty() {
        return Ok(Vec::new());
    }
    let (rule_ids, device_ids): (Vec<Uuid>, Vec<Uuid>) = series.keys().copied().unzip();
    let states: BTreeMap<(Uuid, Uuid), (OffsetDateTime, bool)> = sqlx::query!(
        "SELECT rule_id, device_id, last_ts, firing FROM alert_rule_states
         WHERE (rule_id, device_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))
         ORDER BY rule_id, device_id FOR UPDATE",
        &rule_ids,
        &device_ids
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| ((r.rule_id, r.device_id), (r.last_ts, r.firing)))
    .collect();

    let mut events = Vec::new();
    let mut last = Vec::with_capacity(series.len());
    let mut firing_now = Vec::with_capacity(series.len());
    for ((rule_id, device_id), (rule, mut values)) in series {
        values.sort_by_key(|(ts, _)| *ts);
        let state = states.get(&(rule_id, device_id)).copied();
        let mut last_ts = state.map(|(ts, _)| ts);
        let mut firing = state.is_some_and(|(_, f)| f);
        for (ts, value) in values {
            if last_ts.is_some_and(|last| ts <= last) {
                continue;
            }

            let now_firing = rule.holds(value);
            if now_firing && !firing {
                if let Some(alert) = open(conn, rule, device_id, value, ts).await? {
                    events.push(AlertEvent {
                        event: AlertChange::Opened,
                        alert,
                    });
                }
            } else if !now_firing && firing {
                for alert in resolve(conn, rule_id, device_id, ts).await? {
                    events.push(AlertEvent {
                        event: AlertChange::Resolved,
                        alert,
                    });
                }
            }
            firing = now_firing;
            last_ts = Some(ts);
        }
        last.push(last_ts.expect("every series has at least one value"));

        firing_now.push(firing);
    }
    sqlx::query!(
        "INSERT INTO alert_rule_states (rule_id, device_id, last_ts, firing)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bool[])
         ON CONFLICT (rule_id, device_id) DO UPDATE
             SET last_ts = EXCLUDED.last_ts, firing = EXCLUDED.firing
             WHERE alert_rule_states.last_ts < EXCLUDED.last_ts",
        &rule_ids,
        &device_ids,
        &last,
        &firing_now
    )
    .execute(&mut *conn)
    .await?;
    Ok(events)
}

async fn open(
    conn: &mut PgConnection,
    rule: &AlertRule,
    device_id: Uuid,
    value: f64,
    ts: OffsetDateTime,
) -> Result<Option<Alert>, sqlx::Error> {
    sqlx::query_as!(
        Alert,
        "INSERT INTO alerts (id, tenant_id, rule_id, device_id, value, opened_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (rule_id, device_id) WHERE state <> 'resolved' DO NOTHING
         RETURNING id, tenant_id, rule_id, device_id, value, state, opened_at, acknowledged_at, resolved_at",
        Uuid::now_v7(),
        rule.tenant_id,
        rule.id,
        device_id,
        value,
        ts
    )
    .fetch_optional(conn)
    .await
}

async fn resolve(
    conn: &mut PgConnection,
    rule_id: Uuid,
    device_id: Uuid,
    ts: OffsetDateTime,
) -> Result<Vec<Alert>, sqlx::Error> {
    sqlx::query_as!(
        Alert,
        "UPDATE alerts SET state = 'resolved', resolved_at = $3
         WHERE rule_id = $1 AND device_id = $2 AND state <> 'resolved'
         RETURNING id, tenant_id, rule_id, device_id, value, state, opened_at, acknowledged_at, resolved_at",
        rule_id,
        device_id,
        ts
    )
    .fetch_all(conn)
    .await
}
