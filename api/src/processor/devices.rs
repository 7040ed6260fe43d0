//! Which devices exist, to which tenant they belong, and what their type's schema expects.
//!
//! The cache is exact, not expiring: `watch` applies every change PostgreSQL announces (migration
//! 009) before each batch, and while it cannot listen the cache is empty and bypassed, so an
//! entry is never older than the last change committed before the batch began. It is owned by the
//! processor's loop (one task), hence no lock.
//!
//! Bounded by `MAX_ENTRIES`, with a not-recently-used policy: when full, entries not looked up
//! since the previous sweep are dropped, and if every entry was (a working set larger than the
//! bound), all of them; the cost is then one lookup per batch for the devices it carries.
//!
//! An entry also knows whether its device has a `device_connectivity` row (was heard before):
//! such a row goes only with its device, so the processor does not try to create it again
//! (`heard`). Read with the device, set after the commit that created it.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgExecutor;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::telemetry_schema::TelemetrySchema;

/// Devices (and ids known not to be devices) kept at most.
pub const MAX_ENTRIES: usize = 200_000;

#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub tenant_id: Uuid,
    pub device_type_id: Option<Uuid>,
    pub device_type: Option<String>,
    pub schema: Option<Arc<TelemetrySchema>>,
}

impl DeviceInfo {
    /// Values the type's schema does not expect: an unlisted metric, or one outside min/max.
    pub fn is_unexpected(&self, metric: &str, value: Option<f64>) -> bool {
        self.schema
            .as_ref()
            .is_some_and(|schema| schema.is_unexpected(metric, value))
    }
}

/// What is known of some ids: `None` for an id that is no device.
pub type Known = HashMap<Uuid, Option<Arc<DeviceInfo>>>;

#[derive(Debug)]
struct Entry {
    info: Option<Arc<DeviceInfo>>,
    /// Looked up since the last sweep.
    used: bool,
    /// The device has its `device_connectivity` row.
    heard: bool,
}

#[derive(Debug)]
pub struct DeviceCache {
    entries: HashMap<Uuid, Entry>,
    /// Only while PostgreSQL's announcements reach us; otherwise every lookup reads the database.
    enabled: bool,
    max_entries: usize,
}

impl Default for DeviceCache {
    fn default() -> Self {
        DeviceCache::with_capacity(MAX_ENTRIES)
    }
}

impl DeviceCache {
    pub fn with_capacity(max_entries: usize) -> Self {
        DeviceCache {
            entries: HashMap::new(),
            enabled: false,
            max_entries: max_entries.max(1),
        }
    }

    /// Starts (empty) or stops (emptied) caching: whatever happened while nobody listened is
    /// unknown, so nothing older survives.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.entries.clear();
        self.enabled = enabled;
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn evict(&mut self, id: Uuid) {
        if self.entries.remove(&id).is_some() {
            crate::metrics::cache_evicted("device", 1);
        }
    }

    /// Forgets the devices of a device type (its schema changed).
    pub fn evict_type(&mut self, type_id: Uuid) {
        let before = self.entries.len();
        self.entries.retain(|_, e| {
            e.info
                .as_ref()
                .is_none_or(|i| i.device_type_id != Some(type_id))
        });
        crate::metrics::cache_evicted("device", before - self.entries.len());
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// What is known of `ids`, from the cache or else from the database.
    pub async fn lookup<'e>(
        &mut self,
        db: impl PgExecutor<'e>,
        ids: &[Uuid],
    ) -> Result<Known, sqlx::Error> {
        let mut found = Known::new();
        let mut missing = Vec::new();
        for id in ids {
            match self.entries.get_mut(id) {
                Some(entry) => {
                    entry.used = true;
                    found.insert(*id, entry.info.clone());
                }
                None => missing.push(*id),
            }
        }
        crate::metrics::cache_lookups("device", ids.len() - missing.len(), missing.len());
        if missing.is_empty() {
            return Ok(found);
        }
        missing.sort_unstable();
        missing.dedup();
        let mut fetched = fetch_heard(db, &missing).await?;
        for id in missing {
            let (info, heard) = match fetched.remove(&id) {
                Some((info, heard)) => (Some(Arc::new(info)), heard),
                None => (None, false),
            };
            self.insert(id, info.clone(), heard);
            found.insert(id, info);
        }
        Ok(found)
    }

    /// Those of `ids` not known to have their `device_connectivity` row (every one while the
    /// cache is bypassed).
    pub fn unheard(&self, ids: impl IntoIterator<Item = Uuid>) -> Vec<Uuid> {
        ids.into_iter()
            .filter(|id| !self.entries.get(id).is_some_and(|e| e.heard))
            .collect()
    }

    /// `ids` have their `device_connectivity` row: the transaction that created it committed.
    /// (An id known to be no device has none.)
    pub fn mark_heard(&mut self, ids: &[Uuid]) {
        for id in ids {
            if let Some(entry) = self.entries.get_mut(id)
                && entry.info.is_some()
            {
                entry.heard = true;
            }
        }
    }

