//! SCAN cursors are the node's, not a connection's: a client pool may continue a scan on
//! another connection, as it can with Redis. A cursor is a number standing for the key the
//! next page starts at (keys are ordered, and a key does not fit in the 64-bit cursor
//! clients parse); the table keeps the newest [`SCAN_CURSORS_MAX`]. A cursor the node does
//! not know (forgotten, or from before a restart) starts the scan over: Redis never refuses
//! a cursor, and starting over still returns every key that stays present (more than once,
//! which SCAN allows). See ADR 0014.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Cursors the node remembers; the oldest is forgotten past this.
pub const SCAN_CURSORS_MAX: usize = 16 * 1024;

/// The node's open SCAN cursors, shared by its cores. Only SCAN takes the lock, once per
/// page; no request on the hot path touches it.
pub struct ScanCursors {
    table: Mutex<CursorTable>,
}

struct CursorTable {
    next: u64,
    keys: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
}

impl ScanCursors {
    /// `seed` makes the first cursor (a restarted node hands out different numbers).
    pub fn new(seed: u64) -> ScanCursors {
        ScanCursors {
            table: Mutex::new(CursorTable {
                next: (seed % (1 << 40)).max(1),
                keys: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// A cursor standing for `next_key`, where the next page starts.
    pub fn remember(&self, next_key: Vec<u8>) -> u64 {
        let mut table = self
            .table
            .lock()
            .expect("the cursor table is never poisoned");
        let cursor = table.next;
        table.next += 1;
        if table.order.len() >= SCAN_CURSORS_MAX {
            if let Some(oldest) = table.order.pop_front() {
                table.keys.remove(&oldest);
            }
        }
        table.keys.insert(cursor, next_key);
        table.order.push_back(cursor);
        assert_eq!(table.keys.len(), table.order.len());
        cursor
    }

    /// Where the page of `cursor` starts: the first key for 0 and for a cursor not known.
    /// A cursor stays valid after use, so a client may ask for the same page again.
    pub fn resume(&self, cursor: u64) -> Vec<u8> {
        if cursor == 0 {
            return Vec::new();
        }
        let table = self
            .table
            .lock()
            .expect("the cursor table is never poisoned");
        table.keys.get(&cursor).cloned().unwrap_or_default()
    }
}
