//! What the processor did, logged periodically and at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub rows: AtomicU64,
    pub duplicate_rows: AtomicU64,
    pub flagged: AtomicU64,
    pub dropped: AtomicU64,
    pub db_errors: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "messages={} rows={} duplicate_rows={} flagged={} dropped={} db_errors={}",
            get(&self.messages),
            get(&self.rows),
            get(&self.duplicate_rows),
            get(&self.flagged),
            get(&self.dropped),
            get(&self.db_errors)
        )
    }
}
