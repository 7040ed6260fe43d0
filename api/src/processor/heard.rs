//! "Heard from": what the processor records, in the batch's transaction, about the devices and
//! tenants whose messages it stores, for online/offline and for staleness rules (migration 010,
//! `crate::sweeper`). A device heard while offline (or for the first time) is online again at
//! once, and the alerts of `offline` rules open for it resolve. Replayed dead letters are old
//! news and do not count: only the live path calls this.

use std::collections::BTreeMap;
use std::time::Duration;

use gito_wire::{AlertChange, AlertEvent, Connectivity, ConnectivityEvent, LiveEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::alerts::Alert;

/// How stale a device's `last_heard_at` may be: it is written at most once per this long, so a
/// device heard in every batch (twenty a second at full rate) costs one row update a second, not
/// twenty. The sweeper adds it to every deadline, so a device is never flipped offline early.
pub const HEARD_RESOLUTION: Duration = Duration::from_secs(1);

/// Records that `devices` (device → tenant) were heard now; returns the connectivity and alert
/// changes to announce after commit. `unheard` (in id order): those of `devices` that may have no
/// `device_connectivity` row yet; the others have one (a row goes only with its device), so no
/// statement probes for theirs. At 100,000 devices that probe was a quarter of the processor's
/// per-device work in PostgreSQL (bench/RESULTS.md).
pub async fn heard(
    conn: &mut PgConnection,
    devices: &BTreeMap<Uuid, Uuid>,
    unheard: &[Uuid],
) -> Result<Vec<LiveEvent>, sqlx::Error> {
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = devices.keys().copied().collect();
    let resolution = HEARD_RESOLUTION.as_secs_f64();
    // In id order, so that two processors lock the rows in the same order. Neither statement
    // touches (or locks) the row of a device written less than `HEARD_RESOLUTION` ago, and an
    // update that changes no indexed column (the device stays online) is a HOT update.
    let first_time = if unheard.is_empty() {
        Vec::new()
    } else {
        sqlx::query!(
            r#"INSERT INTO device_connectivity (device_id, last_heard_at, check_at)
           SELECT id, now(), now() FROM UNNEST($1::uuid[]) AS id ORDER BY id
           ON CONFLICT (device_id) DO NOTHING
           RETURNING device_id, check_at AS "at!""#,
            unheard
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.device_id, r.at))
        .collect()
    };
    let moved: Vec<Uuid> = sqlx::query_scalar!(
        "UPDATE device_connectivity c SET last_heard_at = now()
         FROM UNNEST($1::uuid[]) AS v(id)
         WHERE c.device_id = v.id AND c.last_heard_at < now() - make_interval(secs => $2)
         RETURNING c.device_id",
        &ids,
        resolution
    )
    .fetch_all(&mut *conn)
    .await?;
    // Only a device not written for a while can be offline: its deadline is later than that.
    let again = if moved.is_empty() {
        Vec::new()
    } else {
        sqlx::query!(
            r#"UPDATE device_connectivity SET check_at = now(), offline_since = NULL
               WHERE device_id = ANY($1) AND check_at IS NULL
               RETURNING device_id, check_at AS "at!""#,
            &moved
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.device_id, r.at))
        .collect()
    };
    let online: Vec<_> = first_time.into_iter().chain(again).collect();

    let mut events: Vec<LiveEvent> = online
        .iter()
        .map(|(device_id, at)| {
            LiveEvent::Connectivity(ConnectivityEvent {
                tenant_id: devices[device_id],
                device_id: *device_id,
                connectivity: Connectivity::Online,
                at: *at,
            })
        })
        .collect();
    if !online.is_empty() {
        let came_online: Vec<Uuid> = online.iter().map(|(id, _)| *id).collect();
        let resolved = sqlx::query_as!(
            Alert,
            "UPDATE alerts SET state = 'resolved', resolved_at = now()
             WHERE state <> 'resolved' AND (rule_id, device_id) IN (
                 SELECT r.id, d.id FROM devices d JOIN alert_rules r ON r.tenant_id = d.tenant_id
                 WHERE d.id = ANY($1) AND r.kind = 'offline')
             RETURNING id, tenant_id, rule_id, device_id, value, state, opened_at, acknowledged_at, resolved_at",
            &came_online
        )
        .fetch_all(&mut *conn)
        .await?;
        events.extend(resolved.into_iter().map(|alert| {
            LiveEvent::Alert(AlertEvent {
                event: AlertChange::Resolved,
                alert,
            })
        }));
    }

    // Staleness is measured in seconds and minutes: write a tenant's time at most once a second,
    // and never wait for another processor's lock on it (no row matches: nothing is locked).
    let mut tenants: Vec<Uuid> = devices.values().copied().collect();
    tenants.sort_unstable();
    tenants.dedup();
    sqlx::query!(
        "UPDATE tenant_ingest SET last_heard_at = now()
         WHERE tenant_id = ANY($1) AND last_heard_at < now() - interval '1 second'",
        &tenants
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO tenant_ingest (tenant_id, last_heard_at)
         SELECT id, now() FROM UNNEST($1::uuid[]) AS id ORDER BY id
         ON CONFLICT (tenant_id) DO NOTHING",
        &tenants
    )
    .execute(&mut *conn)
    .await?;
    Ok(events)
}
