//! Raft's storage for one peer: the newest entries in memory (raft-rs's `MemStorage`), the
//! entries since the durable checkpoint before those on disk only, read back from the log's
//! segments when a follower needs them, and, for a follower that needs entries from before
//! the checkpoint, a snapshot at it (ADR 0017).
//!
//! Raft's log here is three ranges, in index order:
//! - up to the durable checkpoint C: covered by the snapshot (`snapshot_at`);
//! - `[C + 1, end)`: the entries on disk only. Their terms stay in memory as runs (one pair a
//!   term change), so Raft's `term()` is answered at once; their contents are read back
//!   asynchronously: [`PeerStorage`]'s `entries()` answers `LogTemporarilyUnavailable`, and
//!   records what was wanted; the peer reads the segments (`Log::read_entries`), hands the
//!   entries over ([`PeerStorage::add_fetched`]) and tells Raft (`on_entries_fetched`), which
//!   asks again and sends them. Fetched entries are kept, up to [`FETCHED_MAX_BYTES`], since
//!   the next append to the same follower (or another) usually wants the ones after them.
//! - from `end` on: in memory. The peer moves applied entries out of memory once they are a
//!   window behind its applied index (`Peer::compact`), so memory holds that window, the
//!   entries not yet applied, and the terms of the rest.
//!
//! Every entry on disk only is committed and applied, so it never changes: a fetched entry
//! stays right until the checkpoint passes it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::util::limit_size;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// Entries read back from disk kept for the next appends, in payload bytes.
pub const FETCHED_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Reads Raft may wait for at once (one a follower behind, or a few while appends to it
/// retry); beyond it a request is not recorded, and Raft asks again on the follower's next
/// heartbeat response.
const MAX_WANTED: usize = 64;

pub struct PeerStorage {
    pub mem: MemStorage,
    /// The log position (index, term) of the newest durable checkpoint: what a snapshot
    /// sent now reflects (index 0: none yet).
    snapshot_at: Cell<(u64, u64)>,
    on_disk: RefCell<OnDisk>,
    /// Entries read back from disk since the peer started (INFO).
    read_back: Cell<u64>,
}

/// The entries on disk only: `[first, end)`, where `end` is memory's first entry.
struct OnDisk {
    first: u64,
    end: u64,
    /// The term of entry `first - 1` (the checkpoint's, or the last one moved out of memory).
    term_before: u64,
    /// (first index, term) of each run of one term, ascending; they cover `[first, end)`.
    runs: Vec<(u64, u64)>,
    fetched: BTreeMap<u64, Entry>,
    fetched_bytes: usize,
    /// Reads Raft asked for: the first index wanted, and the context to hand back.
    wanted: Vec<(u64, GetEntriesContext)>,
}

impl OnDisk {
    fn is_empty(&self) -> bool {
        self.first == self.end
    }

    /// The term of an entry in `[first, end)`.
    fn term_of(&self, index: u64) -> u64 {
        assert!(
            self.first <= index && index < self.end,
            "entry {index} is not on disk only [{}, {})",
            self.first,
            self.end
        );
        let run = self.runs.partition_point(|&(start, _)| start <= index);
        assert!(run > 0, "the runs cover the range from its first entry");
        self.runs[run - 1].1
    }

    /// Moves the range's start to `first` (a newer checkpoint, or the whole range given up):
    /// what is before it is covered by the snapshot.
    fn start_at(&mut self, first: u64) {
        let first = first.min(self.end);
        if first <= self.first {
            return;
        }
        self.term_before = self.term_of(first - 1);
        if first == self.end {
            self.runs.clear();
        } else {
            let keep_from = self.runs.partition_point(|&(start, _)| start <= first) - 1;
            self.runs.drain(..keep_from);
            self.runs[0].0 = first;
        }
        self.first = first;
        while let Some(entry) = self.fetched.first_entry() {
            if *entry.key() >= first {
                break;
            }
            self.fetched_bytes -= entry.get().data.len();
            entry.remove();
        }
    }
}

impl PeerStorage {
    pub fn new(mem: MemStorage) -> PeerStorage {
        let storage = PeerStorage {
            mem,
            snapshot_at: Cell::new((0, 0)),
            read_back: Cell::new(0),
            on_disk: RefCell::new(OnDisk {
                first: 1,
                end: 1,
                term_before: 0,
                runs: Vec::new(),
                fetched: BTreeMap::new(),
                fetched_bytes: 0,
                wanted: Vec::new(),
            }),
        };
        storage.restart_on_disk();
        storage
    }

    /// Empties the range on disk only: memory holds every entry after its snapshot (at
    /// start-up, and once a snapshot is installed).
    pub fn restart_on_disk(&self) {
        let first = self.mem_first();
        let mut on_disk = self.on_disk.borrow_mut();
        on_disk.first = first;
        on_disk.end = first;
        on_disk.term_before = self.mem.term(first - 1).unwrap_or(0);
        on_disk.runs.clear();
        on_disk.fetched.clear();
        on_disk.fetched_bytes = 0;
        on_disk.wanted.clear();
    }

    fn mem_first(&self) -> u64 {
        self.mem.first_index().expect("MemStorage's first index")
    }

    /// Records the newest durable checkpoint's position: entries up to it are covered by the
    /// snapshot and no longer read back.
    pub fn set_snapshot_at(&self, index: u64, term: u64) {
        assert!(
            index >= self.snapshot_at.get().0,
            "checkpoints only move forward"
        );
        self.snapshot_at.set((index, term.max(1)));
        self.on_disk.borrow_mut().start_at(index + 1);
    }

    pub fn snapshot_at(&self) -> (u64, u64) {
        self.snapshot_at.get()
    }

    /// Moves the applied entries before `to` out of memory (their terms stay); the caller
    /// keeps entry `to`, which must be applied, in memory.
    pub fn compact_memory(&self, to: u64) -> raft::Result<()> {
        let from = self.mem_first();
        if to <= from {
            return Ok(());
        }
        let mut on_disk = self.on_disk.borrow_mut();
        assert_eq!(
            on_disk.end, from,
            "the range on disk only ends where memory begins"
        );
        for index in from..to {
            let term = self.mem.term(index)?;
            if on_disk.runs.last().is_none_or(|&(_, last)| last != term) {
                on_disk.runs.push((index, term));
            }
        }
        self.mem.wl().compact(to)?;
        on_disk.end = to;
        let (checkpoint, _) = self.snapshot_at.get();
        on_disk.start_at(checkpoint + 1);
        Ok(())
    }

    /// The range of entries on disk only: `[first, end)`.
    pub fn on_disk(&self) -> (u64, u64) {
        let on_disk = self.on_disk.borrow();
        (on_disk.first, on_disk.end)
    }

    /// The term of entry `index` if it is on disk only.
    pub fn term_on_disk(&self, index: u64) -> Option<u64> {
        let on_disk = self.on_disk.borrow();
        (on_disk.first <= index && index < on_disk.end).then(|| on_disk.term_of(index))
    }

    /// Whether Raft is waiting for entries read back from disk.
    pub fn wants_entries(&self) -> bool {
        !self.on_disk.borrow().wanted.is_empty()
    }

    /// The reads Raft asked for since the last call.
    pub fn take_wanted(&self) -> Vec<(u64, GetEntriesContext)> {
        std::mem::take(&mut self.on_disk.borrow_mut().wanted)
    }

    /// Entries read back from disk since the peer started.
    pub fn read_back(&self) -> u64 {
        self.read_back.get()
    }

    /// Whether entry `index` has been read back and is kept.
    pub fn has_fetched(&self, index: u64) -> bool {
        self.on_disk.borrow().fetched.contains_key(&index)
    }

    /// Keeps entries read back from disk (those still on disk only), making room by dropping
    /// the oldest kept.
    pub fn add_fetched(&self, entries: Vec<Entry>) {
        let mut on_disk = self.on_disk.borrow_mut();
        let on_disk = &mut *on_disk;
        let incoming: usize = entries.iter().map(|e| e.data.len()).sum();
        while on_disk.fetched_bytes + incoming > FETCHED_MAX_BYTES {
            let Some((_, dropped)) = on_disk.fetched.pop_first() else {
                break;
            };
            on_disk.fetched_bytes -= dropped.data.len();
        }
        for entry in entries {
            if on_disk.first <= entry.index && entry.index < on_disk.end {
                assert_eq!(
                    entry.term,
                    on_disk.term_of(entry.index),
                    "an entry read back is the log's entry at its index"
                );
                on_disk.fetched_bytes += entry.data.len();
                self.read_back.set(self.read_back.get() + 1);
                if let Some(old) = on_disk.fetched.insert(entry.index, entry) {
                    on_disk.fetched_bytes -= old.data.len();
                }
            }
        }
    }

    pub fn set_hardstate(&self, hard_state: HardState) {
        self.mem.wl().set_hardstate(hard_state);
    }

    pub fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        self.mem.wl().append(entries)
    }
}

