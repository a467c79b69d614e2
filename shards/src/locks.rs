//! The write locks of collections with unique indexes, kept by the shard that owns each
//! collection's lock (the shard its name hashes to) and taken by message: a coordinator on
//! any core sends a lock request, the owner grants it at once or queues it, and a release
//! grants the waiters it unblocks by answering them. Nobody polls.
//!
//! An insert holds its collection *shared* together with each unique key it adds: inserts of
//! different keys go on together, since a new document's keys do not depend on any other
//! document. An update (whose new keys depend on the documents it reads) and the cross-shard
//! check of a new unique index hold the collection *exclusive*. Waiters are granted in
//! arrival order, except that a shared request blocked only by its keys lets later requests
//! pass; an exclusive waiter lets nothing pass, so it is never starved.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// A lock on a collection: exclusive, or shared together with `keys` (unique index keys,
/// already prefixed by their index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRequest {
    pub coll: String,
    pub exclusive: bool,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Collection<W> {
    shared: usize,
    exclusive: bool,
    keys: BTreeSet<Vec<u8>>,
    waiting: VecDeque<(LockRequest, W)>,
}

impl<W> Default for Collection<W> {
    fn default() -> Self {
        Collection {
            shared: 0,
            exclusive: false,
            keys: BTreeSet::new(),
            waiting: VecDeque::new(),
        }
    }
}

impl<W> Collection<W> {
    fn compatible(&self, request: &LockRequest) -> bool {
        if request.exclusive {
            !self.exclusive && self.shared == 0
        } else {
            !self.exclusive && !request.keys.iter().any(|k| self.keys.contains(k))
        }
    }

    fn take(&mut self, request: &LockRequest) {
        debug_assert!(self.compatible(request));
        if request.exclusive {
            self.exclusive = true;
        } else {
            self.shared += 1;
            self.keys.extend(request.keys.iter().cloned());
        }
    }

    fn idle(&self) -> bool {
        self.shared == 0 && !self.exclusive && self.waiting.is_empty()
    }
}

/// One shard's locks; `W` is how a waiter is answered.
#[derive(Debug)]
pub struct LockTable<W> {
    collections: HashMap<String, Collection<W>>,
}

impl<W> Default for LockTable<W> {
    fn default() -> Self {
        LockTable {
            collections: HashMap::new(),
        }
    }
}

impl<W> LockTable<W> {
    /// Grants `request` now (the waiter comes back) or queues it (None).
    pub fn acquire(&mut self, request: LockRequest, waiter: W) -> Option<W> {
        let collection = self.collections.entry(request.coll.clone()).or_default();
        let exclusive_waiting = collection.waiting.iter().any(|(r, _)| r.exclusive);
        if !exclusive_waiting && collection.compatible(&request) {
            collection.take(&request);
            return Some(waiter);
        }
        collection.waiting.push_back((request, waiter));
        None
    }

    /// Releases a lock `request` was granted; returns the waiters granted now.
    pub fn release(&mut self, request: &LockRequest) -> Vec<W> {
        let collection = self
            .collections
            .get_mut(&request.coll)
            .expect("released a lock on a collection with no lock held");
        if request.exclusive {
            assert!(collection.exclusive, "released an exclusive lock not held");
            collection.exclusive = false;
        } else {
            assert!(collection.shared > 0, "released a shared lock not held");
            collection.shared -= 1;
            for key in &request.keys {
                collection.keys.remove(key);
            }
        }
        let mut granted = Vec::new();
        let mut at = 0;
        while at < collection.waiting.len() {
            let (waiting, _) = &collection.waiting[at];
            if collection.compatible(waiting) {
                let (waiting, waiter) = collection.waiting.remove(at).expect("in range");
                collection.take(&waiting);
                granted.push(waiter);
            } else if waiting.exclusive || collection.exclusive {
                break;
            } else {
                at += 1;
            }
        }
        if collection.idle() {
            self.collections.remove(&request.coll);
        }
        granted
    }

    /// Collections with a lock held or waited for.
    pub fn len(&self) -> usize {
        self.collections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.collections.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(keys: &[&str]) -> LockRequest {
        LockRequest {
            coll: "c".into(),
            exclusive: false,
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        }
    }

    fn exclusive() -> LockRequest {
        LockRequest {
            coll: "c".into(),
            exclusive: true,
            keys: Vec::new(),
        }
    }

    #[test]
    fn inserts_of_different_keys_go_together_and_one_key_waits_for_its_holder() {
        let mut table = LockTable::default();
        assert_eq!(table.acquire(shared(&["a"]), 1), Some(1));
        assert_eq!(table.acquire(shared(&["b"]), 2), Some(2));
        assert_eq!(table.acquire(shared(&["a", "c"]), 3), None);
        // A later insert of another key passes the one blocked by its key.
        assert_eq!(table.acquire(shared(&["d"]), 4), Some(4));
        assert_eq!(table.release(&shared(&["b"])), Vec::<i32>::new());
        assert_eq!(table.release(&shared(&["a"])), [3]);
        table.release(&shared(&["d"]));
        table.release(&shared(&["a", "c"]));
        assert!(table.is_empty(), "nothing is left behind");
    }

    #[test]
    fn an_exclusive_waiter_is_not_starved_and_is_woken_by_the_last_release() {
        let mut table = LockTable::default();
        assert_eq!(table.acquire(shared(&["a"]), 1), Some(1));
        assert_eq!(table.acquire(exclusive(), 2), None);
        // New inserts queue behind the waiting exclusive lock.
        assert_eq!(table.acquire(shared(&["b"]), 3), None);
        assert_eq!(table.release(&shared(&["a"])), [2]);
        assert_eq!(table.release(&exclusive()), [3]);
        table.release(&shared(&["b"]));
        assert!(table.is_empty());
    }

    #[test]
    fn collections_are_independent() {
        let mut table = LockTable::default();
        assert_eq!(table.acquire(exclusive(), 1), Some(1));
        let mut other = exclusive();
        other.coll = "d".into();
        assert_eq!(table.acquire(other.clone(), 2), Some(2));
        assert_eq!(table.len(), 2);
        table.release(&other);
        table.release(&exclusive());
        assert!(table.is_empty());
    }
}
