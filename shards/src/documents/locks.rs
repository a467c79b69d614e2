//! The node's write locks on collections with unique indexes, which serialise the writes
//! whose unique keys are checked across shards. Self-contained behind [`lock_keys`] and
//! [`lock_collection`], so how waiters are woken can change without touching the writers.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// The node's write locks for collections with unique indexes (see the `documents` module
/// documentation). An insert holds its collection *shared* and each unique key it adds:
/// inserts of different keys go on together, since a new document's keys do not depend on
/// any other document. An update (whose new keys depend on the documents it reads) and the
/// cross-shard check of a new unique index hold the collection *exclusive*. Locks are taken
/// by polling and held across one write's probe and apply; a waiting exclusive holder
/// keeps new shared ones out, so it is not starved.
#[derive(Default)]
struct LockTable {
    collections: HashMap<String, CollState>,
    keys: BTreeSet<Vec<u8>>,
}

#[derive(Default)]
struct CollState {
    shared: usize,
    exclusive: bool,
    exclusive_waiting: usize,
}

static WRITE_LOCKS: Mutex<Option<LockTable>> = Mutex::new(None);

fn with_locks<T>(f: impl FnOnce(&mut LockTable) -> T) -> T {
    let mut guard = WRITE_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(LockTable::default))
}

/// A held lock; released when dropped.
pub(super) struct CollLock {
    coll: String,
    exclusive: bool,
    keys: Vec<Vec<u8>>,
}

impl Drop for CollLock {
    fn drop(&mut self) {
        with_locks(|t| {
            for key in &self.keys {
                t.keys.remove(key);
            }
            let state = t.collections.entry(self.coll.clone()).or_default();
            if self.exclusive {
                state.exclusive = false;
            } else {
                state.shared -= 1;
            }
            if state.shared == 0 && !state.exclusive && state.exclusive_waiting == 0 {
                t.collections.remove(&self.coll);
            }
        });
    }
}

const LOCK_POLL: Duration = Duration::from_micros(50);

/// Holds `coll` shared and every one of `keys` (unique keys, already prefixed by their
/// index), for an insert.
pub(super) async fn lock_keys(coll: &str, keys: Vec<Vec<u8>>) -> CollLock {
    loop {
        let taken = with_locks(|t| {
            let state = t.collections.entry(coll.to_string()).or_default();
            if state.exclusive || state.exclusive_waiting > 0 {
                return false;
            }
            if keys.iter().any(|k| t.keys.contains(k)) {
                return false;
            }
            state.shared += 1;
            t.keys.extend(keys.iter().cloned());
            true
        });
        if taken {
            return CollLock {
                coll: coll.to_string(),
                exclusive: false,
                keys,
            };
        }
        crate::runtime::wait(LOCK_POLL).await;
    }
}

/// Holds `coll` exclusive: no insert, update or index check of it goes on meanwhile.
pub(super) async fn lock_collection(coll: &str) -> CollLock {
    with_locks(|t| {
        t.collections
            .entry(coll.to_string())
            .or_default()
            .exclusive_waiting += 1
    });
    loop {
        let taken = with_locks(|t| {
            let state = t.collections.entry(coll.to_string()).or_default();
            if state.exclusive || state.shared > 0 {
                return false;
            }
            state.exclusive = true;
            state.exclusive_waiting -= 1;
            true
        });
        if taken {
            return CollLock {
                coll: coll.to_string(),
                exclusive: true,
                keys: Vec::new(),
            };
        }
        crate::runtime::wait(LOCK_POLL).await;
    }
}
