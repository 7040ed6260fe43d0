//! The segment log under the spool: where messages wait, in arrival order, while they cannot be republished
//! (the API is down for a new device, or the local broker is). Appending fsyncs before the caller
//! acknowledges the external broker, so an acknowledged message survives a crash.
//!
//! Layout: `NNNNNNNNNNNNNNNNNNNN.seg` files of records `[len u32][crc32 u32][JSON]`, and a
//! `cursor` file naming the first record not yet republished (`CursorFile`); a named spool's files
//! carry its name in front (`waiting-cursor`). A torn record at
//! the end (a crash mid-write) is cut off on open. Past `max_bytes` whole segments are dropped,
//! oldest first, and counted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::record::Record;

const HEADER: usize = 8;

/// Where a read ended; pass it to `commit` once those records are safely republished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    segment: u64,
    offset: u64,
}

pub struct Spool {
    dir: PathBuf,
    /// The prefix of its files' names, so that two spools can share a directory (and a disk).
    name: String,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one is written to.
    segments: Vec<u64>,
    write: File,
    write_len: u64,
    cursor: Position,
    cursor_file: CursorFile,
    total_bytes: u64,
    /// Records in the spool, counted on open and kept up to date.
    records: u64,
    /// The fault seam of the tests: the next append writes this many bytes, then fails with EIO.
    #[cfg(test)]
    fail_after: Option<usize>,
}

