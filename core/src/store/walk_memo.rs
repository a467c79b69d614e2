//! [`WalkMemo`]: where recent point lookups stopped for want of a page, so that the same
//! key's next lookup starts there instead of at the root.
//!
//! Why: a cold point read walked the tree four times — the connection's try from the pool,
//! the shard loop's try, the read task's walk that finds the page to load, and the walk
//! after loading it — and each walk down the inner pages costs cache misses, not
//! arithmetic: the tree's lookup was ~18% of kvsd's CPU on random reads of a store 30x
//! its cache (perf, docs/benchmarks.md). With the memo the first walk finds the missing
//! page; the tries after it report the miss at once, and the walk after the load starts at
//! the loaded page.
//!
//! Why it is safe: a stop is used only while the tree has the same shape
//! ([`super::tree::State`] counts every page allocated or freed and every move of entries
//! between siblings, and the root is compared too). While the shape holds, the page a key's
//! walk reached is still on that key's path: inserts, removals and replacements that stay
//! within their leaf change no routing. The key is compared in full, so two keys never
//! share a stop.

use std::hash::Hasher;

use super::hot::FnvHasher;
use super::key::Key;

/// Stops remembered: a direct-mapped table, indexed by a hash of the key. A stop must live
/// from a read's first try until its page has loaded (about a millisecond); at ~100K cold
/// reads/s that is ~100 others, so few are overwritten before use.
const SLOTS: usize = 1024;

struct Stop {
    key: Key,
    page: u64,
    shape: u64,
    root: u64,
}

pub struct WalkMemo {
    slots: Box<[Option<Stop>]>,
    /// The shape and root of the newest stop recorded. Shapes only grow, so when the tree's
    /// differ every stop is stale, and a lookup need not hash its key to find that out (a
    /// pool that misses nothing records none: its lookups pay one comparison).
    newest: (u64, u64),
}

impl Default for WalkMemo {
    fn default() -> Self {
        WalkMemo {
            slots: (0..SLOTS).map(|_| None).collect(),
            newest: (u64::MAX, 0),
        }
    }
}

/// The hot-key cache's FNV-1a: cheap for short keys. Only spreads keys over slots; a slot's
/// key is compared in full, so colliding keys cost a lost stop, never a wrong one.
fn slot_of(key: &[u8]) -> usize {
    let mut hasher = FnvHasher::default();
    hasher.write(key);
    let hash = hasher.finish();
    (hash ^ (hash >> 32)) as usize & (SLOTS - 1)
}

impl WalkMemo {
    /// Remembers that `key`'s walk, in a tree of this `shape` and `root`, needed `page`.
    pub fn record(&mut self, key: &[u8], page: u64, shape: u64, root: u64) {
        self.newest = (shape, root);
        self.slots[slot_of(key)] = Some(Stop {
            key: Key::new(key),
            page,
            shape,
            root,
        });
    }

    /// The page to start `key`'s walk at, if one was recorded for it in a tree of this
    /// `shape` and `root`.
    pub fn start(&self, key: &[u8], shape: u64, root: u64) -> Option<u64> {
        if self.newest != (shape, root) {
            return None;
        }
        match &self.slots[slot_of(key)] {
            Some(stop)
                if stop.shape == shape && stop.root == root && stop.key.as_slice() == key =>
            {
                Some(stop.page)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_used_only_for_its_key_and_the_same_shape_and_root() {
        let mut memo = WalkMemo::default();
        memo.record(b"key-1", 42, 7, 3);
        assert_eq!(memo.start(b"key-1", 7, 3), Some(42));
        assert_eq!(memo.start(b"key-1", 8, 3), None, "the tree changed shape");
        assert_eq!(memo.start(b"key-1", 7, 4), None, "the root changed");
        assert_eq!(memo.start(b"key-2", 7, 3), None, "another key");
        let long = [b'x'; 100];
        memo.record(&long, 9, 7, 3);
        assert_eq!(memo.start(&long, 7, 3), Some(9));
        assert_eq!(memo.start(&long[..99], 7, 3), None);
    }

    #[test]
    fn keys_sharing_a_slot_never_share_a_stop() {
        let mut memo = WalkMemo::default();
        // Find two keys in the same slot.
        let first = b"k0".to_vec();
        let other = (1..100_000u32)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| slot_of(k) == slot_of(&first))
            .expect("a colliding key among 100K");
        memo.record(&first, 5, 1, 1);
        assert_eq!(memo.start(&other, 1, 1), None);
        memo.record(&other, 6, 1, 1);
        assert_eq!(memo.start(&first, 1, 1), None, "overwritten, not confused");
        assert_eq!(memo.start(&other, 1, 1), Some(6));
    }
}
