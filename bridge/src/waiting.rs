//! The lane of messages waiting for their device: a spool of its own (its files named
//! `waiting-*` beside the spool's, on the same disk) for the messages of paths that are not known yet, so that
//! resolving them (a slow API, an outage, a spent creation budget) never holds up the messages of
//! known devices, which keep being forwarded directly. Its drainer (`drain`, `Lane::Waiting`) asks
//! for the paths in batches and republishes in order.
//!
//! Order per device: once a path has a message in the lane, every later message of that path
//! goes there too, until the drainer has republished them all; the paths and how many messages
//! each has in the lane are counted here, and counted again from the lane at start, so a restart
//! (even a SIGKILL) keeps them.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::metrics::Metrics;
use crate::paths::{PathKey, path_key};
use crate::spool::{Record, Spool, SpoolHandle};

pub struct Waiting {
    pub lane: Arc<SpoolHandle>,
    /// Each path with messages in the lane (by its hash: a million waiting paths at a cold start
    /// take 40 MiB, not the 127 MiB of their strings), and how many.
    paths: Mutex<HashMap<PathKey, u32>>,
}

impl Waiting {
    /// Opens the lane in the spool's directory `dir` and counts the paths waiting in it.
    pub fn open(dir: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> io::Result<Waiting> {
        let lane = Spool::open_named(dir, "waiting-", max_bytes)?;
        let (records, _) = lane.read(usize::try_from(lane.len()).unwrap_or(usize::MAX))?;
        let waiting = Waiting {
            lane: SpoolHandle::new(lane, "waiting", metrics),
            paths: Mutex::new(HashMap::new()),
        };
        waiting.hold(&records);
        if !records.is_empty() {
            tracing::info!(
                messages = records.len(),
                paths = waiting.paths.lock().expect("paths lock").len(),
                "resuming with messages waiting for their device"
            );
        }
        Ok(waiting)
    }

    /// Whether messages of this path are waiting in the lane (later ones must go behind them).
    pub fn holds(&self, external_id: &str) -> bool {
        self.paths
            .lock()
            .expect("paths lock")
            .contains_key(&path_key(external_id))
    }

    /// Counts these records as waiting; called before they are appended, so that their path is
    /// held from the moment the forwarder decided to send them here.
    pub fn hold(&self, records: &[Record]) {
        let mut paths = self.paths.lock().expect("paths lock");
        for record in records {
            *paths.entry(path_key(&record.external_id)).or_default() += 1;
        }
    }

    /// The records of these paths (one entry per record) were republished, acknowledged by the
    /// local broker, or dropped: a path with nothing left to republish from the lane is forwarded
    /// directly again. (Until the drainer commits them, a restart republishes them once more,
    /// with their identity: stored once.)
    pub fn release<'a>(&self, records: impl IntoIterator<Item = &'a str>) {
        let mut paths = self.paths.lock().expect("paths lock");
        for path in records {
            let key = path_key(path);
            if let Some(count) = paths.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    paths.remove(&key);
                }
            }
        }
        // A table never shrinks by itself: after a cold start's burst it would keep the room of
        // every path that waited.
        let len = paths.len();
        if paths.capacity() > 4096 && paths.capacity() > 4 * len {
            paths.shrink_to(2 * len);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gito_wire::Envelope;
    use time::OffsetDateTime;

    use super::*;

    fn record(path: &str) -> Record {
        Record {
            external_id: path.into(),
            name: path.into(),
            device_type: None,
            device_id: None,
            envelope: Envelope {
                ts: OffsetDateTime::UNIX_EPOCH,
                source_topic: format!("{path}/v"),
                metrics: BTreeMap::new(),
            },
        }
    }

    #[tokio::test]
    async fn the_held_paths_are_counted_again_from_the_lane_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::default());
        let records = vec![record("a"), record("b"), record("a")];
        {
            let waiting = Waiting::open(dir.path(), 1 << 20, metrics.clone()).expect("open");
            waiting.hold(&records);
            waiting
                .lane
                .append(Arc::new(records.clone()))
                .await
                .expect("append");
        }
        // As after a crash: only what is on disk.
        let waiting = Waiting::open(dir.path(), 1 << 20, metrics).expect("reopen");
        assert!(waiting.holds("a") && waiting.holds("b") && !waiting.holds("c"));
        let spool = Spool::open(dir.path(), 1 << 20).expect("the spool beside it");
        assert!(spool.is_empty(), "the spool takes none of the lane's files");

        let (first, position) = waiting.lane.read(2).await.expect("read");
        waiting.lane.commit(position, 2).await.expect("commit");
        waiting.release(first.iter().map(|r| r.external_id.as_str()));
        assert!(waiting.holds("a"), "one message of a still waits");
        assert!(!waiting.holds("b"));
        let (rest, position) = waiting.lane.read(10).await.expect("read");
        waiting.lane.commit(position, 1).await.expect("commit");
        waiting.release(rest.iter().map(|r| r.external_id.as_str()));
        assert!(!waiting.holds("a"));
    }
}
