//! Which devices exist, to which tenant they belong, and what their type's schema expects. Looked
//! up once per batch for the devices not cached; entries expire so that a reclassified device or
//! an edited schema is picked up within a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::telemetry_schema::TelemetrySchema;

const TTL: Duration = Duration::from_secs(30);
/// Unknown ids are remembered briefly, so that garbage cannot make every batch query again.
const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// Past this many entries, expired ones are dropped (and if all are fresh, all of them): the cache
/// must not grow with every id ever seen.
const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub tenant_id: Uuid,
    pub device_type_id: Option<Uuid>,
    pub device_type: Option<String>,
    pub schema: Option<TelemetrySchema>,
}

impl DeviceInfo {
    /// Values the type's schema does not expect: an unlisted metric, or one outside min/max.
    pub fn is_unexpected(&self, metric: &str, value: Option<f64>) -> bool {
        self.schema
            .as_ref()
            .is_some_and(|schema| schema.is_unexpected(metric, value))
    }
}

#[derive(Default)]
pub struct DeviceCache {
    entries: Mutex<Entries>,
}

impl DeviceCache {
    /// What is known of `ids` (`None`: no such device).
    pub async fn lookup(
        &self,
        pool: &PgPool,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Option<DeviceInfo>>, sqlx::Error> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let entries = self.entries.lock().expect("cache lock");
            for id in ids {
                match entries.get(id) {
                    Some((at, info))
                        if at.elapsed() < if info.is_some() { TTL } else { UNKNOWN_TTL } =>
                    {
                        found.insert(*id, info.clone());
                    }
                    _ => missing.push(*id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        missing.sort_unstable();
        missing.dedup();
        // A join on UNNEST probes the primary key per id; `id = ANY($1)` over a table the
        // planner still thinks is small became a scan comparing every row with every id (the
        // pipeline bench at 100,000 devices: 1 s per batch).
        let rows = sqlx::query!(
            r#"SELECT d.id AS "id!", d.tenant_id AS "tenant_id!", d.device_type_id, d.device_type,

                      t.telemetry_schema AS "schema?: Json<TelemetrySchema>"
               FROM UNNEST($1::uuid[]) AS wanted(id)
               JOIN devices d ON d.id = wanted.id
               LEFT JOIN device_types t ON t.id = d.device_type_id"#,
            &missing
        )
        .fetch_all(pool)
        .await?;
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() + missing.len() > MAX_ENTRIES {
            prune(&mut entries, missing.len());
        }
        for id in &missing {
            entries.insert(*id, (now, None));
            found.insert(*id, None);
        }
        for row in rows {
            let info = DeviceInfo {
                tenant_id: row.tenant_id,
                device_type_id: row.device_type_id,
                device_type: row.device_type,
                schema: row.schema.map(|s| s.0),
            };
            entries.insert(row.id, (now, Some(info.clone())));
            found.insert(row.id, Some(info));
        }
        Ok(found)
    }
}

type Entries = HashMap<Uuid, (Instant, Option<DeviceInfo>)>;

/// Makes room for `incoming` entries: expired ones go first, then everything if still too full.
fn prune(entries: &mut Entries, incoming: usize) {
    entries.retain(|_, (at, info)| at.elapsed() < if info.is_some() { TTL } else { UNKNOWN_TTL });
    if entries.len() + incoming > MAX_ENTRIES {
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_drops_expired_entries_then_everything_if_needed() {
        let old = Instant::now()
            .checked_sub(TTL + Duration::from_secs(1))
            .expect("an instant in the past");
        let mut entries: Entries = HashMap::new();
        entries.insert(Uuid::now_v7(), (old, None));
        let fresh = Uuid::now_v7();
        entries.insert(fresh, (Instant::now(), None));
        prune(&mut entries, 0);
        assert_eq!(entries.keys().collect::<Vec<_>>(), [&fresh]);
        prune(&mut entries, MAX_ENTRIES);
        assert!(entries.is_empty());
    }
}
