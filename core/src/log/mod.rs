//! The shard's write-ahead log, which is also its Raft log.
//!
//! Appends are made in *commit groups*: every record ready at one moment (the Raft entries
//! and hard state of one `Ready`) goes out in a single aligned direct-I/O write linked to a
//! single fdatasync. Up to W groups (the segment's *window*, [`GROUPS_IN_FLIGHT_MAX`] for new
//! segments) are in flight at once: [`Log::begin_append`] places and encodes a group and hands
//! back its write ([`GroupWrite`]) to run as a task, so group N+1's write may start while
//! group N syncs. Completions are taken in log order ([`Log::group_written`]): a group counts
//! as durable only once it and every group before it are, and group N+W is begun only after
//! group N is durable. A segment roll-over waits until no group is in flight, so closed
//! segments hold only durable groups. Recovery relies on that order:
//!
//! - a damaged group N followed by nothing valid, or only by valid groups below N+W that were
//!   begun while N was in flight, is the torn tail of a crash: none of them was acknowledged
//!   (acknowledgements follow log order), so they are cut off and zeroed and the log goes on
//!   from N;
//! - a damaged group followed by a valid group N+W or later, or by one whose header says N
//!   was durable when it was begun (each group records how many groups were in flight before
//!   it), was durable once, so the damage is corruption: recovery stops with an error that
//!   names the file and offset, and nothing is silently skipped. So is damage in a closed
//!   segment.
//!
//! Formats are in [`format`]; the disk is reached through [`LogDisk`], implemented in `kvsd`
//! by `DmaDisk` (`shards/src/log_io.rs`: O_DIRECT files whose I/O goes on the executor's own
//! io_uring, or plain system calls off an executor) and by [`sim::SimDisk`] in tests.

pub mod format;
pub mod manifest;
mod read;
mod recovery;
pub mod sim;

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use format::{
    align_up, encode_group, encode_segment_header, group_size_on_disk, OwnedRecord, Record,
    RecordKind, GROUP_HEADER_SIZE, SEGMENT_HEADER_SIZE,
};

use manifest::{Listed, Manifest, MANIFEST_NAME, SLOT_SIZE};

use crate::limits::{GROUPS_IN_FLIGHT_MAX, GROUP_BYTES_MAX, LOG_BLOCK_SIZE, SEGMENT_SIZE_TARGET};

