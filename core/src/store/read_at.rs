//! Reads at a timestamp (ADR 0023): snapshots opened and closed on this store, and point
//! reads and scans that answer, for each key, the newest version at or below the snapshot's
//! timestamp — from the tree when its entry is that old, else from the version history.
//!
//! The caller makes sure nothing below the timestamp is still to be applied when it reads
//! (the shard waits for the entries proposed before, and for transactions prepared at or
//! below the timestamp); from then on every write takes a version above it, and the history
//! records what such writes replace.

use std::ops::Bound;

use super::page::Entry;
use super::read::kv_tree_key;
use super::versions::Old;
use super::{PagedStore, StoreError, SPACE_KV};
use crate::log::LogFile;
use crate::state::Versioned;

/// Versions in the history and snapshots open, for INFO and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryStats {
    pub snapshots: usize,
    pub versions: usize,
    pub bytes: usize,
}

impl<F: LogFile> PagedStore<F> {
    /// Begins a snapshot provisionally at the newest version applied, and returns it: from
    /// now on the history records every entry replaced, so the snapshot can be fixed at any
    /// timestamp at or above it ([`PagedStore::snapshot_fix`]).
    ///
    /// `now_ms`: the wall time, by which [`PagedStore::snapshot_expire`] closes it.
    ///
    /// Never 0, which callers use for "no snapshot began here": a store with no write yet
    /// begins at 1 (no write takes a version below 1, so nothing is missed).
    pub fn snapshot_begin(&self, now_ms: u64) -> u64 {
        let newest = self.state.borrow().last_version.max(1);
        self.history.borrow_mut().begin(newest, now_ms);
        newest
    }

    /// [`PagedStore::snapshot_begin`] once no command is half applied: a read at the
    /// snapshot then sees every command whole or not at all, however long it waits for
    /// pages (ADR 0030).
    pub async fn snapshot_begin_settled(&self, now_ms: u64) -> u64 {
        self.settled().await;
        self.snapshot_begin(now_ms)
    }

    /// Waits until no command is half applied, and returns a mark of the commands begun so
    /// far. A read made from then on whose [`PagedStore::unchanged_since`] holds at its end
    /// saw one moment of the store: no command was applied, even in part, in between.
    pub async fn settled_mark(&self) -> u64 {
        self.settled().await;
        self.commands_begun.get()
    }

    /// Whether no command has begun since `mark` ([`PagedStore::settled_mark`]).
    pub fn unchanged_since(&self, mark: u64) -> bool {
        self.commands_begun.get() == mark
    }

    /// Fixes a snapshot begun at `began` at timestamp `ts >= began`. False when none began
    /// there (it expired, or another member of the group began it).
    pub fn snapshot_fix(&self, began: u64, ts: u64) -> bool {
        self.history.borrow_mut().fix(began, ts)
    }

    /// Whether a snapshot is open at `ts`: a read at it that began while it was open and
    /// finds it still open read what it had to (nothing it needed was dropped).
    pub fn snapshot_is_open(&self, ts: u64) -> bool {
        self.history.borrow().is_open(ts)
    }

    /// A snapshot at the newest version applied, begun and fixed at once.
    pub fn snapshot_open(&self, now_ms: u64) -> u64 {
        let ts = self.snapshot_begin(now_ms);
        assert!(self.snapshot_fix(ts, ts));
        ts
    }

    /// Closes every snapshot that began before `before_ms` (`--txn-max-age`); returns how
    /// many it closed.
    pub fn snapshot_expire(&self, before_ms: u64) -> usize {
        let (freed, closed) = self.history.borrow_mut().expire(before_ms);
        self.release_extents(freed);
        closed
    }

    /// Drops a snapshot begun at `began` and never fixed.
    pub fn snapshot_abandon(&self, began: u64) {
        let freed = self.history.borrow_mut().abandon(began);
        self.release_extents(freed);
    }

    /// Closes a snapshot fixed at `ts`; the history lets go of what no open one needs.
    pub fn snapshot_close(&self, ts: u64) {
        let freed = self.history.borrow_mut().close(ts);
        self.release_extents(freed);
    }

    fn release_extents(&self, freed: Vec<(u64, u32)>) {
        let mut st = self.state.borrow_mut();
        for (first, pages) in freed {
            assert_eq!(st.reserved.remove(&first), Some(pages), "a kept extent");
            st.free_extent(first, pages);
        }
    }

    pub fn history_stats(&self) -> HistoryStats {
        let history = self.history.borrow();
        HistoryStats {
            snapshots: history.open_count(),
            versions: history.len(),
            bytes: history.bytes(),
        }
    }

