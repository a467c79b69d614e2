//! The peer's Raft log beyond memory (ADR 0017): which applied entries leave memory, reading
//! entries back from the log's segments for a follower that needs them, and deleting the
//! segments a durable checkpoint covers. A child of `peer`, so it sees the peer's fields.
//!
//! Raft asks its storage for entries to send; those no longer in memory are answered
//! "temporarily unavailable" and recorded (`peer_storage.rs`). The shard then calls
//! [`Peer::fetch_entries`], which reads them from the segments (at most
//! [`FETCH_BYTES`] a read, on the shard's own ring) and tells Raft, which sends them.

use kvs_core::log::LogDisk;

use super::{entry_from_record, Peer, PeerError};

/// Payload bytes read back from the segments at a time: a few appends' worth (raft-rs sends
/// at most `max_size_per_msg`, 1 MiB, an append).
pub const FETCH_BYTES: u64 = 4 * 1024 * 1024;

impl<D: LogDisk> Peer<D> {
    /// Moves applied entries out of Raft's in-memory log. A group of one keeps none (nobody
    /// else reads them). A larger group keeps the last `entries_in_memory` applied ones, for
    /// followers a little behind; the terms of those moved out stay, and their contents are
    /// read back from the segments when a follower needs them, back to the newest durable
    /// checkpoint, before which a follower gets a snapshot. So memory holds a window and the
    /// entries not yet applied, however far behind a follower is or how long ago the last
    /// checkpoint was.
    pub(super) fn compact(&mut self) -> Result<(), PeerError> {
        let applied = self.store.applied_index();
        let storage = self.node.store();
        if let Some(c) = self.store.durable_checkpoint() {
            if c.applied_index > storage.snapshot_at().0 {
                storage.set_snapshot_at(c.applied_index, c.applied_term);
            }
        }
        let keep = if self.membership.voters.len() > 1 {
            self.membership.entries_in_memory
        } else {
            0
        };
        // Entry `applied` itself stays: MemStorage keeps at least one entry.
        storage.compact_memory(applied.saturating_sub(keep).max(1))?;
        Ok(())
    }

    /// Whether Raft waits for entries to be read back from disk ([`Peer::fetch_entries`]).
    pub fn wants_entries(&self) -> bool {
        self.node.store().wants_entries()
    }

    /// Reads back the entries Raft asked for that are no longer in memory, and tells Raft,
    /// which then sends them (its messages come out with the next ready). An error reading
    /// the segments is returned; Raft asks again on the follower's next response.
    pub async fn fetch_entries(&mut self) -> Result<(), PeerError> {
        let wanted = self.node.store().take_wanted();
        let mut lows: Vec<u64> = wanted.iter().map(|(low, _)| *low).collect();
        lows.sort_unstable();
        lows.dedup();
        for low in lows {
            let storage = self.node.store();
            let (first, end) = storage.on_disk();
            if low < first || low >= end || storage.has_fetched(low) {
                continue;
            }
            let records = self
                .log
                .read_entries(low, end, FETCH_BYTES, |index, term| {
                    storage.term_on_disk(index) == Some(term)
                })
                .await?;
            if records.first().is_none_or(|r| r.index != low) {
                return Err(PeerError::Apply {
                    index: low,
                    detail: format!(
                        "entry {low} is after the checkpoint ({}) and applied, but not in the \
                         log's segments",
                        first - 1
                    ),
                });
            }
            let entries = records
                .into_iter()
                .map(entry_from_record)
                .collect::<Result<Vec<_>, _>>()?;
            storage.add_fetched(entries);
        }
        for (_, context) in wanted {
            self.node.on_entries_fetched(context);
        }
        Ok(())
    }

    /// Entries read back from the segments for followers since the peer started.
    pub fn entries_read_back(&self) -> u64 {
        self.node.store().read_back()
    }

    /// Deletes the log segments the newest durable checkpoint covers; returns how many.
    pub async fn trim_log(&mut self) -> Result<usize, PeerError> {
        let Some(checkpoint) = self.store.durable_checkpoint() else {
            return Ok(0);
        };
        let archiving = self.log.has_archive();
        let new_checkpoint = checkpoint.applied_index > self.log_trimmed_through;
        // With an archive, segments wait for their copies: look again at every trim.
        if !new_checkpoint && !archiving {
            return Ok(0);
        }
        if new_checkpoint && archiving && self.log.close_active() {
            // The segment written since goes to the archive once a checkpoint covers it (at
            // once, if this one does): a new segment takes the next writes, so the closed one
            // is not the last, which always stays.
            self.log.make_room().await?;
        }
        let removed = self.log.remove_through(checkpoint.applied_index).await?;
        self.log_trimmed_through = checkpoint.applied_index;
        Ok(removed)
    }
}
