//! The shard's table of pending proposals: writes proposed to Raft and not yet applied, keyed
//! by their entry's (term, index), with the reads that must be answered right after them.
//!
//! Writers are answered when their entry is applied, never before (the applied state holds
//! only durable entries). A read whose connection (origin) has a write not yet applied is
//! *attached* to the entry holding that connection's newest such write: it is answered right
//! after that entry is applied and before the next one is, so it sees exactly the writes its
//! connection sent before it. An entry applied with another term than proposed was replaced
//! by a new leader's: its writers learn that the outcome is unknown.
//!
//! Sans-IO: plain data, no store and no runtime; `shard` drives it. Generic over the writers'
//! reply address `R` and the attached reads `Q`; origins are the shard's (`shard::Origin`),
//! and an origin that keeps no order (`shard::NO_ORIGIN`) is never recorded.

use std::collections::{HashMap, VecDeque};

use kvs_core::command::Command;

/// A request's origin, as `shard::Origin`.
type Origin = u64;

/// One proposed entry's waiters.
#[derive(Debug)]
pub struct Proposal<R, Q> {
    pub index: u64,
    pub term: u64,
    /// One per command of the entry, in order.
    pub writers: Vec<R>,
    /// The origins with a write in the entry, sorted, each once.
    pub origins: Vec<Origin>,
    /// Reads to answer right after the entry is applied, in arrival order.
    pub reads: Vec<Q>,
    /// The entry's version floor (ADR 0023): its commands take versions at or above it.
    pub floor: u64,
    /// The entry's commands as they were encoded into it, for a node outside a cluster to
    /// apply without decoding them again (`PagedStore::apply_commands`); None in a cluster,
    /// where every member applies what the log holds.
    pub commands: Option<Vec<Command>>,
}

/// Proposals in index order, and which origins have writes among them.
#[derive(Debug)]
pub struct Pending<R, Q> {
    proposals: VecDeque<Proposal<R, Q>>,
    /// For each origin with a write not yet applied: the index of its newest such write.
    unapplied: HashMap<Origin, u64>,
}

impl<R, Q> Default for Pending<R, Q> {
    fn default() -> Self {
        Pending {
            proposals: VecDeque::new(),
            unapplied: HashMap::new(),
        }
    }
}

impl<R, Q> Pending<R, Q> {
    pub fn is_empty(&self) -> bool {
        self.proposals.is_empty()
    }

    pub fn len(&self) -> usize {
        self.proposals.len()
    }

    /// The index of `origin`'s newest write not yet applied, if it has one.
    pub fn newest_unapplied(&self, origin: Origin) -> Option<u64> {
        self.unapplied.get(&origin).copied()
    }

    /// The index of the newest proposal not yet applied, whoever wrote it.
    pub fn newest(&self) -> Option<u64> {
        self.proposals.back().map(|p| p.index)
    }

    /// The newest proposal not yet applied whose floor is at or below `ts`: the last one
    /// whose commands may take versions at or below `ts` (versions grow in apply order, and
    /// every later proposal's floor is above `ts`).
    pub fn newest_at_or_below(&self, ts: u64) -> Option<u64> {
        self.proposals
            .iter()
            .rev()
            .find(|p| p.floor <= ts)
            .map(|p| p.index)
    }

    /// Records a proposal. Indexes only grow (see [`Pending::take_from`]).
    pub fn add(&mut self, proposal: Proposal<R, Q>) {
        if let Some(last) = self.proposals.back() {
            assert!(
                proposal.index > last.index,
                "proposal {} after {}",
                proposal.index,
                last.index
            );
        }
        assert!(!proposal.writers.is_empty(), "a proposal has writers");
        for &origin in &proposal.origins {
            self.unapplied.insert(origin, proposal.index);
        }
        self.proposals.push_back(proposal);
    }

    /// Attaches a read to the proposal at `index` (which its origin's newest write is in).
    pub fn attach(&mut self, index: u64, read: Q) {
        let at = self
            .proposals
            .binary_search_by_key(&index, |p| p.index)
            .unwrap_or_else(|_| panic!("a read attached to entry {index}, which is not pending"));
        self.proposals[at].reads.push(read);
    }

    /// Takes the proposals at or below `index` (entry `index` was applied), oldest first, and
    /// forgets the origins whose newest write was among them.
    /// The commands kept for the proposal at `index` of `term`, with its version floor, if
    /// it is pending and kept them (taken: asked once, when the entry is applied).
    pub fn take_commands(&mut self, index: u64, term: u64) -> Option<(Vec<Command>, u64)> {
        self.proposals
            .iter_mut()
            .find(|p| p.index == index)
            .filter(|p| p.term == term)
            .and_then(|p| Some((p.commands.take()?, p.floor)))
    }