impl Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let mut on_disk = self.on_disk.borrow_mut();
        if low >= on_disk.end {
            return self.mem.entries(low, high, max_size, context);
        }
        if low < on_disk.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let mut entries = Vec::new();
        let mut next = low;
        while next < high.min(on_disk.end) {
            let Some(entry) = on_disk.fetched.get(&next) else {
                break;
            };
            entries.push(entry.clone());
            next += 1;
        }
        if entries.is_empty() {
            if !context.can_async() {
                // Raft reads only entries after the applied index synchronously, and those
                // are in memory.
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
            if on_disk.wanted.len() < MAX_WANTED {
                on_disk.wanted.push((low, context));
            }
            return Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable));
        }
        if next == on_disk.end && high > next {
            let rest = self
                .mem
                .entries(next, high, max_size, GetEntriesContext::empty(false))?;
            entries.extend(rest);
        }
        limit_size(&mut entries, max_size);
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let on_disk = self.on_disk.borrow();
        if idx >= on_disk.end {
            return self.mem.term(idx);
        }
        if idx + 1 == on_disk.first {
            return Ok(on_disk.term_before);
        }
        if idx < on_disk.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        Ok(on_disk.term_of(idx))
    }

    fn first_index(&self) -> raft::Result<u64> {
        let on_disk = self.on_disk.borrow();
        if on_disk.is_empty() {
            return self.mem.first_index();
        }
        Ok(on_disk.first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// The snapshot raft-rs sends a follower that needs compacted entries: only its position
    /// (the shard streams the checkpoint's pages beside the message).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (index, term) = self.snapshot_at.get();
        if index == 0 || index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot::default();
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = term;
        metadata.set_conf_state(self.mem.initial_state()?.conf_state);
        Ok(snapshot)
    }
}
