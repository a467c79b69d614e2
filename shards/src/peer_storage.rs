//! Raft's storage for one peer: the entries since the peer's compaction point in memory
//! (raft-rs's `MemStorage`), and, for a follower that needs entries from before that
//! point, a snapshot at the store's newest durable checkpoint (ADR 0017).
//!
//! What stays in memory is bounded by the peer (`Peer::compact`): never entries before the
//! durable checkpoint unless a live follower still needs them, and at most
//! `ENTRIES_KEPT_BEHIND` of those. The log since the checkpoint is on disk too; that is
//! what a restart reads.

use std::cell::Cell;

use raft::eraftpb::{Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

pub struct PeerStorage {
    pub mem: MemStorage,
    /// The log position (index, term) of the newest durable checkpoint: what a snapshot
    /// sent now reflects (index 0: none yet).
    snapshot_at: Cell<(u64, u64)>,
}

impl PeerStorage {
    pub fn new(mem: MemStorage) -> PeerStorage {
        PeerStorage {
            mem,
            snapshot_at: Cell::new((0, 0)),
        }
    }

    /// Records the newest durable checkpoint's position.
    pub fn set_snapshot_at(&self, index: u64, term: u64) {
        assert!(
            index >= self.snapshot_at.get().0,
            "checkpoints only move forward"
        );
        self.snapshot_at.set((index, term.max(1)));
    }

    pub fn snapshot_at(&self) -> (u64, u64) {
        self.snapshot_at.get()
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
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
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
