//! The log archive for point-in-time recovery (`kvsd --archive-dir DIR`, docs/operations.md).
//!
//! Writing: every shard has each closed log segment copied to `DIR/shard-NNN/` before it
//! deletes it (`kvs_core::log::SegmentArchive`): a thread of its own copies the segment's
//! groups (not the preallocated zeros after them) to `NAME.partial`, fsynced, with the length
//! and CRC32C in `NAME.crc32c`, then renames both (the checksum first) and fsyncs the
//! directory; the log deletes the segment at a trim after the copy is done. A segment is in
//! the archive whole, with its checksum, or not at all. With an archive a shard closes its
//! active segment after each checkpoint, so the archive trails the log by about a checkpoint
//! interval.
//!
//! Reading ([`replay`], for `kvsd --restore-from BACKUP --archive-dir DIR`): every archived
//! segment of the shard is checked against its checksum, its records read as start-up reads
//! a log, and the entries after the backup's checkpoint applied in order, up to a moment
//! (each batch records when its leader proposed it) or an index. A segment that is damaged,
//! or entries missing between the backup and the end of what is replayed, stop the restore
//! with the file or the entries named.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use kvs_core::command::decode_batch_timed;
use kvs_core::log::format::{OwnedRecord, RecordKind};
use kvs_core::log::{Log, LogError, SegmentArchive};
use kvs_core::store::{PagedStore, StoreConfig};

use crate::log_io::DmaDisk;

/// Where a shard's archived segments are.
pub fn shard_archive(dir: &Path, shard: u32) -> PathBuf {
    dir.join(format!("shard-{shard:03}"))
}

/// [`SegmentArchive`] into a directory. Each copy is made by a thread of its own, so a
/// shard's loop never waits for one: the log asks at each trim whether a segment's copy is
/// done, and deletes the segment only then.
#[derive(Debug)]
pub struct DirArchive {
    dir: PathBuf,
    copies: std::sync::Arc<std::sync::Mutex<HashMap<(u32, String), Copy>>>,
}

/// Where a segment's copy is.
#[derive(Debug)]
enum Copy {
    Running,
    Done,
    /// Failed at this moment: tried again a second later.
    Failed(std::time::Instant),
}