impl Spool {
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        Spool::open_named(dir, "", max_bytes)
    }

    /// A spool whose files' names start with `name` (`{name}NNN.seg`, `{name}cursor`); the
    /// unnamed spool takes no file of a named one for its own.
    pub fn open_named(dir: &Path, name: &str, max_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut segments: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix(name)?
                    .strip_suffix(".seg")?
                    .parse()
                    .ok()
            })
            .collect();
        segments.sort_unstable();
        if segments.is_empty() {
            segments.push(0);
        }
        let (cursor_file, cursor) = CursorFile::open(dir, name)?;
        let cursor = cursor.unwrap_or(Position {
            segment: segments[0],
            offset: 0,
        });
        // Segments before the cursor were fully republished (a crash between commit and delete).
        for old in segments.iter().filter(|s| **s < cursor.segment) {
            fs::remove_file(segment_path(dir, name, *old))?;
        }
        segments.retain(|s| *s >= cursor.segment);
        if segments.is_empty() {
            segments.push(cursor.segment);
        }
        let last = *segments.last().expect("at least one segment");
        let write_len = valid_length(&segment_path(dir, name, last))?;
        let write = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(dir, name, last))?;
        write.set_len(write_len)?;
        let mut spool = Spool {
            dir: dir.to_owned(),
            name: name.to_owned(),
            max_bytes,
            segment_bytes: (max_bytes / 4).clamp(4096, 16 << 20),
            segments,
            write,
            write_len,
            cursor,
            cursor_file,
            total_bytes: 0,
            records: 0,
            #[cfg(test)]
            fail_after: None,
        };
        spool.total_bytes = spool.segments.iter().map(|s| spool.segment_len(*s)).sum();
        spool.records = spool.count_from(cursor)?;
        Ok(spool)
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn len(&self) -> u64 {
        self.records
    }

    /// Bytes of its segments on disk.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Appends and fsyncs; returns how many old records were dropped to stay under the bound.
    pub fn append(&mut self, records: &[Record]) -> io::Result<u64> {
        let mut buffer = Vec::new();
        for record in records {
            let json = serde_json::to_vec(record).map_err(io::Error::other)?;
            let len = u32::try_from(json.len()).map_err(io::Error::other)?;
            buffer.extend_from_slice(&len.to_le_bytes());
            buffer.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
            buffer.extend_from_slice(&json);
        }
        if self.write_len > 0 && self.write_len + buffer.len() as u64 > self.segment_bytes {
            self.rotate()?;
        }
        if let Err(e) = self.write_synced(&buffer) {
            // Cut off whatever part of the batch reached the file (ENOSPC and EIO can leave a
            // torn record), so that the next append lands right behind the last good record
            // and a read never stops short of records written after the tear.
            self.write.set_len(self.write_len)?;
            self.write.sync_data()?;
            return Err(e);
        }
        self.write_len += buffer.len() as u64;
        self.total_bytes += buffer.len() as u64;
        self.records += records.len() as u64;
        let mut dropped = 0;
        while self.total_bytes > self.max_bytes && self.segments.len() > 1 {
            dropped += self.drop_oldest()?;
        }
        Ok(dropped)
    }

    fn write_synced(&mut self, buffer: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(budget) = self.fail_after.take() {
            let cut = budget.min(buffer.len());
            self.write.write_all(&buffer[..cut])?;
            return Err(io::Error::from_raw_os_error(5)); // EIO, after a partial write
        }
        self.write.write_all(buffer)?;
        self.write.sync_data()
    }

    /// Up to `max` records from the cursor on, and the position after them.
    pub fn read(&self, max: usize) -> io::Result<(Vec<Record>, Position)> {
        let mut records = Vec::new();
        let mut position = self.cursor;
        for segment in self
            .segments
            .iter()
            .copied()
            .filter(|s| *s >= self.cursor.segment)
        {
            if segment > position.segment {
                position = Position { segment, offset: 0 };
            }
            let mut reader =
                BufReader::new(File::open(segment_path(&self.dir, &self.name, segment))?);
            reader.seek(SeekFrom::Start(position.offset))?;
            while records.len() < max {
                match read_record(&mut reader)? {
                    Some((record, size)) => {
                        records.push(record);
                        position.offset += size;
                    }
                    None => break,
                }
            }
            if records.len() >= max {
                break;
            }
        }
        Ok((records, position))
    }

    /// Marks everything before `position` as republished.
    pub fn commit(&mut self, position: Position, records: u64) -> io::Result<()> {
        if position < self.cursor {
            // Those records were dropped (and counted) while they were being republished.
            return Ok(());
        }
        self.cursor = position;
        self.records = self.records.saturating_sub(records);
        let last = *self.segments.last().expect("at least one segment");
        if self.records == 0
            && position
                == (Position {
                    segment: last,
                    offset: self.write_len,
                })
        {
            // Fully republished: start an empty segment, so that the space of the old one comes
            // back (on a full disk, nothing else would free it).
            self.rotate()?;
            self.cursor = Position {
                segment: last + 1,
                offset: 0,
            };
        }
        self.cursor_file.write(self.cursor)?;
        while self.segments.len() > 1 && self.segments[0] < self.cursor.segment {
            let old = self.segments.remove(0);
            self.total_bytes -= self.segment_len(old);
            fs::remove_file(segment_path(&self.dir, &self.name, old))?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let next = self.segments.last().copied().unwrap_or(0) + 1;
        self.write = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, &self.name, next))?;
        self.segments.push(next);
        self.write_len = 0;
        File::open(&self.dir)?.sync_all()
    }

    fn drop_oldest(&mut self) -> io::Result<u64> {
        let oldest = self.segments.remove(0);
        let from = if oldest == self.cursor.segment {
            self.cursor.offset
        } else {
            0
        };
        let mut reader = BufReader::new(File::open(segment_path(&self.dir, &self.name, oldest))?);
        reader.seek(SeekFrom::Start(from))?;
        let mut dropped = 0;
        while read_record(&mut reader)?.is_some() {
            dropped += 1;
        }
        self.total_bytes -= self.segment_len(oldest);
        self.cursor = Position {
            segment: self.segments[0],
            offset: 0,
        };
        self.cursor_file.write(self.cursor)?;
        fs::remove_file(segment_path(&self.dir, &self.name, oldest))?;
        self.records = self.records.saturating_sub(dropped);
        Ok(dropped)
    }

    fn segment_len(&self, segment: u64) -> u64 {
        fs::metadata(segment_path(&self.dir, &self.name, segment))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn count_from(&self, from: Position) -> io::Result<u64> {
        let mut count = 0;
        for segment in self.segments.iter().copied() {
            let mut reader =
                BufReader::new(File::open(segment_path(&self.dir, &self.name, segment))?);
            if segment == from.segment {
                reader.seek(SeekFrom::Start(from.offset))?;
            }
            while read_record(&mut reader)?.is_some() {
                count += 1;
            }
        }
        Ok(count)
    }
}

fn segment_path(dir: &Path, name: &str, segment: u64) -> PathBuf {
    dir.join(format!("{name}{segment:020}.seg"))
}

