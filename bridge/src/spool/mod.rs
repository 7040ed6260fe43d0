//! The on-disk spool: where messages wait, in arrival order, while they cannot be republished
//! (the API is down for a new device, or the local broker is). `log` is the segment log on disk,
//! `record` what it keeps of a message, and `SpoolHandle` how the forwarder and the drainer
//! share it: appending fsyncs before the caller acknowledges the external broker, so an
//! acknowledged message survives a crash.

mod log;
mod record;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::metrics::{DropReason, Metrics};

pub use self::log::{Position, Spool};
pub use self::record::Record;

/// The spool plus whether it is in use: once anything is spooled, every later message is
/// appended behind it until the drainer has emptied it.
pub struct SpoolHandle {
    spool: Mutex<Spool>,
    /// The `lane` label of its gauges: `spool`, or `waiting` for the lane of `waiting`.
    lane: &'static str,
    active: AtomicBool,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl SpoolHandle {
    pub fn new(spool: Spool, lane: &'static str, metrics: Arc<Metrics>) -> Arc<Self> {
        let active = !spool.is_empty();
        let handle = Arc::new(SpoolHandle {
            spool: Mutex::new(spool),
            lane,
            active: AtomicBool::new(active),
            wake: Notify::new(),
            metrics,
        });
        handle.observe();
        handle
    }

    /// Sets the spool's gauges: bytes, records, and the age of the oldest record by its envelope
    /// `ts` (read from disk: called on every scrape, so that the age grows between events).
    pub fn observe(&self) {
        let spool = self.spool.lock().expect("spool lock");
        let lane = self.lane;
        metrics::gauge!("gito_bridge_spool_bytes", "lane" => lane).set(spool.bytes() as f64);
        metrics::gauge!("gito_bridge_spool_records", "lane" => lane).set(spool.len() as f64);
        let oldest = match spool.read(1) {
            Ok((records, _)) => records.first().map(|r| r.envelope.ts),
            Err(_) => None,
        };
        let age = oldest.map_or(0.0, |ts| {
            (time::OffsetDateTime::now_utc() - ts)
                .as_seconds_f64()
                .max(0.0)
        });
        metrics::gauge!("gito_bridge_spool_oldest_age_seconds", "lane" => lane).set(age);
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// Appends and fsyncs, then turns spooling on; afterwards the messages may be acked.
    /// A failed append leaves nothing behind (the log rolls back), so it can simply be retried.
    pub async fn append(self: &Arc<Self>, records: Arc<Vec<Record>>) -> std::io::Result<()> {
        let this = self.clone();
        let count = records.len() as u64;
        let dropped = tokio::task::spawn_blocking(move || {
            let mut spool = this.spool.lock().expect("spool lock");
            let dropped = spool.append(&records)?;
            this.active.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(dropped)
        })
        .await
        .expect("spool task")?;
        Metrics::add(&self.metrics.spooled, count);
        self.observe();
        if dropped > 0 {
            self.metrics.dropped(DropReason::SpoolFull, dropped);
            tracing::error!(dropped, "spool full: dropped the oldest spooled messages");
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Up to `max` records, oldest first, and where they end (for `commit`).
    pub async fn read(self: &Arc<Self>, max: usize) -> io::Result<(Vec<Record>, Position)> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.spool.lock().expect("spool lock").read(max))
            .await
            .expect("spool task")
    }

    /// Forgets the records before `position` (`count` of them): they are safely republished.
    pub async fn commit(self: &Arc<Self>, position: Position, count: u64) -> io::Result<()> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            this.spool
                .lock()
                .expect("spool lock")
                .commit(position, count)?;
            this.observe();
            Ok(())
        })
        .await
        .expect("spool task")
    }

    /// Turns spooling off if the spool is empty; `true` if this call did.
    pub fn finish_if_empty(&self) -> bool {
        let spool = self.spool.lock().expect("spool lock");
        spool.is_empty() && self.active.swap(false, Ordering::SeqCst)
    }

    /// Resolves when records were appended (or at once, if they were since the last call).
    pub async fn appended(&self) {
        self.wake.notified().await;
    }
}
