//! What the processor did, logged periodically and at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};

use super::dead_letters::Reason;

#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub rows: AtomicU64,
    pub duplicate_rows: AtomicU64,
    pub flagged: AtomicU64,
    /// Rows older than their tenant's retention, not stored.
    pub expired_rows: AtomicU64,
    /// Messages kept as dead letters, by `Reason` (in `Reason::ALL` order).
    pub dead_letters: [AtomicU64; Reason::ALL.len()],
    pub db_errors: AtomicU64,
    /// Batches that failed on their data and were split to isolate what failed.
    pub isolations: AtomicU64,
    pub devices_deleted: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dead_letter(&self, reason: Reason) {
        let index = Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL");
        Counters::add(&self.dead_letters[index], 1);
    }

    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let by_reason: Vec<String> = Reason::ALL
            .iter()
            .zip(&self.dead_letters)
            .filter(|(_, n)| get(n) > 0)
            .map(|(reason, n)| format!("{}={}", reason.as_str(), get(n)))
            .collect();
        let dead_letters: u64 = self.dead_letters.iter().map(get).sum();
        format!(
            "messages={} rows={} duplicate_rows={} expired_rows={} flagged={} dead_letters={}{} db_errors={} isolations={} devices_deleted={}",
            get(&self.messages),
            get(&self.rows),
            get(&self.duplicate_rows),
            get(&self.expired_rows),
            get(&self.flagged),
            dead_letters,
            if by_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", by_reason.join(" "))
            },
            get(&self.db_errors),
            get(&self.isolations),
            get(&self.devices_deleted),
        )
    }
}