/// Reads one record; `None` at the end or at a torn/corrupt tail.
fn read_record(reader: &mut impl Read) -> io::Result<Option<(Record, u64)>> {
    let mut header = [0u8; HEADER];
    if !read_full(reader, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    let mut body = vec![0; len];
    if !read_full(reader, &mut body)? || crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    let record = serde_json::from_slice(&body).map_err(io::Error::other)?;
    Ok(Some((record, (HEADER + len) as u64)))
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(true)
}

/// The length of the valid prefix of a segment (everything up to a torn record).
fn valid_length(path: &Path) -> io::Result<u64> {
    let Ok(file) = File::open(path) else {
        return Ok(0);
    };
    let mut reader = BufReader::new(file);
    let mut len = 0;
    while let Some((_, size)) = read_record(&mut reader)? {
        len += size;
    }
    Ok(len)
}

/// The `cursor` file: two fixed slots of `[seq u64][segment u64][offset u64][crc32 u32][pad]`,
/// written alternately in place and fsynced; the valid slot with the higher `seq` wins. Written in
/// place, it needs no new disk block, so the drainer can record its progress — and free segments
/// — on a disk that is full (a rename-based write could not even create its temporary file).
struct CursorFile {
    file: File,
    seq: u64,
}

const SLOT: usize = 32;

impl CursorFile {
    fn open(dir: &Path, name: &str) -> io::Result<(CursorFile, Option<Position>)> {
        let path = dir.join(format!("{name}cursor"));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (seq, position) = if bytes.is_empty() {
            (0, None)
        } else if bytes.len() == 2 * SLOT {
            // No valid slot (never written, or the first write torn): start from the oldest
            // segment — at worst republishing what was republished, never skipping anything.
            match bytes
                .chunks_exact(SLOT)
                .filter_map(read_slot)
                .max_by_key(|(seq, _)| *seq)
            {
                Some((seq, position)) => (seq, Some(position)),
                None => (0, None),
            }
        } else {
            // The text form "segment offset" of earlier versions.
            let text = String::from_utf8_lossy(&bytes);
            let mut parts = text.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => (0, Some(Position { segment, offset })),
                _ => {
                    return Err(io::Error::other(format!(
                        "corrupt spool cursor in {}",
                        dir.display()
                    )));
                }
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if bytes.len() != 2 * SLOT {
            // Real bytes, not a sparse length: on a filesystem such as tmpfs a later write into a
            // hole would need a new block, which a full disk does not have.
            use std::os::unix::fs::FileExt as _;
            file.set_len(0)?;
            file.write_all_at(&[0; 2 * SLOT], 0)?;
            file.sync_data()?;
        }
        let mut cursor = CursorFile { file, seq };
        if let Some(position) = position {
            // Rewrites a text cursor in the slot format (and is harmless otherwise).
            cursor.write(position)?;
        }
        Ok((cursor, position))
    }

    fn write(&mut self, position: Position) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        self.seq += 1;
        let mut slot = [0u8; SLOT];
        slot[..8].copy_from_slice(&self.seq.to_le_bytes());
        slot[8..16].copy_from_slice(&position.segment.to_le_bytes());
        slot[16..24].copy_from_slice(&position.offset.to_le_bytes());
        let crc = crc32fast::hash(&slot[..24]);
        slot[24..28].copy_from_slice(&crc.to_le_bytes());
        let at = (self.seq % 2) * SLOT as u64;
        self.file.write_all_at(&slot, at)?;
        self.file.sync_data()
    }
}

fn read_slot(slot: &[u8]) -> Option<(u64, Position)> {
    let crc = u32::from_le_bytes(slot[24..28].try_into().ok()?);
    if crc32fast::hash(&slot[..24]) != crc || slot[..8] == [0; 8] {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(slot[i..i + 8].try_into().expect("8 bytes"));
    Some((
        word(0),
        Position {
            segment: word(8),
            offset: word(16),
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use time::OffsetDateTime;

    use gito_wire::{Envelope, MetricValue};

    use super::*;

    fn record(i: u64) -> Record {
        Record {
            external_id: format!("dev/{i}"),
            name: format!("dev/{i}"),
            device_type: Some("dev".into()),
            device_id: None,
            envelope: Envelope {
                ts: OffsetDateTime::UNIX_EPOCH,
                source_topic: format!("dev/{i}/v"),
                metrics: BTreeMap::from([("v".into(), MetricValue::Number(i as f64))]),
            },
        }
    }

    fn ids(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| r.external_id.clone()).collect()
    }

    #[test]
    fn records_come_back_in_order_across_reopen_and_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        spool
            .append(&(0..5).map(record).collect::<Vec<_>>())
            .expect("append");
        let (first, position) = spool.read(2).expect("read");
        assert_eq!(ids(&first), ["dev/0", "dev/1"]);
        spool.commit(position, 2).expect("commit");
        drop(spool);

        let mut spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(spool.len(), 3);
        spool.append(&[record(5)]).expect("append");
        let (rest, position) = spool.read(100).expect("read");
        assert_eq!(ids(&rest), ["dev/2", "dev/3", "dev/4", "dev/5"]);
        spool.commit(position, 4).expect("commit");
        assert!(spool.is_empty());
    }

    #[test]
    fn a_torn_tail_is_cut_off_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        spool.append(&[record(0), record(1)]).expect("append");
        drop(spool);
        let segment = segment_path(dir.path(), "", 0);
        let mut file = OpenOptions::new()
            .append(true)
            .open(&segment)
            .expect("segment");
        file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{'])
            .expect("torn write");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(spool.len(), 2);
        spool.append(&[record(2)]).expect("append after the cut");
        assert_eq!(
            ids(&spool.read(10).expect("read").0),
            ["dev/0", "dev/1", "dev/2"]
        );
    }

    #[test]
    fn a_failed_append_is_rolled_back_and_later_records_stay_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        spool.append(&[record(0)]).expect("append");
        let good = spool.write_len;
        spool.fail_after = Some(13);
        let failed = spool.append(&[record(1), record(2)]);
        assert_eq!(failed.map_err(|e| e.raw_os_error()), Err(Some(5)));
        assert_eq!(spool.len(), 1, "nothing of the failed batch is counted");
        assert_eq!(
            fs::metadata(segment_path(dir.path(), "", 0))
                .expect("segment")
                .len(),
            good,
            "the torn bytes are cut off"
        );
        spool.append(&[record(1), record(2)]).expect("the retry");
        spool.append(&[record(3)]).expect("append");
        assert_eq!(
            ids(&spool.read(10).expect("read").0),
            ["dev/0", "dev/1", "dev/2", "dev/3"]
        );
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(spool.len(), 4, "reopening finds every acknowledged record");
    }

    #[test]
    fn the_cursor_survives_a_torn_slot_and_reads_the_text_form_of_earlier_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        spool
            .append(&(0..4).map(record).collect::<Vec<_>>())
            .expect("append");
        for _ in 0..3 {
            let (one, position) = spool.read(1).expect("read");
            spool.commit(position, one.len() as u64).expect("commit");
        }
        drop(spool);
        // Tear the newest slot (seq 3 is in slot 1): the previous one still names a valid place.
        let path = dir.path().join("cursor");
        let mut bytes = fs::read(&path).expect("cursor");
        bytes[SLOT + 9] ^= 0xff;
        fs::write(&path, &bytes).expect("tear");
        let spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(ids(&spool.read(10).expect("read").0), ["dev/2", "dev/3"]);
        drop(spool);

        fs::write(&path, "0 0").expect("a text cursor");
        let spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(spool.read(10).expect("read").0.len(), 4);
        assert_eq!(fs::metadata(&path).expect("cursor").len(), 2 * SLOT as u64);
    }

    #[test]
    fn a_drained_spool_gives_its_space_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 1 << 30).expect("open");
        spool
            .append(&(0..50).map(record).collect::<Vec<_>>())
            .expect("append");
        let (all, position) = spool.read(100).expect("read");
        spool.commit(position, all.len() as u64).expect("commit");
        let on_disk: u64 = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .map(|e| e.metadata().expect("metadata").len())
            .sum();
        assert_eq!(on_disk, 0, "the drained segment is gone");
        spool.append(&[record(50)]).expect("append");
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30).expect("reopen");
        assert_eq!(ids(&spool.read(10).expect("read").0), ["dev/50"]);
    }

    #[test]
    fn past_the_bound_the_oldest_segments_are_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), 16 * 1024).expect("open");
        let mut dropped = 0;
        for i in 0..400 {
            dropped += spool.append(&[record(i)]).expect("append");
        }
        assert!(dropped > 0, "something was dropped");
        assert_eq!(
            spool.len() + dropped,
            400,
            "every record is either kept or counted"
        );
        let (kept, _) = spool.read(1000).expect("read");
        assert_eq!(kept.len() as u64, spool.len());
        assert_eq!(
            kept.last().map(|r| r.external_id.as_str()),
            Some("dev/399"),
            "the newest are kept"
        );
        assert!(spool.total_bytes <= 16 * 1024 + spool.segment_bytes);
    }
}
