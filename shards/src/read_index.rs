//! The reads a cluster's leader holds until Raft confirms them (ReadIndex, ADR 0015): gathered
//! while a round is taken, asked for together under one context, confirmed with the commit
//! index of that moment, and answered once the store has applied that index.
//!
//! A read is linearizable this way: the confirmation comes from a quorum after the read
//! arrived, so the leader still led then, and every write acknowledged before the read was
//! sent is at or below the confirmed index. A leader that was paused and deposed never gets
//! the confirmation; its reads are failed (surely without effect: the client retries) once it
//! knows it no longer leads.
//!
//! Sans-IO: plain data, generic over the read `Q`; `shard` drives it.

use std::collections::VecDeque;

/// Reads in the three stages.
#[derive(Debug)]
pub struct ReadIndexQueue<Q> {
    /// Taken in this round, not yet asked for.
    gathering: Vec<Q>,
    /// Asked for under a context (a number, sent as 8 bytes), oldest first.
    waiting: VecDeque<(u64, Vec<Q>)>,
    /// Confirmed at a commit index, oldest first: answered once it is applied.
    confirmed: VecDeque<(u64, Vec<Q>)>,
    next_context: u64,
}

impl<Q> Default for ReadIndexQueue<Q> {
    fn default() -> Self {
        ReadIndexQueue {
            gathering: Vec::new(),
            waiting: VecDeque::new(),
            confirmed: VecDeque::new(),
            next_context: 1,
        }
    }
}

impl<Q> ReadIndexQueue<Q> {
    pub fn gather(&mut self, read: Q) {
        self.gathering.push(read);
    }

    /// The context to ask Raft's ReadIndex with for the reads gathered so far (they wait
    /// for it from now on), or None when none were gathered.
    pub fn ask(&mut self) -> Option<Vec<u8>> {
        if self.gathering.is_empty() {
            return None;
        }
        let context = self.next_context;
        self.next_context += 1;
        self.waiting
            .push_back((context, std::mem::take(&mut self.gathering)));
        Some(context.to_le_bytes().to_vec())
    }

    /// Raft confirmed the reads asked with `context` at commit index `index`. Confirmations
    /// come in the order asked; one for a context no longer waiting (its reads were failed)
    /// is ignored. Reads asked before it are confirmed with it: Raft confirms a context
    /// only after every earlier one. A read confirmed under the lease meanwhile may have
    /// been given a later index (the commit index when it came): these reads wait for that
    /// one too, so confirmed indexes never go back (a later state answers as well).
    pub fn confirm(&mut self, context: &[u8], index: u64) {
        let Some(context) = context.try_into().ok().map(u64::from_le_bytes) else {
            return;
        };
        if !self.waiting.iter().any(|(c, _)| *c == context) {
            return;
        }
        let index = self
            .confirmed
            .back()
            .map_or(index, |(last, _)| index.max(*last));
        while let Some((asked, reads)) = self.waiting.pop_front() {
            self.confirmed.push_back((index, reads));
            if asked == context {
                break;
            }
        }
    }

    /// A read confirmed without asking (the leader's lease holds, ADR 0019) at `index`, the
    /// commit index now: answered once it is applied, after the reads confirmed before it.
    pub fn confirm_at(&mut self, read: Q, index: u64) {
        match self.confirmed.back_mut() {
            Some((last, reads)) if *last == index => reads.push(read),
            last => {
                if let Some((last, _)) = last {
                    assert!(*last <= index, "confirmed indexes never go back");
                }
                self.confirmed.push_back((index, vec![read]));
            }
        }
    }

    /// The confirmed reads whose index is applied, oldest first.
    pub fn take_applied(&mut self, applied: u64) -> Vec<Q> {
        let mut ready = Vec::new();
        while self
            .confirmed
            .front()
            .is_some_and(|(index, _)| *index <= applied)
        {
            let (_, reads) = self.confirmed.pop_front().expect("the front was just seen");
            ready.extend(reads);
        }
        ready
    }

    /// The reads not yet confirmed (gathered or waiting): this peer no longer leads, so they
    /// will never be. Confirmed reads stay: their confirmation holds.
    pub fn take_unconfirmed(&mut self) -> Vec<Q> {
        let mut reads: Vec<Q> = self.waiting.drain(..).flat_map(|(_, r)| r).collect();
        reads.append(&mut self.gathering);
        reads
    }

    pub fn is_empty(&self) -> bool {
        self.gathering.is_empty() && self.waiting.is_empty() && self.confirmed.is_empty()
    }

    /// Whether reads wait for a ReadIndex not yet asked or answered.
    pub fn has_unconfirmed(&self) -> bool {
        !self.gathering.is_empty() || !self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_answered_once_their_confirmed_index_is_applied() {
        let mut queue = ReadIndexQueue::default();
        assert_eq!(queue.ask(), None);
        queue.gather("a");
        queue.gather("b");
        let first = queue.ask().unwrap();
        queue.gather("c");
        let second = queue.ask().unwrap();
        assert_ne!(first, second);
        // Not confirmed yet: nothing to answer, however far the store applied.
        assert!(queue.take_applied(u64::MAX).is_empty());
        queue.confirm(&first, 7);
        assert!(queue.take_applied(6).is_empty());
        assert_eq!(queue.take_applied(7), vec!["a", "b"]);
        // Confirming a later context confirms everything asked before it.
        queue.gather("d");
        let third = queue.ask().unwrap();
        queue.confirm(&third, 9);
        queue.confirm(&second, 9); // already confirmed with the third: ignored
        assert_eq!(queue.take_applied(9), vec!["c", "d"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn reads_confirmed_by_a_lease_wait_behind_earlier_ones() {
        let mut queue = ReadIndexQueue::default();
        queue.gather("a");
        let first = queue.ask().unwrap();
        queue.confirm(&first, 5);
        queue.confirm_at("b", 5);
        queue.confirm_at("c", 8);
        assert_eq!(queue.take_applied(7), vec!["a", "b"]);
        assert_eq!(queue.take_applied(8), vec!["c"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_confirmation_older_than_a_lease_read_waits_for_the_newer_index() {
        // Asked at commit 7, confirmed only after a read under the lease was confirmed at
        // commit 10: its reads are answered at 10 (later state is as good), in order.
        let mut queue = ReadIndexQueue::default();
        queue.gather("a");
        let asked = queue.ask().unwrap();
        queue.confirm_at("b", 10);
        queue.confirm(&asked, 7);
        assert!(queue.take_applied(9).is_empty());
        assert_eq!(queue.take_applied(10), vec!["b", "a"]);
    }

    #[test]
    fn a_deposed_leader_fails_what_is_unconfirmed_and_keeps_what_is() {
        let mut queue = ReadIndexQueue::default();
        queue.gather(1);
        let first = queue.ask().unwrap();
        queue.gather(2);
        let second = queue.ask().unwrap();
        queue.gather(3);
        queue.confirm(&first, 4);
        let mut failed = queue.take_unconfirmed();
        failed.sort_unstable();
        assert_eq!(failed, vec![2, 3]);
        assert!(!queue.has_unconfirmed());
        // A confirmation that comes after the reads were failed is ignored.
        queue.confirm(&second, 5);
        assert_eq!(queue.take_applied(5), vec![1]);
        assert!(queue.is_empty());
        // Garbage contexts are ignored too.
        queue.confirm(b"xyz", 6);
    }
}
