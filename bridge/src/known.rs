//! The device path → gito device map, kept across restarts, so that a restarted bridge forwards
//! the messages of every device it knew at once instead of asking the API for each again.
//!
//! In memory a path is its 128-bit hash, in a `PathMap` (`paths`): about 40 bytes per path, so a
//! million devices take about 40 MiB. Least recently used entries go first past
//! `GITO_BRIDGE_DEVICE_CACHE_MAX` (they are asked for again when they next publish); a restart
//! reads the journal in order, so past the bound it keeps the paths used last as of the latest
//! compaction and the ones learned since.
//!
//! On disk, `devices` beside the spool is an append-only journal of fixed-size entries: kind
//! (1 known, 2 forgotten), the path's hash (16 bytes), the device id (16 bytes). It is replayed
//! and rewritten with one entry per known path (oldest use first) at start, and again while
//! running once it has grown past twice what it holds. Learned entries are written, not fsynced:
//! one lost in a crash is asked for again (the API's answer is idempotent). A forgotten device
//! (deleted through the API) is flushed at once, so that a restart does not bring it back.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::paths::{PathKey, PathMap, path_key as key};

const KNOWN: u8 = 1;
const FORGOTTEN: u8 = 2;
/// kind, path hash, device id.
const ENTRY: usize = 1 + 16 + 16;
/// The journal is rewritten once it is this much larger than what it holds.
const SLACK: u64 = 1 << 20;

pub struct KnownDevices {
    path: PathBuf,
    journal: BufWriter<File>,
    journal_len: u64,
    map: PathMap,
}

impl KnownDevices {
    /// Opens (or creates) the journal in `dir`, keeping `max` paths at most. A journal last
    /// marked alive (`alive`) longer than `trusted_for` ago is not read: the deletions announced
    /// meanwhile may have been missed, so every path is asked for again.
    pub fn open(dir: &Path, max: usize, trusted_for: Duration) -> io::Result<KnownDevices> {
        fs::create_dir_all(dir)?;
        let path = dir.join("devices");
        let mut map = PathMap::new(max);
        let away = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| SystemTime::now().duration_since(at).ok());
        if away.is_some_and(|away| away > trusted_for) {
            tracing::warn!(
                away_secs = away.map(|a| a.as_secs()),
                "the bridge was away longer than the local broker keeps device events for it: every device path is asked for again"
            );
        } else if let Ok(file) = File::open(&path) {
            // Streamed: the journal is never in memory whole. A torn last entry (a crash
            // mid-write) is ignored.
            let mut reader = BufReader::with_capacity(1 << 16, file);
            let mut raw = [0u8; ENTRY];
            while reader.read_exact(&mut raw).is_ok() {
                let key: PathKey = raw[1..17].try_into().expect("16 bytes");
                let id = Uuid::from_bytes(raw[17..33].try_into().expect("16 bytes"));
                match raw[0] {
                    KNOWN => {
                        map.insert(key, id);
                    }
                    FORGOTTEN => {
                        map.remove(&key);
                    }
                    _ => {}
                }
            }
        }
        let mut known = KnownDevices {
            journal: BufWriter::new(File::create(path.with_extension("new"))?),
            path,
            journal_len: 0,
            map,
        };
        known.compact()?;
        Ok(known)
    }

    /// Marks the journal as kept up to date until now (see `open`).
    pub fn alive(&self) -> io::Result<()> {
        self.journal.get_ref().set_modified(SystemTime::now())
    }

    /// The device of `path`, if known (it becomes the most recently used).
    pub fn get(&mut self, path: &str) -> Option<Uuid> {
        self.map.get(&key(path))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Learns the device of `path` (written at the next `flush`).
    pub fn insert(&mut self, path: &str, device_id: Uuid) {
        let key = key(path);
        if self.map.insert(key, device_id) != Some(device_id) {
            self.write(KNOWN, &key, device_id);
        }
    }

    /// Forgets a deleted device, by its path when given, else wherever it appears; `true` if it
    /// was known. Written to disk before returning.
    pub fn forget(&mut self, device_id: Uuid, path: Option<&str>) -> io::Result<bool> {
        let keys: Vec<PathKey> = match path {
            Some(path) => {
                let key = key(path);
                if self.map.peek(&key) == Some(device_id) {
                    vec![key]
                } else {
                    Vec::new()
                }
            }
            None => self.map.keys_of(device_id),
        };
        for key in &keys {
            self.map.remove(key);
            self.write(FORGOTTEN, key, device_id);
        }
        self.flush()?;
        Ok(!keys.is_empty())
    }

    /// Hands what was learned to the OS; compacts the journal once it has grown enough.
    pub fn flush(&mut self) -> io::Result<()> {
        self.journal.flush()?;
        if self.journal_len > 2 * (self.map.len() * ENTRY) as u64 + SLACK {
            self.compact()?;
        }
        Ok(())
    }

    fn write(&mut self, kind: u8, key: &PathKey, device_id: Uuid) {
        self.journal_len += write_entry(&mut self.journal, kind, key, device_id);
    }

    /// Rewrites the journal with one entry per known path, least recently used first (so that a
    /// restart evicts in the same order), then swaps it in.
    fn compact(&mut self) -> io::Result<()> {
        let fresh = self.path.with_extension("new");
        self.journal = BufWriter::new(File::create(&fresh)?);
        self.journal_len = 0;
        for (key, id) in self.map.by_use() {
            self.journal_len += write_entry(&mut self.journal, KNOWN, &key, id);
        }
        self.journal.flush()?;
        self.journal.get_ref().sync_data()?;
        // The open handle follows the file: later entries are appended to the new journal.
        fs::rename(&fresh, &self.path)
    }
}

