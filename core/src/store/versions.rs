//! The version history (ADR 0023): the entries writes replaced while a snapshot was open, so
//! that a read at a past timestamp finds the version that was newest then.
//!
//! The tree keeps only the newest version of each key. While at least one snapshot is open
//! the store records here every entry a write replaces or deletes: its key, its version, its
//! value (a large value stays in its extent, whose pages are kept from reuse), and the
//! version of the write that replaced it. An old entry is visible at timestamp `T` when
//! `version <= T < replaced_at`.
//!
//! A snapshot across shards opens in two steps: first *provisionally* at the shard's newest
//! version `L` (the reader does not know its timestamp yet, only that it will be at or above
//! `L`), which records every entry replaced from then on; then it is *fixed* at its timestamp
//! `T >= L`. Only snapshots open when an entry was replaced can need it (a snapshot begins
//! at or above the newest version applied, so at or above every `replaced_at` so far). So an
//! entry is recorded only if a provisional snapshot began before it was replaced or a fixed
//! one lies in its `[version, replaced_at)` — under one long snapshot a hot key keeps one old
//! version, not one per write — and everything goes when the last snapshot closes. Nothing
//! here is durable: snapshots do not survive a restart.

use std::collections::{BTreeMap, VecDeque};

use super::page::Value;

/// A replaced entry.
#[derive(Debug, Clone)]
pub struct Old {
    pub version: u64,
    pub replaced_at: u64,
    pub value: Value,
}

#[derive(Debug, Default)]
pub struct History {
    /// Fixed snapshots: timestamp → when each began (ms since the Unix epoch).
    open: BTreeMap<u64, Vec<u64>>,
    /// Provisional snapshots: the version they began at → when each began.
    provisional: BTreeMap<u64, Vec<u64>>,
    entries: BTreeMap<Vec<u8>, Vec<Old>>,
    /// Keys in the order their entries were recorded, with the entry's `replaced_at`: the
    /// pruning walks it from the front.
    order: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    count: usize,
}

/// What recording an entry did with its value: an extent the history now keeps, or one to
/// free at once.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// Not recorded: the caller frees the extent as before, if there was one.
    No,
    Yes,
}

impl History {
    pub fn recording(&self) -> bool {
        !self.open.is_empty() || !self.provisional.is_empty()
    }

    /// Begins a provisional snapshot at `newest`, the newest version applied, at wall time
    /// `now_ms`.
    pub fn begin(&mut self, newest: u64, now_ms: u64) {
        self.provisional.entry(newest).or_default().push(now_ms);
    }

    /// Fixes a provisional snapshot begun at `began` at timestamp `ts >= began`. False when
    /// no snapshot began there (it expired, or this store's shard began none).
    pub fn fix(&mut self, began: u64, ts: u64) -> bool {
        assert!(
            ts >= began,
            "a snapshot fixed at {ts}, below its start {began}"
        );
        let Some(when) = take_one(&mut self.provisional, began) else {
            return false;
        };
        self.open.entry(ts).or_default().push(when);
        true
    }

    /// Closes every snapshot that began before `before_ms`; returns the extents no longer
    /// kept, and how many closed.
    pub fn expire(&mut self, before_ms: u64) -> (Vec<(u64, u32)>, usize) {
        let mut closed = 0;
        for map in [&mut self.open, &mut self.provisional] {
            map.retain(|_, times| {
                let before = times.len();
                times.retain(|&t| t >= before_ms);
                closed += before - times.len();
                !times.is_empty()
            });
        }
        if closed == 0 {
            return (Vec::new(), 0);
        }
        (self.prune(), closed)
    }

    /// Whether a read at `ts` can be answered: a snapshot is fixed there.
    pub fn is_open(&self, ts: u64) -> bool {
        self.open.contains_key(&ts)
    }

    /// Closes one snapshot fixed at `ts`; returns the extents no longer kept (nothing when
    /// none was open there: it expired).
    pub fn close(&mut self, ts: u64) -> Vec<(u64, u32)> {
        if take_one(&mut self.open, ts).is_none() {
            return Vec::new();
        }
        self.prune()
    }

