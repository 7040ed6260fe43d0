//! Records which metrics each device sends (`device_metrics`, for a device type's discovered
//! metrics and the inbox's grouping), cheaply: a pair already written recently is remembered in a
//! bounded map and not written again, so a steady stream costs one small upsert per new pair and
//! one refresh of `last_seen_at` per pair every `REFRESH`, not a write per row.
//!
//! Best effort, after the batch is stored: a failure is logged and the pairs stay unremembered, so
//! the next batch that carries them tries again. A pair whose device was deleted meanwhile is
//! skipped by the join.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::store::Checked;

/// Pairs remembered at most; past it the map is emptied (the cost: one upsert per pair again).
pub const MAX_PAIRS: usize = 200_000;
/// How long a written pair is not written again: `last_seen_at` is this coarse.
pub const REFRESH: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
pub struct MetricsSeen {
    written: HashMap<(Uuid, String), Instant>,
}

impl MetricsSeen {
    /// The pairs of `messages` not written within `REFRESH`, each once, sorted (two processors
    /// then lock rows in the same order).
    fn unseen(&self, messages: &[Checked<'_>], now: Instant) -> (Vec<Uuid>, Vec<String>) {
        let mut batch = BTreeSet::new();
        for message in messages {
            for metric in message.envelope.metrics.keys() {
                let key = (message.device_id, metric.clone());
                let fresh = self
                    .written
                    .get(&key)
                    .is_some_and(|at| now.duration_since(*at) < REFRESH);
                if !fresh {
                    batch.insert(key);
                }
            }
        }
        batch.into_iter().unzip()
    }

    /// Writes the pairs of `messages` it has not written recently.
    pub async fn record(&mut self, pool: &PgPool, messages: &[Checked<'_>]) {
        let now = Instant::now();
        let (devices, metrics) = self.unseen(messages, now);
        if devices.is_empty() {
            return;
        }
        let written = sqlx::query!(
            "INSERT INTO device_metrics (device_id, metric)
             SELECT v.device_id, v.metric
             FROM UNNEST($1::uuid[], $2::text[]) AS v (device_id, metric)
             JOIN devices d ON d.id = v.device_id
             ON CONFLICT (device_id, metric) DO UPDATE SET last_seen_at = now()",
            &devices,
            &metrics
        )
        .execute(pool)
        .await;
        match written {
            Ok(_) => {
                if self.written.len() + devices.len() > MAX_PAIRS {
                    self.written.clear();
                }
                self.written
                    .extend(devices.into_iter().zip(metrics).map(|key| (key, now)));
            }
            Err(e) => {
                tracing::warn!(error = %e, pairs = devices.len(), "could not record which metrics devices send; the next batch retries");
            }
        }
    }
}
