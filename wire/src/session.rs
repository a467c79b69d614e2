//! A client as a session of idempotent writes (ADR 0018): its id, and the numbers of its
//! writes, so a retried write is applied at most once and the server can forget the answers
//! the client has.

use std::collections::BTreeSet;
use std::hash::BuildHasher;

/// This client as a session of idempotent writes (ADR 0018).
pub(crate) struct Session {
    pub(crate) id: u64,
    next_seq: u64,
    /// Writes sent whose final answer has not come back yet.
    unanswered: BTreeSet<u64>,
}

impl Session {
    pub(crate) fn new() -> Session {
        // The standard library's hasher keys are random per process; the time and the
        // process id make two clients of one process differ too.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = std::collections::hash_map::RandomState::new().hash_one((now, std::process::id()));
        Session {
            id: id.max(1),
            next_seq: 1,
            unanswered: BTreeSet::new(),
        }
    }

    /// Numbers a new write: the session, its seq, and the lowest seq still waiting for its
    /// answer.
    pub(crate) fn begin(&mut self) -> (u64, u64, u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unanswered.insert(seq);
        let lowest = *self.unanswered.first().expect("seq was just added");
        (self.id, seq, lowest)
    }

    pub(crate) fn end(&mut self, seq: u64) {
        self.unanswered.remove(&seq);
    }
}
