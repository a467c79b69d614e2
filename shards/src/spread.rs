//! The node's client connections counted per core, so each accepted connection goes to the
//! serving core with the fewest (see `node::accept_loop`), and counted out exactly once
//! however it ends; and the commands they sent, for INFO.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The node's client connections, counted across its cores.
pub struct ConnectionCounts {
    open: AtomicUsize,
    per_core: Vec<AtomicUsize>,
    /// Which cores take connections: set once a core serves, cleared when it stops.
    serving: Vec<AtomicBool>,
    /// Connections accepted since start.
    received: AtomicU64,
    /// Commands each core's connections sent: each core writes only its own, on a cache
    /// line of its own, so counting costs no sharing between cores.
    commands: Vec<PerCore>,
}

#[repr(align(64))]
struct PerCore(AtomicU64);

impl ConnectionCounts {
    pub fn new(cores: usize) -> ConnectionCounts {
        ConnectionCounts {
            open: AtomicUsize::new(0),
            per_core: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
            serving: (0..cores).map(|_| AtomicBool::new(false)).collect(),
            received: AtomicU64::new(0),
            commands: (0..cores).map(|_| PerCore(AtomicU64::new(0))).collect(),
        }
    }

    /// Counts a command a connection of `core` sent.
    pub fn count_command(&self, core: usize) {
        self.commands[core].0.fetch_add(1, Ordering::Relaxed);
    }

    /// Commands processed on all cores.
    pub fn commands(&self) -> u64 {
        self.commands
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections accepted since start.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Open connections on all cores (including those on their way to a core).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Open connections per core.
    pub fn per_core(&self) -> Vec<usize> {
        self.per_core
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }

    pub fn set_serving(&self, core: usize, serving: bool) {
        self.serving[core].store(serving, Ordering::SeqCst);
    }

    /// The core that should serve a connection `own` accepted: the serving core with the
    /// fewest connections, `own` when none has fewer (no hop across cores).
    pub fn least_loaded(&self, own: usize) -> usize {
        let mut best = own;
        let mut fewest = self.per_core[own].load(Ordering::SeqCst);
        for (core, count) in self.per_core.iter().enumerate() {
            let count = count.load(Ordering::SeqCst);
            if count < fewest && self.serving[core].load(Ordering::SeqCst) {
                (best, fewest) = (core, count);
            }
        }
        best
    }
}

/// One connection, counted in (on the node and on the core that is to serve it) from when
/// it is accepted; dropping the slot counts it out, however the connection ends: served
/// and closed, refused by a stopping core, or dropped unserved with the queue of a core
/// that stopped.
pub struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    core: usize,
}

impl ConnectionSlot {
    pub fn new(counts: &Arc<ConnectionCounts>, core: usize) -> ConnectionSlot {
        counts.received.fetch_add(1, Ordering::Relaxed);
        counts.open.fetch_add(1, Ordering::SeqCst);
        counts.per_core[core].fetch_add(1, Ordering::SeqCst);
        ConnectionSlot {
            counts: Arc::clone(counts),
            core,
        }
    }

    /// Counts the connection on `core` instead.
    pub fn move_to(&mut self, core: usize) {
        self.counts.per_core[core].fetch_add(1, Ordering::SeqCst);
        self.counts.per_core[self.core].fetch_sub(1, Ordering::SeqCst);
        self.core = core;
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counts.per_core[self.core].fetch_sub(1, Ordering::SeqCst);
        self.counts.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_serving_core_with_the_fewest_and_every_slot_counts_out() {
        let counts = Arc::new(ConnectionCounts::new(3));
        counts.set_serving(0, true);
        // Core 2 still recovers: never chosen, however few it has.
        counts.set_serving(1, true);
        let mut slots: Vec<ConnectionSlot> = Vec::new();
        for _ in 0..6 {
            let core = counts.least_loaded(0);
            slots.push(ConnectionSlot::new(&counts, core));
        }
        assert_eq!(counts.per_core(), [3, 3, 0]);
        assert_eq!(counts.open(), 6);
        // A tie keeps the connection on the core that accepted it.
        assert_eq!(counts.least_loaded(1), 1);
        counts.set_serving(2, true);
        assert_eq!(counts.least_loaded(0), 2);
        // A connection handed back (its core stopped) is counted where it is served.
        slots[0].move_to(2);
        assert_eq!(counts.per_core(), [2, 3, 1]);
        // However a connection ends (closed, or dropped unserved with a stopped core's
        // queue), dropping its slot counts it out exactly once.
        let queue: Vec<ConnectionSlot> = slots.drain(3..).collect();
        drop(queue);
        assert_eq!(counts.open(), 3);
        drop(slots);
        assert_eq!(counts.per_core(), [0, 0, 0]);
        assert_eq!(counts.open(), 0);
    }
}
