//! Device online/offline and the rules that watch it (`offline`: a device offline for N seconds;
//! `stale`: no telemetry of a whole tenant for N seconds). The processor records when it hears a
//! device (`processor::heard`); this task, run by every replica of `gito-api serve` but acting in
//! one at a time (a transaction-level advisory lock taken per tick), turns silence into changes:
//! once a second it flips the devices whose inactivity timeout passed to offline, opens the alerts
//! of `offline` and `stale` rules and resolves those of `stale` rules (an `offline` rule's alert
//! resolves in the processor's transaction that hears the device again), and announces every
//! change on `{tenant_id}/alerts` for the WebSocket clients of all replicas.
//!
//! Cheap at 100,000 devices: a tick reads only index ranges, never the whole table. Online
//! devices carry `check_at`, a moment no later than their deadline (last heard + timeout); the
//! processor does not move it on every message (that would cost an index update per message), so
//! a tick takes the devices whose `check_at` passed and either flips them offline or moves
//! `check_at` to their real deadline. Offline rules look only at the devices that went offline
//! since the previous tick (`connectivity_sweeps.swept_at`).

use std::time::{Duration, Instant};

use gito_wire::{AlertChange, AlertEvent, Connectivity, ConnectivityEvent, LiveEvent};
use rumqttc::{AsyncClient, MqttOptions};
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::domain::alerts::Alert;
use crate::processor;

/// The advisory lock a replica holds while it sweeps ("gito" and the migration that added it).
pub const LOCK_KEY: i64 = 0x6769_746f_0010;
/// How often the sweeper looks.
pub const TICK: Duration = Duration::from_secs(1);
/// Devices flipped or re-armed per tick at most; the rest waits for the next tick.
const PER_TICK: i64 = 10_000;
/// How often every replica refreshes the `gito_devices` gauge.
const GAUGE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SweeperConfig {
    /// The inactivity timeout of devices whose type sets none (`GITO_DEVICE_OFFLINE_AFTER`).
    pub offline_after: Duration,
    /// The local broker, to announce changes.
    pub mqtt: MqttOptions,
}

