//! A node's hybrid logical clock (ADR 0023): versions are `wall ms × 2^16 + logical`.
//!
//! One clock per node, shared by its shard threads. It never goes backwards, runs at least
//! at wall time, and is raised past every version the node applies and every snapshot
//! timestamp it serves, so on one node a write that begins after another finished gets a
//! higher version, whichever shard each is on. A leader writes [`Clock::next`] into each
//! batch it proposes as the batch's version floor.

use std::sync::atomic::{AtomicU64, Ordering};

/// Logical ticks per millisecond of wall time.
pub const LOGICAL_BITS: u32 = 16;

#[derive(Debug, Default)]
pub struct Clock {
    last: AtomicU64,
}

/// The version wall time `unix_ms` starts at.
pub fn version_at_ms(unix_ms: u64) -> u64 {
    unix_ms << LOGICAL_BITS
}

impl Clock {
    /// A fresh value: above every value handed out or observed before, and at least the
    /// wall time's.
    pub fn next(&self) -> u64 {
        let wall = version_at_ms(kvs_core::sessions::wall_clock_ms());
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Raises the clock to at least `version` (a version applied here, or a snapshot's
    /// timestamp that later writes must stay above).
    pub fn observe(&self, version: u64) {
        self.last.fetch_max(version, Ordering::AcqRel);
    }

    /// The highest value handed out or observed.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_only_goes_forwards_and_stays_above_what_it_observed() {
        let clock = Clock::default();
        let a = clock.next();
        assert!(a >= version_at_ms(kvs_core::sessions::wall_clock_ms() - 1000));
        let b = clock.next();
        assert!(b > a);
        let ahead = b + (5_000 << LOGICAL_BITS);
        clock.observe(ahead);
        assert!(
            clock.next() > ahead,
            "a clock ahead of wall time keeps counting"
        );
        clock.observe(a);
        assert!(clock.last() > ahead, "observing the past changes nothing");
    }
}
