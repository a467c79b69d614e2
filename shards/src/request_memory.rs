//! The node's budget for requests being received or in flight (issue 16; docs/security.md):
//! `--max-request-memory`, split evenly between the cores, each core keeping its own share
//! (no atomics: a core's connections are its own).
//!
//! A connection about to receive a request larger than an idle receive buffer first reserves
//! the request's declared size from its core's share; while the share is spent it waits,
//! reading nothing (TCP pushes back on the client), until other requests are answered. The
//! reservation is held while the request is received and then in flight, and given back
//! when that request is answered (`conn.rs`: it travels with the request's arrival record).
//! Before a login (with `--auth required`) a request over 64 KiB closes the connection
//! instead: nothing but the small AUTH is taken then. Two rules keep
//! it from ever deadlocking: a request whose receipt has begun always finishes (it may grow
//! past its reservation as a RESP command's later arguments declare their sizes), and a core
//! with nothing reserved takes any request, so one larger than the share still goes alone.

use std::cell::Cell;

use crate::local::Notify;

/// One core's share of the budget.
pub struct RequestMemory {
    limit: usize,
    used: Cell<usize>,
    freed: Notify,
    /// How many large requests had to wait for room (INFO's `request_memory_waits`).
    waits: Cell<u64>,
}

impl RequestMemory {
    pub fn new(limit: usize) -> RequestMemory {
        RequestMemory {
            limit,
            used: Cell::new(0),
            freed: Notify::new(),
            waits: Cell::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    pub fn waits(&self) -> u64 {
        self.waits.get()
    }

    /// Reserves `bytes` for a request about to be received, if the share has room for it
    /// (or nothing is reserved at all).
    pub fn try_reserve(&self, bytes: usize) -> bool {
        let used = self.used.get();
        if used > 0 && used.saturating_add(bytes) > self.limit {
            return false;
        }
        self.used.set(used + bytes);
        true
    }

    /// Reserves `bytes` more for a request whose receipt has begun: never refused.
    pub fn grow(&self, bytes: usize) {
        self.used.set(self.used.get() + bytes);
    }

    /// Gives back `bytes` reserved before, waking the connections that wait for room.
    pub fn release(&self, bytes: usize) {
        let used = self.used.get();
        assert!(bytes <= used, "released {bytes} bytes of {used} reserved");
        self.used.set(used - bytes);
        if bytes > 0 {
            self.freed.notify();
        }
    }

    /// Counts a request that had to wait.
    pub fn waited(&self) {
        self.waits.set(self.waits.get() + 1);
    }

    /// Resolves once some reservation is given back.
    pub fn freed(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.freed.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_takes_requests_until_spent_and_always_takes_one() {
        let memory = RequestMemory::new(100);
        assert!(memory.try_reserve(60));
        assert!(memory.try_reserve(40));
        assert!(!memory.try_reserve(1), "the share is spent");
        memory.grow(30);
        assert_eq!(
            memory.used(),
            130,
            "a request under way grows past the share"
        );
        memory.release(130);
        assert!(
            memory.try_reserve(500),
            "with nothing reserved any request goes"
        );
        assert!(!memory.try_reserve(1));
        memory.release(500);
        assert_eq!(memory.used(), 0);
    }
}