/// Sweeps every `TICK` until `stop` (a supervised task). A database that cannot be reached is
/// retried at the next tick, never fatal.
pub async fn run(
    config: SweeperConfig,
    pool: PgPool,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut options = config.mqtt.clone();
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    // Only polled: publishing is best effort (the changes themselves are committed).
    let poller = tokio::spawn(async move {
        loop {
            if let Err(e) = eventloop.poll().await {
                tracing::debug!(error = %e, "connectivity sweeper lost the broker; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut gauge_due = Instant::now();
    let mut failing = false;
    let default_secs = config.offline_after.as_secs_f64();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match sweep(&pool, default_secs).await {
            Ok(events) => {
                failing = false;
                for event in events.iter().flatten() {
                    processor::publish(&client, event);
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "connectivity sweep failed; retrying every tick (logged once until it succeeds)");
            }
            Err(_) => {}
        }
        if Instant::now() >= gauge_due {
            gauge_due = Instant::now() + GAUGE_EVERY;
            if let Err(e) = update_gauge(&pool).await {
                tracing::debug!(error = %e, "could not count devices online");
            }
        }
    }
    poller.abort();
    let _ = client.try_disconnect();
    Ok(())
}

/// One tick: `None` if another replica is sweeping, else the changes to announce.
/// `default_secs`: the inactivity timeout of devices whose type sets none.
pub async fn sweep(
    pool: &PgPool,
    default_secs: f64,
) -> Result<Option<Vec<LiveEvent>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let leader = sqlx::query_scalar!("SELECT pg_try_advisory_xact_lock($1)", LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if leader != Some(true) {
        return Ok(None);
    }
    let mut events = flip(&mut tx, default_secs).await?;
    events.extend(offline_rules(&mut tx).await?);
    events.extend(stale_rules(&mut tx).await?);
    tx.commit().await?;
    Ok(Some(events))
}

/// Devices whose `check_at` passed: offline if their deadline passed too, else re-armed for it.
/// A deadline is last heard + timeout + `processor::HEARD_RESOLUTION`, the most `last_heard_at`
/// can lag behind the device's last message.
/// SKIP LOCKED: a device locked right now is being heard by a processor. Two statements, each
/// one index lookup per device (`OFFSET 0` keeps the planner from joining the whole devices
/// table instead; UNNEST makes it update by primary key).
async fn flip(conn: &mut PgConnection, default_secs: f64) -> Result<Vec<LiveEvent>, sqlx::Error> {
    let due = sqlx::query!(
        r#"SELECT c.device_id, d.tenant_id AS "tenant_id?", deadline.at AS "deadline!",
                  (deadline.at <= now()) AS "offline!", now() AS "now!"
           FROM (SELECT device_id, last_heard_at FROM device_connectivity
                 WHERE check_at IS NOT NULL AND check_at <= now()
                 ORDER BY check_at LIMIT $2
                 FOR UPDATE SKIP LOCKED) c
           CROSS JOIN LATERAL (SELECT tenant_id, device_type_id FROM devices
                               WHERE id = c.device_id OFFSET 0) d
           CROSS JOIN LATERAL (SELECT c.last_heard_at + make_interval(secs => $3 + COALESCE(
                                   (SELECT t.offline_after_secs FROM device_types t
                                    WHERE t.id = d.device_type_id)::float8, $1)) AS at) deadline"#,
        default_secs,
        PER_TICK,
        processor::HEARD_RESOLUTION.as_secs_f64()
    )
    .fetch_all(&mut *conn)
    .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = due.iter().map(|r| r.device_id).collect();
    let check_at: Vec<Option<OffsetDateTime>> = due
        .iter()
        .map(|r| (!r.offline).then_some(r.deadline))
        .collect();
    sqlx::query!(
        "UPDATE device_connectivity c
         SET check_at = v.check_at, offline_since = CASE WHEN v.check_at IS NULL THEN now() END
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS v(device_id, check_at)
         WHERE c.device_id = v.device_id",
        &ids,
        &check_at as &[Option<OffsetDateTime>]
    )
    .execute(&mut *conn)
    .await?;
    Ok(due
        .into_iter()
        .filter(|r| r.offline)
        .filter_map(|r| {
            Some(LiveEvent::Connectivity(ConnectivityEvent {
                tenant_id: r.tenant_id?,
                device_id: r.device_id,
                connectivity: Connectivity::Offline,
                at: r.now,
            }))
        })
        .collect())
}

/// Opens the alerts of `offline` rules for the devices (in the rule's scope) that have been
/// offline for the rule's `after_secs`, looking only at those that went offline since the last
/// tick (all of them for a rule created or changed since).
async fn offline_rules(conn: &mut PgConnection) -> Result<Vec<LiveEvent>, sqlx::Error> {
    let due = sqlx::query!(
        r#"SELECT r.id AS rule_id, r.tenant_id, v.device_id,
                  EXTRACT(EPOCH FROM now() - v.offline_since)::float8 AS "secs!"
           FROM alert_rules r
           CROSS JOIN connectivity_sweeps s
           CROSS JOIN LATERAL (
               SELECT c.device_id, c.offline_since
               FROM device_connectivity c JOIN devices d ON d.id = c.device_id
               WHERE c.check_at IS NULL
                 AND c.offline_since <= now() - make_interval(secs => r.after_secs)
                 AND c.offline_since > CASE
                     WHEN s.swept_at IS NULL OR r.updated_at > s.swept_at THEN '-infinity'::timestamptz
                     ELSE s.swept_at - make_interval(secs => r.after_secs) END
                 AND d.tenant_id = r.tenant_id
                 AND (r.device_id IS NULL OR d.id = r.device_id)
                 AND (r.device_type_id IS NULL OR d.device_type_id = r.device_type_id)
                 AND (r.device_type IS NULL OR d.device_type = r.device_type)
               FOR UPDATE OF c SKIP LOCKED
           ) v
           WHERE r.kind = 'offline'"#
    )
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query!("UPDATE connectivity_sweeps SET swept_at = now()")
        .execute(&mut *conn)
        .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = due.iter().map(|_| Uuid::now_v7()).collect();
    let rules: Vec<Uuid> = due.iter().map(|r| r.rule_id).collect();
    let tenants: Vec<Uuid> = due.iter().map(|r| r.tenant_id).collect();
    let devices: Vec<Uuid> = due.iter().map(|r| r.device_id).collect();
    let values: Vec<f64> = due.iter().map(|r| r.secs).collect();
    let opened = sqlx::query_as!(
        Alert,
        "INSERT INTO alerts (id, tenant_id, rule_id, device_id, value, opened_at)
         SELECT *, now() FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::float8[])
         ON CONFLICT (rule_id, device_id) WHERE state <> 'resolved' DO NOTHING
         RETURNING id, tenant_id, rule_id, device_id, value, state, opened_at, acknowledged_at, resolved_at",
        &ids,
        &tenants,
        &rules,
        &devices,
        &values
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(alert_events(AlertChange::Opened, opened).collect())
}

/// Opens a `stale` rule's alert (no device; `value`: seconds without telemetry) when its tenant
/// sent nothing for `after_secs` (counted from the rule's creation if it never sent anything),
/// and resolves it once telemetry flows again. Only the sweeper that holds the lock writes these
/// alerts, so checking for an open one first is enough to keep one per rule.
async fn stale_rules(conn: &mut PgConnection) -> Result<Vec<LiveEvent>, sqlx::Error> {
    let rules = sqlx::query!(
        r#"SELECT r.id, r.tenant_id, r.after_secs::float8 AS "after_secs!",
                  EXTRACT(EPOCH FROM now() - COALESCE(i.last_heard_at, r.created_at))::float8 AS "silent!",
                  EXISTS (SELECT 1 FROM alerts a WHERE a.rule_id = r.id AND a.device_id IS NULL
                          AND a.state <> 'resolved') AS "open!"
           FROM alert_rules r LEFT JOIN tenant_ingest i ON i.tenant_id = r.tenant_id
           WHERE r.kind = 'stale'"#
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut events = Vec::new();
    let to_open: Vec<_> = rules
        .iter()
        .filter(|r| r.silent >= r.after_secs && !r.open)
        .collect();
    if !to_open.is_empty() {
        let opened = sqlx::query_as!(
            Alert,
            "INSERT INTO alerts (id, tenant_id, rule_id, device_id, value, opened_at)
             SELECT id, tenant_id, rule_id, NULL, value, now()
             FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::float8[])
                 AS v(id, tenant_id, rule_id, value)
             RETURNING id, tenant_id, rule_id, device_id, value, state, opened_at, acknowledged_at, resolved_at",
            &to_open.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>(),
            &to_open.iter().map(|r| r.tenant_id).collect::<Vec<_>>(),
            &to_open.iter().map(|r| r.id).collect::<Vec<_>>(),
            &to_open.iter().map(|r| r.silent.floor()).collect::<Vec<_>>()
        )
        .fetch_all(&mut *conn)
        .await?;
        events.extend(alert_events(AlertChange::Opened, opened));
    }
    let to_resolve: Vec<Uuid> = rules
        .iter()
        .filter(|r| r.silent < r.after_secs && r.open)
        .map(|r| r.id)
        .collect();
    if !to_resolve.is_empty() {
        let resolved = sqlx::query_as!(
            Alert,
            "UPDATE alerts SET state = 'resolved', resolved_at = now()
             WHERE rule_id = ANY($1) AND device_id IS NULL AND state <> 'resolved'
             RETURNING id, tenant_id, rule_id, device_id, value, state, opened_at, acknowledged_at, resolved_at",
            &to_resolve
        )
        .fetch_all(&mut *conn)
        .await?;
        events.extend(alert_events(AlertChange::Resolved, resolved));
    }
    Ok(events)
}

fn alert_events(event: AlertChange, alerts: Vec<Alert>) -> impl Iterator<Item = LiveEvent> {
    alerts
        .into_iter()
        .map(move |alert| LiveEvent::Alert(AlertEvent { event, alert }))
}

/// `gito_devices{connectivity="online"|"offline"}`: every device of the instance (a device
/// never heard from is offline).
async fn update_gauge(pool: &PgPool) -> Result<(), sqlx::Error> {
    let counts = device_counts(pool).await?;
    set_gauge(counts);
    Ok(())
}

/// How many devices of the whole instance are online and offline: two counts, about 70 ms at
/// 100,000 devices.
pub async fn device_counts(pool: &PgPool) -> Result<DeviceCounts, sqlx::Error> {
    let counts = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM device_connectivity WHERE check_at IS NOT NULL) AS "online!",
                  (SELECT count(*) FROM devices) AS "total!""#
    )
    .fetch_one(pool)
    .await?;
    Ok(DeviceCounts {
        online: u64::try_from(counts.online).unwrap_or_default(),
        offline: u64::try_from(counts.total - counts.online).unwrap_or_default(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCounts {
    pub online: u64,
    pub offline: u64,
}

/// Sets the gauge through the `metrics` facade (whatever recorder the process installed).
pub fn set_gauge(counts: DeviceCounts) {
    for (state, count) in [
        (Connectivity::Online, counts.online),
        (Connectivity::Offline, counts.offline),
    ] {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("gito_devices", "connectivity" => state.as_str()).set(count as f64);
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    /// A series as the recorder saw it: name, labels, value.
    type Series = (String, Vec<(String, String)>, DebugValue);

    #[test]
    fn the_gauge_is_gito_devices_by_connectivity_and_nothing_else() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            set_gauge(DeviceCounts {
                online: 7,
                offline: 3,
            });
        });
        let mut seen: Vec<Series> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                (key.name().to_owned(), labels, value)
            })
            .collect();
        seen.sort_by(|a, b| a.1.cmp(&b.1));
        let label = |v: &str| vec![("connectivity".to_owned(), v.to_owned())];
        assert_eq!(
            seen,
            [
                (
                    "gito_devices".to_owned(),
                    label("offline"),
                    DebugValue::Gauge(3.0.into())
                ),
                (
                    "gito_devices".to_owned(),
                    label("online"),
                    DebugValue::Gauge(7.0.into())
                ),
            ]
        );
    }
}