    /// The value of key-value key `key` at snapshot `ts`, which must be open from before the
    /// call until after it ([`PagedStore::snapshot_is_open`] tells; a snapshot closed
    /// meanwhile may have lost what the read needed, and the caller must not use it).
    pub async fn get_at(&self, key: &[u8], ts: u64) -> Result<Option<Versioned>, StoreError> {
        self.get_tree_at(&kv_tree_key(key), ts).await
    }

    /// Like [`PagedStore::get_at`], for a tree key of any space.
    pub(super) async fn get_tree_at(
        &self,
        tree_key: &[u8],
        ts: u64,
    ) -> Result<Option<Versioned>, StoreError> {
        let current = self.lookup_value(tree_key).await?;
        if let Some((entry, value)) = current {
            if entry.version <= ts {
                return Ok(Some(Versioned {
                    version: entry.version,
                    value,
                }));
            }
        }
        // The entry that was newest at `ts` was replaced before the current one was written,
        // so the history holds it (or the key did not exist then).
        let old = self.history.borrow().at(tree_key, ts).cloned();
        match old {
            None => Ok(None),
            Some(old) => self.old_value(tree_key.to_vec(), old).await.map(Some),
        }
    }

    /// Up to `limit` key-value pairs with keys in `[start, end)` as they were at snapshot
    /// `ts`, in key order; `ts` must be open as for [`PagedStore::get_at`].
    pub async fn scan_at(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        ts: u64,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let end = match end {
            Some(end) => kv_tree_key(end),
            None => vec![SPACE_KV + 1],
        };
        let mut pairs = self
            .scan_tree_at(&kv_tree_key(start), &end, limit, ts)
            .await?;
        for (key, _) in &mut pairs {
            key.remove(0);
        }
        Ok(pairs)
    }

    /// Like [`PagedStore::scan_at`], over tree keys of any space.
    pub(super) async fn scan_tree_at(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        ts: u64,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let end = end.to_vec();
        let mut from = start.to_vec();
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        while out.len() < limit && from < end {
            let want = limit - out.len();
            let (entries, next) = self.run(|st| st.scan_leaf(&from, Some(&end), want)).await?;
            // No await from the leaf's entries to the history's keys: together they are
            // every key of the range covered, as of one moment.
            let covered_to = if entries.len() == want {
                Bound::Included(entries.last().expect("want > 0").key.to_vec())
            } else {
                match &next {
                    Some(next) if next.as_slice() < end.as_slice() => Bound::Excluded(next.clone()),
                    _ => Bound::Excluded(end.clone()),
                }
            };
            let mut found: Vec<(Vec<u8>, Found)> = Vec::new();
            {
                let history = self.history.borrow();
                for entry in entries {
                    let key = entry.key.to_vec();
                    if entry.version <= ts {
                        found.push((key, Found::Current(entry)));
                    } else if let Some(old) = history.at(&key, ts) {
                        found.push((key, Found::Old(old.clone())));
                    }
                }
                let bound = match &covered_to {
                    Bound::Included(k) => Bound::Included(k.as_slice()),
                    Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
                    Bound::Unbounded => Bound::Unbounded,
                };
                for key in history.keys_in(&from, bound) {
                    if found.iter().any(|(k, _)| *k == key) {
                        continue;
                    }
                    // Deleted since `ts` (or replaced and then deleted): only the history
                    // has it.
                    if let Some(old) = history.at(&key, ts) {
                        found.push((key, Found::Old(old.clone())));
                    }
                }
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, source) in found {
                if out.len() == limit {
                    break;
                }
                let value = match source {
                    Found::Current(entry) => match self.value_of(&entry).await? {
                        Ok(value) => value,
                        Err(e) => return Err(self.corrupt(e)),
                    },
                    Found::Old(old) => self.old_value(key.clone(), old).await?.value,
                };
                out.push((key, value));
            }
            from = match covered_to {
                Bound::Included(mut last) => {
                    last.push(0);
                    last
                }
                Bound::Excluded(next) => next,
                Bound::Unbounded => break,
            };
        }
        Ok(out)
    }

    async fn old_value(&self, key: Vec<u8>, old: Old) -> Result<Versioned, StoreError> {
        let entry = Entry {
            key: super::page::Key::new(&key),
            version: old.version,
            value: old.value,
        };
        match self.value_of(&entry).await? {
            Ok(value) => Ok(Versioned {
                version: old.version,
                value,
            }),
            // The history keeps its extents from reuse: a bad one is damage.
            Err(e) => Err(self.corrupt(e)),
        }
    }
}

enum Found {
    Current(Entry),
    Old(Old),
}