/// How long after a failed copy the next is tried.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl DirArchive {
    pub fn new(dir: &Path) -> io::Result<DirArchive> {
        fs::create_dir_all(dir)?;
        Ok(DirArchive {
            dir: dir.to_path_buf(),
            copies: Default::default(),
        })
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Copies the first `len` bytes of `path` to `dir/name` with its checksum (see the module
/// documentation); returns the time it took.
fn copy_segment(dir: &Path, name: &str, path: &str, len: u64) -> io::Result<f64> {
    let started = std::time::Instant::now();
    fs::create_dir_all(dir)?;
    let mut source = File::open(path)?.take(len);
    let partial = dir.join(format!("{name}.partial"));
    let mut copy = File::create(&partial)?;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut crc, mut copied) = (0u32, 0u64);
    loop {
        let n = source.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
        copy.write_all(&buffer[..n])?;
        copied += n as u64;
    }
    if copied != len {
        return Err(io::Error::other(format!(
            "{path}: {copied} bytes, {len} expected"
        )));
    }
    copy.sync_all()?;
    let sum_partial = dir.join(format!("{name}.crc32c.partial"));
    let mut sum = File::create(&sum_partial)?;
    writeln!(sum, "{len} {crc:08x}")?;
    sum.sync_all()?;
    fs::rename(&sum_partial, dir.join(format!("{name}.crc32c")))?;
    fs::rename(&partial, dir.join(name))?;
    sync_dir(dir)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

impl SegmentArchive for DirArchive {
    fn archived(&self, shard: u32, name: &str, path: &str, len: u64) -> bool {
        let key = (shard, name.to_string());
        let mut copies = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        match copies.get(&key) {
            Some(Copy::Done) => {
                // Asked once more, then deleted: forget it.
                copies.remove(&key);
                return true;
            }
            Some(Copy::Running) => return false,
            Some(Copy::Failed(at)) if at.elapsed() < RETRY_AFTER => return false,
            Some(Copy::Failed(_)) | None => {}
        }
        copies.insert(key.clone(), Copy::Running);
        let (dir, name, path) = (
            shard_archive(&self.dir, shard),
            name.to_string(),
            path.to_string(),
        );
        let copies_done = std::sync::Arc::clone(&self.copies);
        let spawned = std::thread::Builder::new()
            .name("kvs-archive".into())
            .spawn(move || {
                let outcome = match copy_segment(&dir, &name, &path, len) {
                    Ok(elapsed_ms) => {
                        tracing::info!(shard, segment = %name, bytes = len, elapsed_ms, "log segment archived");
                        Copy::Done
                    }
                    Err(error) => {
                        tracing::error!(shard, segment = %name, %error, "archiving a log segment failed; it is kept and tried again");
                        Copy::Failed(std::time::Instant::now())
                    }
                };
                let mut copies = copies_done.lock().unwrap_or_else(|e| e.into_inner());
                copies.insert((shard, name), outcome);
            });
        if let Err(error) = spawned {
            tracing::error!(shard, %error, "cannot start archiving a log segment");
            copies.insert(key, Copy::Failed(std::time::Instant::now()));
        }
        false
    }
}

/// How far to replay the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Everything the archive holds.
    End,
    /// Batches proposed at or before this moment (ms since the Unix epoch).
    Time(u64),
    /// Entries at or below this index.
    Index(u64),
}

/// What a shard's replay did.
#[derive(Debug)]
pub struct Replayed {
    /// The last entry applied, its term, and the last commit time seen (None: no entry
    /// carried one).
    pub index: u64,
    pub term: u64,
    pub time: Option<u64>,
    /// Entries applied from the archive.
    pub entries: u64,
    /// The last entry the archive holds.
    pub archive_end: u64,
}

/// Why a replay stopped the restore.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The archive is damaged or has a gap: named in the message.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// Checks every archived segment of shard `shard` against its checksum.
fn check_segments(dir: &Path) -> Result<usize, ReplayError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(ReplayError::Failed(format!("{}: {e}", dir.display()))),
    };
    let mut segments = 0;
    for entry in entries {
        let path = entry
            .map_err(|e| ReplayError::Failed(format!("{}: {e}", dir.display())))?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with(".log") {
            continue;
        }
        let sum_path = dir.join(format!("{name}.crc32c"));
        let recorded = fs::read_to_string(&sum_path).map_err(|e| {
            ReplayError::Refused(format!(
                "{}: its checksum is unreadable: {e}",
                path.display()
            ))
        })?;
        let (bytes, crc) = kvs_wire::backup::file_crc(&path)
            .map_err(|e| ReplayError::Failed(format!("{}: {e}", path.display())))?;
        if recorded.trim() != format!("{bytes} {crc:08x}") {
            return Err(ReplayError::Refused(format!(
                "{}: damaged: {bytes} bytes with CRC32C {crc:08x}, {} recorded",
                path.display(),
                recorded.trim()
            )));
        }
        segments += 1;
    }
    Ok(segments)
}

/// The entries of an archive's records, in order, with a later entry at an index already
/// seen replacing that suffix (as start-up reads a log). Every archived entry is committed:
/// a segment is archived only once a checkpoint, which holds only applied entries, covers
/// all of it.
fn archived_entries(
    records: Vec<OwnedRecord>,
    shard: u32,
) -> Result<Vec<OwnedRecord>, ReplayError> {
    let mut entries: Vec<OwnedRecord> = Vec::new();
    for record in records.into_iter().filter(|r| r.kind == RecordKind::Entry) {
        if let Some(first) = entries.first().map(|e| e.index) {
            let next = first + entries.len() as u64;
            if record.index > next {
                return Err(ReplayError::Refused(format!(
                    "the archive of shard {shard} lacks entries {next} to {}: a segment is missing",
                    record.index - 1
                )));
            }
            if record.index < first {
                entries.clear();
            } else {
                entries.truncate((record.index - first) as usize);
            }
        }
        entries.push(record);
    }
    Ok(entries)
}

