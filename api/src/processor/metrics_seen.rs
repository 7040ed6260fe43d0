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

#[cfg(test)]
mod tests {
    use gito_wire::Envelope;

    use super::*;
    use crate::processor::DeviceInfo;

    #[test]
    fn a_pair_is_written_once_per_refresh_and_once_per_batch() {
        let device = DeviceInfo {
            tenant_id: Uuid::now_v7(),
            device_type_id: None,
            device_type: None,
            schema: None,
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first =
            Envelope::from_json(br#"{"ts": "2026-01-05T10:00:00Z", "metrics": {"t": 1, "p": 2}}"#)
                .expect("envelope");
        let second = Envelope::from_json(br#"{"ts": "2026-01-05T10:00:01Z", "metrics": {"t": 3}}"#)
            .expect("envelope");
        let checked = |device_id, envelope| Checked {
            device_id,
            envelope,
            device: &device,
        };
        let batch = [checked(b, &first), checked(a, &first), checked(a, &second)];
        let mut seen = MetricsSeen::default();
        let now = Instant::now();
        let (devices, metrics) = seen.unseen(&batch, now);
        let mut expected = vec![(a, "p"), (a, "t"), (b, "p"), (b, "t")];
        expected.sort();
        let got: Vec<(Uuid, &str)> = devices
            .iter()
            .copied()
            .zip(metrics.iter().map(String::as_str))
            .collect();
        assert_eq!(got, expected, "each pair once, sorted");
        seen.written
            .extend(devices.into_iter().zip(metrics).map(|k| (k, now)));
        assert!(seen.unseen(&batch, now + REFRESH / 2).0.is_empty());
        assert_eq!(
            seen.unseen(&batch, now + REFRESH).0.len(),
            4,
            "refreshed after REFRESH"
        );
    }
}