/// A directory of segment files.
#[allow(async_fn_in_trait)] // Shards are single-threaded: no Send bounds are wanted.
pub trait LogDisk {
    type File: LogFile;
    /// Names of the files in the directory.
    async fn list(&self) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing, creating it when `create`.
    async fn open(&self, name: &str, create: bool) -> io::Result<Self::File>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` atomically (durable once `sync_dir` returns).
    /// Files already open under `to` keep what they had (as POSIX handles do, or fail).
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations and removals in the directory durable.
    async fn sync_dir(&self) -> io::Result<()>;
    /// A printable path for `name`, for error messages.
    fn path_of(&self, name: &str) -> String;
    /// How many write-and-fdatasync commits (`LogFile::write_at_synced`) the disk layer saw
    /// complete, counted where the sync's completion arrives — not by the log, which only
    /// believes it synced. None where the disk cannot tell. The log checks that it moves on
    /// with every group, so no group is acknowledged without a completed fdatasync.
    fn synced_writes_completed(&self) -> Option<u64> {
        None
    }
}

/// One open segment file. Writes are aligned to LOG_BLOCK_SIZE in offset and length.
#[allow(async_fn_in_trait)]
pub trait LogFile {
    /// A buffer suitable for direct I/O.
    type Buffer: AsRef<[u8]> + AsMut<[u8]>;
    /// An aligned buffer of `len` bytes (a multiple of LOG_BLOCK_SIZE); contents unspecified.
    fn alloc(&self, len: usize) -> Self::Buffer;
    async fn write_at(&self, buffer: Self::Buffer, pos: u64) -> io::Result<()>;
    /// Writes and then makes the file's data durable (fdatasync): the commit of a group.
    /// Implementations may make it one operation (a write with `RWF_DSYNC`), as long as the
    /// write is durable when it completes.
    async fn write_at_synced(&self, buffer: Self::Buffer, pos: u64) -> io::Result<()> {
        self.write_at(buffer, pos).await?;
        self.sync().await
    }
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Reads like `read_at` and lends the bytes to `f` instead of returning them: a file
    /// that reads into a buffer of its own (an aligned one, for direct I/O) skips copying
    /// them into a `Vec`. Page loads read this way.
    async fn read_with<R>(
        &self,
        pos: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        let bytes = self.read_at(pos, len).await?;
        Ok(f(&bytes))
    }
    /// fdatasync: everything written before is durable when this returns.
    async fn sync(&self) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
    async fn truncate(&self, len: u64) -> io::Result<()>;
}

/// Log failures. I/O errors carry the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log disk full: {op} {path}: {source}")]
    DiskFull {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("log I/O error: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("corrupt log: {path} at offset {offset}: {detail}")]
    Corrupt {
        path: String,
        offset: u64,
        detail: String,
    },
    /// A piece of the log is missing or cut short: opening it anyway would lose
    /// acknowledged writes.
    #[error("log damaged: {path}: {detail}")]
    Damaged { path: String, detail: String },
    #[error("log commit group of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

impl LogError {
    fn io(op: &'static str, path: String, source: io::Error) -> LogError {
        if is_disk_full(&source) {
            LogError::DiskFull { op, path, source }
        } else {
            LogError::Io { op, path, source }
        }
    }
}

/// Whether an I/O error means the filesystem has no space left.
pub(crate) fn is_disk_full(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc_enospc()) || error.kind() == io::ErrorKind::StorageFull
}

/// ENOSPC on Linux; written out to keep this crate free of libc.
const fn libc_enospc() -> i32 {
    28
}

/// Counters of what the log did, for INFO and for tests of group commit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Commit groups written since open.
    pub groups: u64,
    /// Records written since open.
    pub records: u64,
    /// fdatasync calls on segment files since open.
    pub syncs: u64,
    /// Bytes of all segment files.
    pub size_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Commit-group syncs the disk layer saw complete (0 where it cannot tell); see
    /// [`LogDisk::synced_writes_completed`].
    pub synced_writes_completed: u64,
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every record of every intact group, in log order.
    pub records: Vec<OwnedRecord>,
    /// Where a torn tail was cut off, if one was: (path, offset).
    pub truncated: Option<(String, u64)>,
    /// Segments removed: leftovers of a trim, or of a roll-over a crash cut short, none of
    /// them holding a commit group.
    pub removed: Vec<String>,
    /// The directory had segments but no manifest (an older kvs wrote it): one was written
    /// from what recovery found.
    pub manifest_created: bool,
    /// Segments recovered, and the highest entry index in them (0: none).
    pub segments: usize,
    pub last_index: u64,
}

struct Segment {
    name: String,
    /// Its first group's sequence (its name says the same).
    first_sequence: u64,
    /// The size it was made (preallocated) to, as the manifest lists it.
    made: u64,
    size: u64,
    /// The highest entry index in the segment (0 if it holds none).
    last_index: u64,
}

struct Active<F> {
    /// Shared with the writes of the groups in flight.
    file: Rc<F>,
    name: String,
    /// Where the next group goes.
    end: u64,
    /// Groups that may be in flight at once in this segment (its header says so).
    window: u32,
}

/// One commit group's write and fdatasync, begun by [`Log::begin_append`]: run it (as a task
/// of its own, say) and hand what it returns to [`Log::group_written`], in log order.
pub struct GroupWrite<F: LogFile> {
    file: Rc<F>,
    buffer: F::Buffer,
    pos: u64,
    sequence: u64,
    path: String,
}

/// What a [`GroupWrite`] did.
#[derive(Debug)]
pub struct GroupWritten {
    pub sequence: u64,
    pub result: Result<(), LogError>,
}

impl<F: LogFile> GroupWrite<F> {
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Writes the group and fdatasyncs it. Owns all it needs, so it may outlive a borrow of
    /// the log.
    pub async fn write(self) -> GroupWritten {
        let GroupWrite {
            file,
            buffer,
            pos,
            sequence,
            path,
        } = self;
        let result = file
            .write_at_synced(buffer, pos)
            .await
            .map_err(|e| LogError::io("write and fdatasync", path, e));
        GroupWritten { sequence, result }
    }
}

/// A group begun and not yet known durable.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    sequence: u64,
    records: usize,
}

/// The log of one shard. See the module documentation.
pub struct Log<D: LogDisk> {
    disk: D,
    shard: u32,
    segments: Vec<Segment>,
    active: Option<Active<D::File>>,
    next_sequence: u64,
    stats: LogStats,
    segment_size_target: u64,
    /// Groups begun and not yet written, oldest first.
    in_flight: VecDeque<InFlight>,
    /// The disk's count of completed synced writes at open: since then it must grow by at
    /// least one per group written.
    synced_at_open: Option<u64>,
    /// The manifest as last written or read, and its file once open.
    manifest: Option<Manifest>,
    manifest_file: Option<D::File>,
    /// Recovering for `verify`: nothing on disk changes; what start-up would change is
    /// reported in [`Recovered`] instead.
    dry_run: bool,
    /// Where the last [`Log::read_entries`] stopped.
    read_cursor: Option<read::ReadCursor>,
    /// Where closed segments are copied before they are deleted (`kvsd --archive-dir`).
    archive: Option<Rc<dyn SegmentArchive>>,
}

/// Keeps a copy of each closed segment before the log deletes it (point-in-time recovery,
/// `kvsd --archive-dir`). The copy is made elsewhere (the log's shard must not wait for it);
/// the log deletes a segment only once the archive says its copy is durable.
pub trait SegmentArchive {
    /// Whether the first `len` bytes (its groups) of closed segment `name` of shard `shard`,
    /// whose file is `path`, are durably archived. If not, the archive makes sure a copy is
    /// on its way and the log asks again at its next trim.
    fn archived(&self, shard: u32, name: &str, path: &str, len: u64) -> bool;
}

/// Bytes of zeros written per call while preallocating.
const PREALLOCATE_CHUNK_BYTES: usize = 1024 * 1024;

/// Writes zeros over `[from, to)`. Appends then overwrite blocks that already exist, which
/// direct I/O completes without allocating (an extending write is slower: io_uring hands it
/// to a worker thread, and fdatasync must also commit the new size). The bytes must be real
/// zeros, not fallocate's unwritten extents, which need the same conversion on first write.
async fn preallocate<F: LogFile>(file: &F, from: u64, to: u64, path: &str) -> Result<(), LogError> {
    write_zeros(file, from, to)
        .await
        .map_err(|e| LogError::io("preallocate", path.to_string(), e))
}

/// Writes zeros over `[from, to)` of `file`, a chunk at a time. The log preallocates its
/// segments with it and the page file grows with it (see [`preallocate`] for why real zeros).
pub(crate) async fn write_zeros<F: LogFile>(file: &F, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let len = ((to - at) as usize).min(PREALLOCATE_CHUNK_BYTES);
        let mut zeros = file.alloc(len);
        zeros.as_mut().fill(0);
        file.write_at(zeros, at).await?;
        at += len as u64;
    }
    Ok(())
}

pub fn segment_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl<D: LogDisk> Log<D> {
    /// The segments as the manifest lists them.
    fn listing(&self) -> Vec<Listed> {
        self.segments
            .iter()
            .map(|s| Listed {
                first_sequence: s.first_sequence,
                size: s.made,
            })
            .collect()
    }

    /// Writes `segments` as the manifest, durably, into the slot not holding the current one.
    async fn write_manifest(&mut self, segments: Vec<Listed>) -> Result<(), LogError> {
        assert!(!self.dry_run, "verifying changes nothing");
        let path = self.disk.path_of(MANIFEST_NAME);
        let created = self.manifest_file.is_none();
        if created {
            let file = self
                .disk
                .open(MANIFEST_NAME, true)
                .await
                .map_err(|e| LogError::io("create", path.clone(), e))?;
            self.manifest_file = Some(file);
        }
        let previous = self.manifest.as_ref().map_or(0, |m| m.sequence);
        let manifest = Manifest {
            sequence: previous + 1,
            shard: self.shard,
            segments,
        };
        let file = self.manifest_file.as_ref().expect("opened above");
        let mut buffer = file.alloc(SLOT_SIZE);
        manifest.encode(buffer.as_mut());
        let offset = (manifest.sequence % 2) * SLOT_SIZE as u64;
        file.write_at(buffer, offset)
            .await
            .map_err(|e| LogError::io("write", path.clone(), e))?;
        file.sync()
            .await
            .map_err(|e| LogError::io("fdatasync", path.clone(), e))?;
        if created {
            self.disk
                .sync_dir()
                .await
                .map_err(|e| LogError::io("sync dir", path, e))?;
        }
        self.manifest = Some(manifest);
        Ok(())
    }

    fn refresh_size_stats(&mut self) {
        self.stats.size_bytes = self.segments.iter().map(|s| s.size).sum();
        self.stats.segments = self.segments.len() as u64;
    }

    async fn start_segment(&mut self) -> Result<(), LogError> {
        let name = segment_name(self.next_sequence);
        let path = self.disk.path_of(&name);
        let file = self
            .disk
            .open(&name, true)
            .await
            .map_err(|e| LogError::io("create", path.clone(), e))?;
        let mut buffer = file.alloc(SEGMENT_HEADER_SIZE);
        buffer.as_mut().fill(0);
        encode_segment_header(
            buffer.as_mut(),
            self.shard,
            self.next_sequence,
            GROUPS_IN_FLIGHT_MAX,
        );
        file.write_at(buffer, 0)
            .await
            .map_err(|e| LogError::io("write", path.clone(), e))?;
        preallocate(
            &file,
            SEGMENT_HEADER_SIZE as u64,
            self.segment_size_target,
            &path,
        )
        .await?;
        file.sync()
            .await
            .map_err(|e| LogError::io("fdatasync", path.clone(), e))?;
        self.disk
            .sync_dir()
            .await
            .map_err(|e| LogError::io("sync dir", path.clone(), e))?;
        self.stats.syncs += 1;
        self.segments.push(Segment {
            name: name.clone(),
            first_sequence: self.next_sequence,
            made: self.segment_size_target,
            size: SEGMENT_HEADER_SIZE as u64,
            last_index: 0,
        });
        // Listed before any group goes into it: the manifest never lists less than the log
        // holds.
        self.write_manifest(self.listing()).await?;
        self.active = Some(Active {
            file: Rc::new(file),
            name,
            end: SEGMENT_HEADER_SIZE as u64,
            window: GROUPS_IN_FLIGHT_MAX,
        });
        self.refresh_size_stats();
        Ok(())
    }

    /// Appends `records` as one commit group and waits until it is durable: [`Log::make_room`],
    /// [`Log::begin_append`], the write, [`Log::group_written`]. No other group may be in
    /// flight. On error nothing may be assumed durable, and the log should be reopened before
    /// further use (the shard stops taking writes).
    pub async fn append(&mut self, records: &[Record<'_>]) -> Result<(), LogError> {
        assert!(
            self.in_flight.is_empty(),
            "append waits for its own group only"
        );
        self.make_room().await?;
        let Some(write) = self.begin_append(records)? else {
            return Ok(());
        };
        let written = write.write().await;
        self.group_written(written)
    }

    /// Whether a group may be begun now: fewer than the active segment's window are in
    /// flight, and none is when the segment is full (a roll-over waits for them).
    pub fn has_room_for_group(&self) -> bool {
        match &self.active {
            None => self.in_flight.is_empty(),
            Some(active) => {
                self.in_flight.len() < active.window as usize
                    && (active.end < self.segment_size_target || self.in_flight.is_empty())
            }
        }
    }

    /// Groups begun and not yet written.
    pub fn groups_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Starts a new segment if the active one is full (or there is none). Only with no group
    /// in flight, so that closed segments hold only durable groups.
    pub async fn make_room(&mut self) -> Result<(), LogError> {
        let needs_segment = match &self.active {
            None => true,
            Some(active) => active.end >= self.segment_size_target,
        };
        if needs_segment {
            assert!(
                self.in_flight.is_empty(),
                "a segment roll-over with {} groups in flight",
                self.in_flight.len()
            );
            self.start_segment().await?;
        }
        Ok(())
    }

    /// Places and encodes `records` as the next commit group and returns its write, to be
    /// run and then reported to [`Log::group_written`]. None for no records. The caller
    /// checks [`Log::has_room_for_group`] and calls [`Log::make_room`] first.
    pub fn begin_append(
        &mut self,
        records: &[Record<'_>],
    ) -> Result<Option<GroupWrite<D::File>>, LogError> {
        if records.is_empty() {
            return Ok(None);
        }
        let size = group_size_on_disk(records);
        if size > GROUP_BYTES_MAX {
            return Err(LogError::TooLarge(size));
        }
        assert!(self.has_room_for_group(), "a group begun without room");
        let active = self
            .active
            .as_mut()
            .expect("make_room starts a segment before a group is begun");
        assert!(
            active.end < self.segment_size_target,
            "make_room rolls a full segment over"
        );
        let mut buffer = active.file.alloc(size);
        // Every group before the ones still in flight is durable: recovery can then tell
        // damage to those from a torn write.
        let in_flight_before = u32::try_from(self.in_flight.len()).expect("a small window");
        encode_group(
            buffer.as_mut(),
            self.next_sequence,
            in_flight_before,
            records,
        );
        let write = GroupWrite {
            file: Rc::clone(&active.file),
            buffer,
            pos: active.end,
            sequence: self.next_sequence,
            path: self.disk.path_of(&active.name),
        };
        let end_before = active.end;
        active.end += size as u64;
        assert!(
            active.end > end_before,
            "the log's write position only grows"
        );
        if let Some(segment) = self.segments.last_mut() {
            segment.size = active.end;
            segment.last_index = records
                .iter()
                .filter(|r| r.kind == RecordKind::Entry)
                .map(|r| r.index)
                .fold(segment.last_index, u64::max);
        }
        self.in_flight.push_back(InFlight {
            sequence: self.next_sequence,
            records: records.len(),
        });
        self.next_sequence += 1;
        self.stats.size_bytes += size as u64;
        Ok(Some(write))
    }

    /// Takes the outcome of the oldest group in flight (groups are reported in log order).
    /// Ok means it, and so every group before it, is durable.
    pub fn group_written(&mut self, written: GroupWritten) -> Result<(), LogError> {
        let oldest = self
            .in_flight
            .pop_front()
            .expect("a group was written that was never begun");
        assert_eq!(
            oldest.sequence, written.sequence,
            "groups are reported in log order"
        );
        written.result?;
        self.stats.groups += 1;
        self.stats.records += oldest.records as u64;
        self.stats.syncs += 1;
        if let (Some(at_open), Some(now)) =
            (self.synced_at_open, self.disk.synced_writes_completed())
        {
            assert!(
                now - at_open >= self.stats.groups,
                "commit group {} reported durable, but the disk saw only {} synced writes \
                 complete for {} groups",
                written.sequence,
                now - at_open,
                self.stats.groups
            );
        }
        Ok(())
    }

    /// Copies every closed segment to `archive` before deleting it from now on.
    pub fn set_archive(&mut self, archive: Rc<dyn SegmentArchive>) {
        self.archive = Some(archive);
    }

    pub fn has_archive(&self) -> bool {
        self.archive.is_some()
    }

    /// Closes the active segment, if it holds any group and none is in flight: the next
    /// group starts a new segment, and this one may be archived and deleted once a
    /// checkpoint covers it. With an archive, the log does this after each checkpoint, so
    /// the archive is behind by about a checkpoint interval, not by a whole segment.
    pub fn close_active(&mut self) -> bool {
        let holds_groups = self.segments.last().is_some_and(|s| s.last_index > 0);
        if self.active.is_none() || !self.in_flight.is_empty() || !holds_groups {
            return false;
        }
        self.active = None;
        true
    }

    /// Deletes the closed segments whose entries all have indexes at or below `index` (a
    /// checkpoint holds them); with an archive, only those it holds a copy of. The last
    /// segment always stays. Returns how many went.
    pub async fn remove_through(&mut self, index: u64) -> Result<usize, LogError> {
        // The last segment always stays, closed or not: a log that is not empty never
        // becomes empty (start-up takes an empty log after a checkpoint for a lost one).
        let closed = self.segments.len().saturating_sub(1);
        let doomed = self.segments[..closed]
            .iter()
            .take_while(|s| s.last_index <= index)
            .count();
        if doomed == 0 {
            return Ok(0);
        }
        // With an archive, only the oldest segments already copied go (in order).
        let doomed = match &self.archive {
            None => doomed,
            Some(archive) => self.segments[..doomed]
                .iter()
                .take_while(|s| {
                    let path = self.disk.path_of(&s.name);
                    archive.archived(self.shard, &s.name, &path, s.size)
                })
                .count(),
        };
        if doomed == 0 {
            return Ok(0);
        }
        // Unlisted before deleted: a crash between leaves files recovery knows to remove.
        let listing = self.listing().split_off(doomed);
        self.write_manifest(listing).await?;
        for segment in &self.segments[..doomed] {
            let path = self.disk.path_of(&segment.name);
            self.disk
                .remove(&segment.name)
                .await
                .map_err(|e| LogError::io("remove", path, e))?;
        }
        self.segments.drain(..doomed);
        self.disk
            .sync_dir()
            .await
            .map_err(|e| LogError::io("sync dir", self.disk.path_of(""), e))?;
        self.refresh_size_stats();
        Ok(doomed)
    }

    /// The directory the log (and its shard's other files) live in.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn path(&self) -> String {
        self.disk.path_of("")
    }

    pub fn stats(&self) -> LogStats {
        LogStats {
            synced_writes_completed: self.disk.synced_writes_completed().unwrap_or(0),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests;