    /// Drops a provisional snapshot begun at `began` that was never fixed.
    pub fn abandon(&mut self, began: u64) -> Vec<(u64, u32)> {
        if take_one(&mut self.provisional, began).is_none() {
            return Vec::new();
        }
        self.prune()
    }

    /// Records `old`, replaced under `key` at `replaced_at`, if a snapshot may need it.
    pub fn record(&mut self, key: &[u8], old: Old) -> Kept {
        assert!(old.replaced_at >= old.version);
        let provisional = self
            .provisional
            .keys()
            .next()
            .is_some_and(|&began| old.replaced_at > began);
        let fixed = || {
            self.open
                .range(old.version..old.replaced_at)
                .next()
                .is_some()
        };
        if !provisional && !fixed() {
            return Kept::No;
        }
        self.bytes += key.len() + value_bytes(&old.value) + 24;
        self.count += 1;
        self.order.push_back((old.replaced_at, key.to_vec()));
        self.entries.entry(key.to_vec()).or_default().push(old);
        Kept::Yes
    }

    /// The entry of `key` visible at `ts`, if the history holds one.
    pub fn at(&self, key: &[u8], ts: u64) -> Option<&Old> {
        self.entries
            .get(key)?
            .iter()
            .find(|old| old.version <= ts && ts < old.replaced_at)
    }

    /// The keys in `[start, end]` (or `[start, end)`) the history holds an entry of.
    pub fn keys_in(&self, start: &[u8], end: std::ops::Bound<&[u8]>) -> Vec<Vec<u8>> {
        use std::ops::Bound;
        self.entries
            .range::<[u8], _>((Bound::Included(start), end))
            .map(|(key, _)| key.clone())
            .collect()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn open_count(&self) -> usize {
        self.open
            .values()
            .chain(self.provisional.values())
            .map(Vec::len)
            .sum()
    }

    /// Drops what no open snapshot can see; returns the extents no longer kept.
    fn prune(&mut self) -> Vec<(u64, u32)> {
        let mut freed = Vec::new();
        let oldest = self
            .open
            .keys()
            .next()
            .into_iter()
            .chain(self.provisional.keys().next())
            .min()
            .copied();
        let Some(oldest) = oldest else {
            // No snapshot open: everything goes, and recording stops.
            for old in std::mem::take(&mut self.entries).into_values().flatten() {
                if let Value::Extent { first, pages, .. } = old.value {
                    freed.push((first, pages));
                }
            }
            self.order.clear();
            self.bytes = 0;
            self.count = 0;
            return freed;
        };
        // Entries replaced at or before the oldest open snapshot are invisible to every
        // open one (each is at or above it).
        while let Some((replaced_at, _)) = self.order.front() {
            if *replaced_at > oldest {
                break;
            }
            let (_, key) = self.order.pop_front().expect("a front entry");
            let Some(olds) = self.entries.get_mut(&key) else {
                continue;
            };
            let before = olds.len();
            olds.retain(|old| {
                let keep = old.replaced_at > oldest;
                if !keep {
                    if let Value::Extent { first, pages, .. } = old.value {
                        freed.push((first, pages));
                    }
                    self.bytes -= key.len() + value_bytes(&old.value) + 24;
                }
                keep
            });
            self.count -= before - olds.len();
            if olds.is_empty() {
                self.entries.remove(&key);
            }
        }
        freed
    }
}

/// Takes one snapshot at `at` (the one that began first); returns when it began.
fn take_one(snapshots: &mut BTreeMap<u64, Vec<u64>>, at: u64) -> Option<u64> {
    let times = snapshots.get_mut(&at)?;
    let when = times.remove(0);
    if times.is_empty() {
        snapshots.remove(&at);
    }
    Some(when)
}

fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Inline(bytes) => bytes.len(),
        Value::Extent { .. } => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn old(version: u64, replaced_at: u64, value: &str) -> Old {
        Old {
            version,
            replaced_at,
            value: Value::Inline(value.as_bytes().to_vec()),
        }
    }