/// Applies the archived entries of shard `shard` after the checkpoint in its page file
/// (`shard_dir`), up to `until`, and checkpoints the result.
pub fn replay(
    shard_dir: &Path,
    archive: &Path,
    shard: u32,
    until: Until,
) -> Result<Replayed, ReplayError> {
    let dir = shard_archive(archive, shard);
    let segments = check_segments(&dir)?;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        ReplayError::Failed(format!("shard {shard}: {what}: {e}"))
    };
    let records = if segments == 0 {
        Vec::new()
    } else {
        let disk = DmaDisk::new(&dir).map_err(|e| failed("archive", &e))?;
        futures_lite::future::block_on(Log::verify(disk, shard))
            .map_err(|e| match e {
                // Each segment names its first group: a segment that does not start where
                // the one before ended means one is missing between them.
                LogError::Corrupt { path, detail, .. } if detail.starts_with("segment starts at group") => {
                    ReplayError::Refused(format!(
                        "the archive of shard {shard} lacks a segment before {path} ({detail}): a segment is missing"
                    ))
                }
                e => ReplayError::Refused(format!("{}: {e}", dir.display())),
            })?
            .records
    };
    let entries = archived_entries(records, shard)?;
    let disk = DmaDisk::new(shard_dir).map_err(|e| failed("open", &e))?;
    futures_lite::future::block_on(async {
        let store = PagedStore::open(&disk, shard, StoreConfig::from_bytes(64 << 20))
            .await
            .map_err(|e| failed("open the restored pages", &e))?;
        let base = store.applied_index();
        let mut replayed = Replayed {
            index: base,
            term: 0,
            time: None,
            entries: 0,
            archive_end: entries.last().map_or(0, |e| e.index),
        };
        let wanted = entries.iter().any(|e| e.index > base);
        if let Some(first) = entries.first().filter(|_| wanted) {
            if first.index > base + 1 {
                return Err(ReplayError::Refused(format!(
                    "the archive of shard {shard} starts at entry {}, after the backup's {base}: entries {} to {} are missing",
                    first.index,
                    base + 1,
                    first.index - 1
                )));
            }
        }
        for entry in entries.into_iter().filter(|e| e.index > base) {
            if matches!(until, Until::Index(last) if entry.index > last) {
                break;
            }
            let normal = entry.entry_type == 0 && !entry.payload.is_empty();
            if normal {
                let (_, time) = decode_batch_timed(&entry.payload)
                    .map_err(|e| failed(&format!("entry {}", entry.index), &e))?;
                if matches!((until, time), (Until::Time(limit), Some(t)) if t > limit) {
                    break;
                }
                replayed.time = time.or(replayed.time);
                store
                    .apply(entry.index, entry.term, &entry.payload)
                    .await
                    .map_err(|e| failed(&format!("apply entry {}", entry.index), &e))?;
            } else {
                store.skip(entry.index, entry.term);
            }
            replayed.index = entry.index;
            replayed.term = entry.term;
            replayed.entries += 1;
        }
        store
            .checkpoint(None::<fn(usize) -> std::future::Ready<()>>)
            .await
            .map_err(|e| failed("checkpoint", &e))?;
        Ok(replayed)
    })
}

/// Parses an RFC 3339 time (`2026-12-05T08:10:45Z`, fractions and `+01:00` offsets allowed)
/// to ms since the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, rest) = text.split_once(['T', 't', ' '])?;
    let mut parts = date.splitn(3, '-');
    let (year, month, day): (i64, i64, i64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    let (clock, offset_secs) = if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (clock, offset) = rest.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':')?;
        (
            clock,
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut hms = hms.splitn(3, ':');
    let (h, m, s): (i64, i64, i64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let millis: i64 = match fraction.len() {
        0 => 0,
        _ if fraction.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{fraction:0<3}")[..3].parse().ok()?
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + m * 60 + s - offset_secs;
    u64::try_from(secs * 1000 + millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> OwnedRecord {
        OwnedRecord {
            kind: RecordKind::Entry,
            entry_type: 0,
            index,
            term,
            payload: Vec::new(),
        }
    }

    fn hard_state(index: u64) -> OwnedRecord {
        OwnedRecord {
            kind: RecordKind::HardState,
            entry_type: 0,
            index,
            term: 1,
            payload: Vec::new(),
        }
    }

    #[test]
    fn the_archive_yields_its_entries_with_replaced_suffixes_and_refuses_gaps() {
        let indexes = |records| -> Vec<(u64, u64)> {
            archived_entries(records, 0)
                .unwrap()
                .iter()
                .map(|e| (e.index, e.term))
                .collect()
        };
        // 3 and 4 of term 1 replaced by a new leader's 3 of term 2.
        let records = vec![
            entry(1, 1),
            hard_state(1),
            entry(2, 1),
            entry(3, 1),
            entry(4, 1),
            entry(3, 2),
            entry(4, 2),
        ];
        assert_eq!(indexes(records), [(1, 1), (2, 1), (3, 2), (4, 2)]);
        let gap = vec![entry(7, 1), entry(8, 1), entry(11, 1)];
        match archived_entries(gap, 3) {
            Err(ReplayError::Refused(message)) => {
                assert!(message.contains("lacks entries 9 to 10"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rfc3339_times_are_read_as_unix_milliseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-12-05T08:10:45Z"),
            Some(1_796_458_245_000)
        );
        assert_eq!(
            parse_rfc3339("2026-12-05T08:10:45.5Z"),
            Some(1_796_458_245_500)
        );
        assert_eq!(
            parse_rfc3339("2026-12-05T09:10:45+01:00"),
            Some(1_796_458_245_000)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        for bad in [
            "2026-12-05",
            "2026-13-05T00:00:00Z",
            "yesterday",
            "2026-12-05T08:10Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