/// Appends one entry; its size. A failed write shows at the next flush.
fn write_entry(journal: &mut BufWriter<File>, kind: u8, key: &PathKey, device_id: Uuid) -> u64 {
    let mut entry = [0u8; ENTRY];
    entry[0] = kind;
    entry[1..17].copy_from_slice(key);
    entry[17..33].copy_from_slice(device_id.as_bytes());
    let _ = journal.write_all(&entry);
    ENTRY as u64
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn known_and_forgotten_paths_survive_a_restart_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut known = KnownDevices::open(dir.path(), 100, DAY).expect("open");
        known.insert("plant/a", a);
        known.insert("plant/b", b);
        known.insert("plant/c", c);
        known.flush().expect("flush");
        assert!(known.forget(b, Some("plant/b")).expect("forget"));
        assert!(known.forget(c, None).expect("forget"));
        assert!(!known.forget(a, Some("plant/other")).expect("forget"));
        drop(known); // as a SIGKILL would: nothing more is written

        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("devices"))
            .expect("journal");
        file.write_all(&[KNOWN, 1, 2, 3]).expect("torn write");
        let mut known = KnownDevices::open(dir.path(), 100, DAY).expect("reopen");
        assert_eq!(known.get("plant/a"), Some(a));
        assert_eq!(known.get("plant/b"), None);
        assert_eq!(known.get("plant/c"), None);
        assert_eq!(known.len(), 1);
    }

    #[test]
    fn past_its_bound_the_least_recently_used_path_goes_first_and_a_restart_keeps_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut known = KnownDevices::open(dir.path(), 2, DAY).expect("open");
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        known.insert("p/0", ids[0]);
        known.insert("p/1", ids[1]);
        assert_eq!(known.get("p/0"), Some(ids[0]));
        known.insert("p/2", ids[2]);
        assert_eq!(known.get("p/1"), None, "least recently used");
        known.flush().expect("flush");
        drop(known);
        let mut known = KnownDevices::open(dir.path(), 2, DAY).expect("reopen");
        assert_eq!(known.len(), 2);
        assert_eq!(known.get("p/2"), Some(ids[2]), "the last learned is kept");
    }

    #[test]
    fn the_journal_is_compacted_while_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut known = KnownDevices::open(dir.path(), 10, DAY).expect("open");
        let rounds = 2 * SLACK as usize / ENTRY;
        for i in 0..rounds {
            known.insert(&format!("p/{}", i % 10), Uuid::now_v7());
        }
        known.flush().expect("flush");
        let len = fs::metadata(dir.path().join("devices"))
            .expect("journal")
            .len();
        assert!(len <= SLACK + 20 * ENTRY as u64, "compacted: {len} bytes");
        assert_eq!(
            KnownDevices::open(dir.path(), 10, DAY)
                .expect("reopen")
                .len(),
            10
        );
    }
}

#[cfg(test)]
mod trust {
    use std::fs::OpenOptions;

    use super::*;

    #[test]
    fn a_journal_not_kept_alive_for_too_long_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = Duration::from_secs(3600);
        let mut known = KnownDevices::open(dir.path(), 10, hour).expect("open");
        known.insert("p/0", Uuid::now_v7());
        known.flush().expect("flush");
        known.alive().expect("alive");
        drop(known);
        assert_eq!(
            KnownDevices::open(dir.path(), 10, hour)
                .expect("reopen")
                .len(),
            1
        );
        let file = OpenOptions::new()
            .write(true)
            .open(dir.path().join("devices"))
            .expect("journal");
        file.set_modified(SystemTime::now() - 2 * hour)
            .expect("age it");
        assert!(
            KnownDevices::open(dir.path(), 10, hour)
                .expect("reopen")
                .is_empty()
        );
    }
}