    fn value_at(history: &History, key: &str, ts: u64) -> Option<String> {
        history.at(key.as_bytes(), ts).map(|old| match &old.value {
            Value::Inline(v) => String::from_utf8(v.clone()).unwrap(),
            Value::Extent { .. } => "extent".into(),
        })
    }

    #[test]
    fn nothing_is_recorded_without_an_open_snapshot() {
        let mut history = History::default();
        assert_eq!(history.record(b"k", old(1, 2, "a")), Kept::No);
        assert!(history.is_empty());
        assert!(!history.is_open(5));
    }

    #[test]
    fn a_snapshot_sees_the_version_newest_at_its_timestamp() {
        let mut history = History::default();
        history.begin(10, 0);
        assert!(history.fix(10, 10));
        // k: 5 → 12 → 15 (deleted at 15).
        assert_eq!(history.record(b"k", old(5, 12, "five")), Kept::Yes);
        assert_eq!(value_at(&history, "k", 10), Some("five".into()));
        // Written after the snapshot: no snapshot sees it, so it is not kept.
        assert_eq!(history.record(b"k", old(12, 15, "twelve")), Kept::No);
        assert_eq!(value_at(&history, "k", 12), None);
        // A provisional snapshot keeps everything replaced after it began: its timestamp
        // may still be anywhere above.
        history.begin(15, 0);
        assert_eq!(history.record(b"k", old(16, 18, "sixteen")), Kept::Yes);
        assert_eq!(history.record(b"k", old(14, 15, "fourteen")), Kept::No);
        assert!(history.fix(15, 17));
        assert!(!history.fix(15, 17), "fixed once");
        assert_eq!(value_at(&history, "k", 17), Some("sixteen".into()));
        assert!(history.is_open(17) && !history.is_open(15));
        // Replaced by the command that wrote it: invisible to everyone.
        assert_eq!(history.record(b"j", old(19, 19, "x")), Kept::No);
        assert_eq!(
            history.keys_in(b"a", std::ops::Bound::Unbounded),
            vec![b"k".to_vec()]
        );
    }

    #[test]
    fn closing_snapshots_drops_what_none_of_the_open_ones_can_see() {
        let mut history = History::default();
        history.begin(10, 0);
        assert!(history.fix(10, 10));
        history.record(b"a", old(5, 12, "a5"));
        history.begin(20, 0);
        assert!(history.fix(20, 20));
        history.record(
            b"c",
            Old {
                version: 9,
                replaced_at: 13,
                value: Value::Extent {
                    first: 100,
                    pages: 2,
                    len: 5000,
                    lsn: 1,
                },
            },
        );
        history.record(b"b", old(8, 25, "b8"));
        assert_eq!(history.len(), 3);
        // The snapshot at 20 cannot see a (replaced at 12) nor c (at 13): they go, and c's
        // extent is handed back.
        assert_eq!(history.close(10), vec![(100, 2)]);
        assert_eq!(history.len(), 1);
        assert_eq!(value_at(&history, "b", 20), Some("b8".into()));
        assert_eq!(value_at(&history, "a", 10), None);
        assert_eq!(history.open_count(), 1);
        history.begin(30, 0);
        assert_eq!(history.abandon(30), vec![]);
        assert_eq!(history.abandon(30), vec![], "abandoned once");
        history.close(20);
        assert!(history.is_empty() && !history.recording());
        assert_eq!(history.bytes(), 0);
    }

    #[test]
    fn snapshots_older_than_the_maximum_age_expire() {
        let mut history = History::default();
        history.begin(10, 1_000);
        assert!(history.fix(10, 10));
        history.record(b"a", old(5, 12, "a5"));
        history.begin(12, 5_000);
        assert_eq!(history.expire(2_000), (vec![], 1));
        assert_eq!(
            value_at(&history, "a", 10),
            None,
            "its versions went with it"
        );
        assert!(!history.is_open(10));
        assert!(
            history.close(10).is_empty(),
            "closing an expired one is harmless"
        );
        assert_eq!(history.expire(6_000), (vec![], 1));
        assert!(!history.recording());
    }
}