    fn insert(&mut self, id: Uuid, info: Option<Arc<DeviceInfo>>, heard: bool) {
        if !self.enabled {
            return;
        }
        if self.entries.len() >= self.max_entries {
            self.sweep();
        }
        self.entries.insert(
            id,
            Entry {
                info,
                used: false,
                heard,
            },
        );
    }

    /// Drops what was not used since the last sweep; everything if all of it was.
    fn sweep(&mut self) {
        let before = self.entries.len();
        self.entries.retain(|_, e| std::mem::take(&mut e.used));
        if self.entries.len() >= self.max_entries {
            self.entries.clear();
        }
        crate::metrics::cache_evicted("device", before - self.entries.len());
    }
}

/// Reads `ids` from the database; ids that are no device are absent from the answer.
pub async fn fetch<'e>(
    db: impl PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, DeviceInfo>, sqlx::Error> {
    let fetched = fetch_heard(db, ids).await?;
    Ok(fetched
        .into_iter()
        .map(|(id, (info, _))| (id, info))
        .collect())
}

/// `fetch`, and whether each device has its `device_connectivity` row.
async fn fetch_heard<'e>(
    db: impl PgExecutor<'e>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, (DeviceInfo, bool)>, sqlx::Error> {
    // A join on UNNEST probes the primary key per id; `id = ANY($1)` over a table the planner
    // still thinks is small became a scan comparing every row with every id (the pipeline bench
    // at 100,000 devices: 1 s per batch).
    let rows = sqlx::query!(
        r#"SELECT d.id AS "id!", d.tenant_id AS "tenant_id!", d.device_type_id, d.device_type,
                  t.telemetry_schema AS "schema?: Json<TelemetrySchema>",
                  EXISTS (SELECT 1 FROM device_connectivity c WHERE c.device_id = d.id) AS "heard!"
           FROM UNNEST($1::uuid[]) AS wanted(id)
           JOIN devices d ON d.id = wanted.id
           LEFT JOIN device_types t ON t.id = d.device_type_id"#,
        ids
    )
    .fetch_all(db)
    .await?;
    // Devices of one type share its schema.
    let mut schemas: HashMap<Uuid, Arc<TelemetrySchema>> = HashMap::new();
    Ok(rows
        .into_iter()
        .map(|row| {
            let schema = row.schema.map(|Json(s)| match row.device_type_id {
                Some(type_id) => schemas
                    .entry(type_id)
                    .or_insert_with(|| Arc::new(s))
                    .clone(),
                None => Arc::new(s),
            });
            let info = DeviceInfo {
                tenant_id: row.tenant_id,
                device_type_id: row.device_type_id,
                device_type: row.device_type,
                schema,
            };
            (row.id, (info, row.heard))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(type_id: Option<Uuid>) -> Option<Arc<DeviceInfo>> {
        Some(Arc::new(DeviceInfo {
            tenant_id: Uuid::now_v7(),
            device_type_id: type_id,
            device_type: None,
            schema: None,
        }))
    }

    #[test]
    fn nothing_is_kept_unless_enabled_and_disabling_empties() {
        let mut cache = DeviceCache::with_capacity(10);
        cache.insert(Uuid::now_v7(), None, false);
        assert!(cache.is_empty());
        cache.set_enabled(true);
        cache.insert(Uuid::now_v7(), None, false);
        assert_eq!(cache.len(), 1);
        cache.set_enabled(false);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_full_cache_drops_entries_not_used_since_the_last_sweep() {
        let mut cache = DeviceCache::with_capacity(3);
        cache.set_enabled(true);
        let (a, b, c, d) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        for id in [a, b, c] {
            cache.insert(id, None, false);
        }
        cache.entries.get_mut(&b).expect("b").used = true;
        cache.insert(d, None, false);
        let mut kept: Vec<Uuid> = cache.entries.keys().copied().collect();
        kept.sort();
        assert_eq!(kept, [b, d], "a and c were not used");
        // Everything used since: all of it goes.
        let e = Uuid::now_v7();
        cache.insert(e, None, false);
        for entry in cache.entries.values_mut() {
            entry.used = true;
        }
        cache.insert(Uuid::now_v7(), None, false);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_type_change_evicts_that_types_devices_only() {
        let mut cache = DeviceCache::with_capacity(10);
        cache.set_enabled(true);
        let (kind, other) = (Uuid::now_v7(), Uuid::now_v7());
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        cache.insert(a, info(Some(kind)), false);
        cache.insert(b, info(Some(other)), false);
        cache.insert(c, None, false);
        cache.evict_type(kind);
        assert!(!cache.entries.contains_key(&a));
        assert!(cache.entries.contains_key(&b) && cache.entries.contains_key(&c));
    }
}