    pub fn take_through(&mut self, index: u64) -> Vec<Proposal<R, Q>> {
        let count = self
            .proposals
            .iter()
            .take_while(|p| p.index <= index)
            .count();
        let taken: Vec<Proposal<R, Q>> = self.proposals.drain(..count).collect();
        for proposal in &taken {
            for origin in &proposal.origins {
                if self.unapplied.get(origin) == Some(&proposal.index) {
                    self.unapplied.remove(origin);
                }
            }
        }
        taken
    }

    /// Takes the proposals at or after `index`: a new proposal got that index, so this
    /// peer's log no longer holds theirs (another leader's entries replaced them while this
    /// one did not lead).
    pub fn take_from(&mut self, index: u64) -> Vec<Proposal<R, Q>> {
        let keep = self
            .proposals
            .iter()
            .take_while(|p| p.index < index)
            .count();
        let taken: Vec<Proposal<R, Q>> = self.proposals.drain(keep..).collect();
        if !taken.is_empty() {
            self.unapplied.clear();
            for proposal in &self.proposals {
                for &origin in &proposal.origins {
                    self.unapplied.insert(origin, proposal.index);
                }
            }
        }
        taken
    }

    /// Takes every proposal (the shard failed: none will be applied by this peer).
    pub fn take_all(&mut self) -> Vec<Proposal<R, Q>> {
        self.unapplied.clear();
        self.proposals.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read: its origin and reply address.
    type Read = (Origin, u32);

    fn proposal(index: u64, origins: &[Origin]) -> Proposal<u32, Read> {
        Proposal {
            index,
            term: 1,
            writers: vec![index as u32],
            origins: origins.to_vec(),
            reads: Vec::new(),
            floor: index * 10,
            commands: None,
        }
    }

    fn read(origin: Origin, reply: u32) -> Read {
        (origin, reply)
    }

    #[test]
    fn an_origin_is_unapplied_until_its_newest_write_is_applied() {
        let mut pending: Pending<u32, Read> = Pending::default();
        pending.add(proposal(5, &[1, 2]));
        pending.add(proposal(6, &[2]));
        assert_eq!(pending.newest_unapplied(1), Some(5));
        assert_eq!(pending.newest_unapplied(2), Some(6));
        assert_eq!(pending.newest_unapplied(3), None);
        pending.attach(6, read(2, 20));
        let applied = pending.take_through(5);
        assert_eq!(applied.len(), 1);
        assert_eq!(pending.newest_unapplied(1), None);
        assert_eq!(
            pending.newest_unapplied(2),
            Some(6),
            "its write in 6 is not applied"
        );
        let applied = pending.take_through(6);
        assert_eq!(applied[0].reads[0], (2, 20));
        assert_eq!(pending.newest_unapplied(2), None);
        assert!(pending.is_empty());
    }

    #[test]
    #[should_panic(expected = "proposal 4 after 5")]
    fn indexes_only_grow() {
        let mut pending: Pending<u32, Read> = Pending::default();
        pending.add(proposal(5, &[1]));
        pending.add(proposal(4, &[1]));
    }

    #[test]
    fn proposals_a_new_leader_replaced_are_taken_from_their_index() {
        let mut pending: Pending<u32, Read> = Pending::default();
        pending.add(proposal(5, &[1]));
        pending.add(proposal(6, &[1, 2]));
        pending.add(proposal(7, &[2]));
        let replaced = pending.take_from(6);
        assert_eq!(replaced.iter().map(|p| p.index).collect::<Vec<_>>(), [6, 7]);
        assert_eq!(pending.newest_unapplied(1), Some(5));
        assert_eq!(pending.newest_unapplied(2), None);
        pending.add(proposal(6, &[2]));
        assert_eq!(pending.newest_unapplied(2), Some(6));
        assert!(pending.take_from(9).is_empty());
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn a_snapshot_waits_for_the_newest_proposal_that_may_take_a_version_at_or_below_it() {
        let mut pending: Pending<u32, Read> = Pending::default();
        for index in 1..=3 {
            pending.add(proposal(index, &[]));
        }
        // Floors 10, 20, 30.
        assert_eq!(pending.newest_at_or_below(5), None);
        assert_eq!(pending.newest_at_or_below(20), Some(2));
        assert_eq!(pending.newest_at_or_below(99), Some(3));
    }
}
