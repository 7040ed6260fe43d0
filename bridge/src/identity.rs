//! A message's identity from its first receipt.
//!
//! The processor stores a reading once per `(device, metric, ts)`. A payload that carries its own
//! time keeps it on every redelivery; a bare value (`72.5`, the most common form) is stamped with
//! the time the bridge first received it. For that stamp to survive a redelivery, the bridge
//! remembers it: the external broker redelivers an unacknowledged message with the *same packet
//! id* and the same bytes (MQTT 3.1.1 §4.4, persistent session), and a packet id is reused only
//! after its message was acknowledged. So the last message seen under each packet id, not yet
//! acknowledged, is exactly what may come back — at most the broker's in-flight window.
//!
//! `Receipts` keeps that map and journals it in `receipts` beside the spool (written before the
//! message is republished or spooled, so a bridge killed at any point finds the stamp again after
//! its restart). Stamps are strictly increasing microseconds, so two bare values of one device
//! and metric never share an identity, even within one microsecond or across a clock step back.
//!
//! An entry is marked acknowledged when our acknowledgement went out on the connection — not when
//! it was queued: an ack still queued when the bridge dies never reaches the broker, which then
//! redelivers a message the bridge must recognize.
//!
//! What cannot be told apart: a redelivery under a packet id whose acknowledgement had gone out,
//! with the same bytes. Either the broker never read that ack (it restarted, or the connection
//! died with the ack in flight: the common case, seen on every restart of the external broker), or
//! it did, reused the id for a new message with byte-identical topic and payload, and that one was
//! lost in transit. Brokers that hand out packet ids in sequence (Mosquitto does) reuse an id only
//! after 65,535 others, so an entry acknowledged fewer than 32,768 messages ago is taken for the
//! first case (the redelivery keeps its first stamp), an older one for the second (a new stamp).
//! Every such decision is counted (`ambiguous_redeliveries`); with a broker that reuses an id at
//! once, a new message byte-identical to the previous one under its id and lost in transit would
//! be taken for a redelivery there. The journal is written, not fsynced: it survives the bridge's
//! crash, not the host's (the local broker's queue does not survive that either).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

const RECEIPT: u8 = 1;
const ACKED: u8 = 2;
/// kind, packet id, fingerprint, stamp, receipt number.
const ENTRY: usize = 1 + 2 + 8 + 8 + 8;
/// An acknowledged entry this many receipts old or more is a packet id the broker reused.
const RECENT: u64 = 32_768;
/// Past this size the journal is rewritten with one entry per packet id.
const COMPACT_AFTER: u64 = 16 << 20;

/// What identifies the bytes of a message: its topic and its payload.
pub fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    (u64::from(crc32fast::hash(topic.as_bytes())) << 32) | u64::from(crc32fast::hash(payload))
}

pub struct Receipts {
    path: PathBuf,
    journal: BufWriter<File>,
    journal_len: u64,
    /// Packet id → the last message received under it: a slot per possible id (2 MiB), cheaper
    /// than hashing on every message.
    entries: Vec<Option<Entry>>,
    last_stamp: i64,
    /// Messages received so far (kept across restarts): how old an entry is.
    received: u64,
    /// Redeliveries that found their first stamp.
    pub recognized: u64,
    /// Redeliveries that could not be told from a new message (see the module's documentation).
    pub ambiguous: u64,
}

/// What `stamp` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    New,
    /// A redelivery of a message received before: its first stamp.
    Recognized,
    /// A redelivery although our ack had gone out: taken for one (see the module's
    /// documentation), its first stamp.
    Ambiguous,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    print: u64,
    stamp: i64,
    /// Our acknowledgement of it went out.
    acked: bool,
    /// `received` when it arrived.
    seq: u64,
}

