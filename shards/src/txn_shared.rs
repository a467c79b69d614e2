//! What a node's transactions share across its cores (ADR 0022): the wait-for graph, the
//! lock and transaction timeouts, and the source of transaction ids.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvs_core::sessions::wall_clock_ms;

use crate::deadlock::WaitGraph;

/// How long a transaction waits for a lock by default (`--lock-timeout`).
pub const LOCK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// What the node's transactions share: the wait-for graph, the timeouts, the ids.
#[derive(Debug)]
pub struct Transactions {
    pub graph: Arc<WaitGraph>,
    pub lock_timeout: Duration,
    pub txn_timeout: Duration,
    pub node_id: u64,
    last_id: AtomicU64,
    /// The node's hybrid clock (ADR 0023), shared by its shards.
    pub clock: Arc<crate::clock::Clock>,
    /// `--txn-max-age`: snapshots older than this are closed.
    pub snapshot_max_age: Duration,
}

/// `--txn-max-age`'s default.
pub const SNAPSHOT_MAX_AGE_DEFAULT: Duration = Duration::from_secs(60);

impl Transactions {
    /// With `--txn-max-age`.
    pub fn with_snapshot_max_age(mut self, max_age: Duration) -> Transactions {
        self.snapshot_max_age = max_age;
        self
    }

    pub fn new(node_id: u64, lock_timeout: Duration, txn_timeout: Duration) -> Transactions {
        Transactions {
            graph: Arc::new(WaitGraph::new()),
            lock_timeout,
            txn_timeout,
            node_id,
            last_id: AtomicU64::new(0),
            clock: Arc::default(),
            snapshot_max_age: SNAPSHOT_MAX_AGE_DEFAULT,
        }
    }

    /// A new transaction id: the begin time in ms (high bits, so younger transactions have
    /// larger ids: the deadlock detector's victim is the largest) with a counter, and the
    /// node's id in the low byte so that nodes never hand out the same id.
    pub fn new_id(&self) -> u64 {
        let time = wall_clock_ms() << 12;
        let mut last = self.last_id.load(Ordering::Relaxed);
        loop {
            let next = time.max(last + 1);
            match self
                .last_id
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (next << 8) | (self.node_id & 0xff),
                Err(now) => last = now,
            }
        }
    }
}