impl Receipts {
    /// Opens (or creates) the journal in `dir` and reads back what it knew.
    pub fn open(dir: &Path) -> io::Result<Receipts> {
        fs::create_dir_all(dir)?;
        let path = dir.join("receipts");
        let mut entries: Vec<Option<Entry>> = vec![None; 1 << 16];
        let mut last_stamp = 0;
        let mut received = 0;
        if let Ok(mut file) = File::open(&path) {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            // A torn last entry (a crash mid-write) is ignored.
            for raw in bytes.chunks_exact(ENTRY) {
                let pkid = u16::from_le_bytes([raw[1], raw[2]]);
                let print = u64::from_le_bytes(raw[3..11].try_into().expect("8 bytes"));
                let stamp = i64::from_le_bytes(raw[11..19].try_into().expect("8 bytes"));
                let seq = u64::from_le_bytes(raw[19..27].try_into().expect("8 bytes"));
                match raw[0] {
                    RECEIPT => {
                        let acked = false;
                        let entry = Entry {
                            print,
                            stamp,
                            acked,
                            seq,
                        };
                        entries[usize::from(pkid)] = Some(entry);
                        last_stamp = last_stamp.max(stamp);
                        received = received.max(seq);
                    }
                    ACKED => {
                        if let Some(entry) = entries[usize::from(pkid)]
                            .as_mut()
                            .filter(|e| e.print == print)
                        {
                            entry.acked = true;
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut receipts = Receipts {
            journal: BufWriter::new(File::create(path.with_extension("new"))?),
            path,
            journal_len: 0,
            entries,
            last_stamp,
            received,
            recognized: 0,
            ambiguous: 0,
        };
        receipts.compact()?;
        Ok(receipts)
    }

    /// The identity of a message just received: the stamp it had when first received, if this
    /// is a redelivery of it, else a new stamp. Journaled (buffered: call `flush` before the
    /// message leaves the bridge).
    pub fn stamp(&mut self, pkid: u16, dup: bool, print: u64) -> (OffsetDateTime, Identity) {
        let previous = self.entries[usize::from(pkid)].filter(|e| dup && e.print == print);
        let (stamp, identity) = match previous {
            Some(entry) if !entry.acked => {
                self.recognized += 1;
                (entry.stamp, Identity::Recognized)
            }
            Some(entry) if self.received - entry.seq < RECENT => {
                self.ambiguous += 1;
                (entry.stamp, Identity::Ambiguous)
            }
            _ => {
                let now = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
                let stamp = i64::try_from(now)
                    .expect("a time in range")
                    .max(self.last_stamp + 1);
                self.last_stamp = stamp;
                (stamp, Identity::New)
            }
        };
        self.received += 1;
        let (acked, seq) = (false, self.received);
        self.entries[usize::from(pkid)] = Some(Entry {
            print,
            stamp,
            acked,
            seq,
        });
        self.write(RECEIPT, pkid, print, stamp, seq);
        (from_micros(stamp), identity)
    }

    /// Our acknowledgement of the message under `pkid` went out on the connection.
    pub fn ack_sent(&mut self, pkid: u16) {
        if let Some(entry) = self.entries[usize::from(pkid)]
            .as_mut()
            .filter(|e| !e.acked)
        {
            entry.acked = true;
            let print = entry.print;
            self.write(ACKED, pkid, print, 0, 0);
        }
    }

    /// Hands what was journaled to the OS (a crash of the bridge no longer loses it).
    pub fn flush(&mut self) -> io::Result<()> {
        self.journal.flush()?;
        if self.journal_len > COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }

    fn write(&mut self, kind: u8, pkid: u16, print: u64, stamp: i64, seq: u64) {
        let mut entry = [0u8; ENTRY];
        entry[0] = kind;
        entry[1..3].copy_from_slice(&pkid.to_le_bytes());
        entry[3..11].copy_from_slice(&print.to_le_bytes());
        entry[11..19].copy_from_slice(&stamp.to_le_bytes());
        entry[19..27].copy_from_slice(&seq.to_le_bytes());
        // A failed write shows at the next flush, which the caller checks.
        let _ = self.journal.write_all(&entry);
        self.journal_len += ENTRY as u64;
    }

    /// Rewrites the journal with what it knows now (and the latest stamp, so that stamps keep
    /// increasing after a restart), then swaps it in. At most two entries per packet id.
    fn compact(&mut self) -> io::Result<()> {
        let fresh = self.path.with_extension("new");
        self.journal = BufWriter::new(File::create(&fresh)?);
        self.journal_len = 0;
        let entries: Vec<(u16, Entry)> = (0..=u16::MAX)
            .zip(self.entries.iter())
            .filter_map(|(pkid, entry)| entry.map(|e| (pkid, e)))
            .collect();
        for (pkid, entry) in entries {
            self.write(RECEIPT, pkid, entry.print, entry.stamp, entry.seq);
            if entry.acked {
                self.write(ACKED, pkid, entry.print, 0, 0);
            }
        }
        // The newest stamp and receipt number, under a packet id no broker uses (0).
        self.write(RECEIPT, 0, 0, self.last_stamp, self.received);
        self.entries[0] = None;
        self.journal.flush()?;
        self.journal.get_ref().sync_data()?;
        // The open handle follows the file: later entries are appended to the new journal.
        fs::rename(&fresh, &self.path)
    }
}

fn from_micros(stamp: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(stamp) * 1000).expect("a time in range")
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    #[test]
    fn a_redelivery_keeps_its_first_stamp_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let print = fingerprint("plant/boiler/temp", b"72.5");
        let mut receipts = Receipts::open(dir.path()).expect("open");
        let first = receipts.stamp(7, false, print).0;
        let queued_ack = receipts.stamp(8, false, print).0;
        receipts.flush().expect("flush");
        drop(receipts); // as a SIGKILL would: nothing more is written

        let mut receipts = Receipts::open(dir.path()).expect("reopen");
        assert_eq!(receipts.stamp(7, true, print).0, first, "same identity");
        assert_eq!(
            receipts.stamp(8, true, print).0,
            queued_ack,
            "an ack that never went out changes nothing"
        );
        assert_eq!(receipts.recognized, 2);
        let fresh = receipts.stamp(9, false, print).0;
        assert!(fresh > first, "stamps keep increasing after a restart");
    }

    #[test]
    fn a_redelivery_after_its_ack_went_out_keeps_its_stamp_unless_the_id_was_reused_long_ago() {
        let dir = tempfile::tempdir().expect("tempdir");
        let print = fingerprint("t", b"1");
        let mut receipts = Receipts::open(dir.path()).expect("open");
        let first = receipts.stamp(3, false, print).0;
        receipts.ack_sent(3);
        receipts.flush().expect("flush");
        drop(receipts);
        // The broker restarted before reading our ack: it redelivers.
        let mut receipts = Receipts::open(dir.path()).expect("reopen");
        assert_eq!(receipts.stamp(3, true, print).0, first);
        assert_eq!((receipts.recognized, receipts.ambiguous), (0, 1));
        receipts.ack_sent(3);
        // A whole cycle of packet ids later, id 3 carries a new message with the same bytes.
        for i in 0..RECENT {
            let pkid = 4 + (i % 60_000) as u16;
            receipts.stamp(pkid, false, i);
            receipts.ack_sent(pkid);
        }
        assert_ne!(receipts.stamp(3, true, print).0, first, "a reused id");
        assert_eq!(receipts.ambiguous, 1);
    }

    #[test]
    fn only_a_duplicate_with_the_same_bytes_is_recognized() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut receipts = Receipts::open(dir.path()).expect("open");
        let a = fingerprint("t", b"1");
        let first = receipts.stamp(1, false, a).0;
        assert_ne!(
            receipts.stamp(1, false, a).0,
            first,
            "not flagged as a redelivery"
        );
        let second = receipts.stamp(1, true, a).0;
        assert_ne!(
            receipts.stamp(1, true, fingerprint("t", b"2")).0,
            second,
            "other bytes"
        );
        assert_eq!((receipts.recognized, receipts.ambiguous), (1, 0));
    }

    #[test]
    fn stamps_are_strictly_increasing_microseconds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut receipts = Receipts::open(dir.path()).expect("open");
        let stamps: Vec<_> = (0..10_000u16)
            .map(|i| receipts.stamp(i, false, 0).0)
            .collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]));
        assert!(stamps.iter().all(|s| s.nanosecond() % 1000 == 0));
    }

    #[test]
    fn compaction_keeps_one_entry_per_packet_id_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut receipts = Receipts::open(dir.path()).expect("open");
        let kept = receipts.stamp(3, false, 33).0;
        for round in 0..(COMPACT_AFTER / ENTRY as u64 / 2 + 10) {
            let pkid = 100 + (round % 1000) as u16;
            receipts.stamp(pkid, false, round);
            receipts.ack_sent(pkid);
        }
        receipts.flush().expect("flush");
        let len = fs::metadata(dir.path().join("receipts"))
            .expect("journal")
            .len();
        assert!(len < COMPACT_AFTER, "compacted: {len} bytes");
        drop(receipts);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join("receipts"))
            .expect("journal");
        file.write_all(&[RECEIPT, 3, 0]).expect("torn write");
        let mut receipts = Receipts::open(dir.path()).expect("reopen");
        assert_eq!(receipts.stamp(3, true, 33).0, kept);
    }
}
