//! A linearizability checker for histories of a key-value store, as clients observed them.
//!
//! A history is linearizable when every operation can be given a single instant between its
//! invocation and its response at which it took effect, such that the results are those of
//! the operations run one at a time in that order. Keys are independent objects, so the
//! history is checked one key at a time (linearizability is compositional: Herlihy & Wing).
//!
//! Each key's sub-history is searched as Wing & Gong do, with Lowe's memoization (the
//! approach porcupine takes): operations are walked in time order; at a call, the operation
//! may be linearized now if the model accepts it; at a response whose operation is not yet
//! linearized, the search backtracks. A state already reached with the same set of
//! linearized operations is not explored again.
//!
//! An operation whose outcome the client does not know (a timeout, OUTCOME_UNKNOWN, a
//! connection lost before the reply) has no response: it may take effect at any instant
//! after its invocation, or never (which is the same as taking effect after everything
//! else), and any result it would have had is accepted.
//!
//! The checker is itself tested against histories that are not linearizable (stale reads,
//! lost writes, values never written, reads that disagree on the order of writes).
//!
//! Histories of transactions are checked by [`txn`], against Adya's isolation levels.

pub mod txn;

use std::collections::{BTreeMap, HashSet};

/// What an operation did, on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// A write of the value.
    Put(Vec<u8>),
    /// A read.
    Get,
    /// A delete.
    Delete,
    /// Writes `new` (None: deletes) only if the value is `expected` (None: absent).
    Cas {
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

/// What the client was told.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Put: done.
    Done,
    /// Get: the value, or None when missing.
    Value(Option<Vec<u8>>),
    /// Delete: whether the key existed; Cas: whether it wrote.
    Flag(bool),
    /// Not known: the operation may or may not have taken effect.
    Unknown,
}

/// One operation of a client, with the times it was invoked and answered (any clock shared
/// by all clients: nanoseconds since the test started, say). `returned` is ignored for an
/// `Unknown` outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub key: Vec<u8>,
    pub op: Op,
    pub outcome: Outcome,
    pub invoked: u64,
    pub returned: u64,
}

/// Why a history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<u8>,
    /// The key's operations, in invocation order.
    pub events: Vec<Event>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "the operations on key {:?} are not linearizable:",
            String::from_utf8_lossy(&self.key)
        )?;
        let text = |v: &Option<Vec<u8>>| match v {
            Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
            None => "nil".to_string(),
        };
        for e in &self.events {
            let op = match &e.op {
                Op::Put(v) => format!("put {}", text(&Some(v.clone()))),
                Op::Get => "get".to_string(),
                Op::Delete => "delete".to_string(),
                Op::Cas { expected, new } => format!("cas {} -> {}", text(expected), text(new)),
            };
            let outcome = match &e.outcome {
                Outcome::Done => "ok".to_string(),
                Outcome::Value(v) => text(v),
                Outcome::Flag(b) => b.to_string(),
                Outcome::Unknown => "unknown".to_string(),
            };
            let returned = match e.outcome {
                Outcome::Unknown => "?".to_string(),
                _ => e.returned.to_string(),
            };
            writeln!(f, "  [{} .. {returned}] {op} -> {outcome}", e.invoked)?;
        }
        Ok(())
    }
}

/// Checks a whole history, key by key; the first key whose operations are not
/// linearizable is returned.
pub fn check(history: &[Event]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&[u8], Vec<&Event>> = BTreeMap::new();
    for event in history {
        assert!(
            event.outcome == Outcome::Unknown || event.invoked <= event.returned,
            "an operation answered before it was invoked: {event:?}"
        );
        by_key.entry(&event.key).or_default().push(event);
    }
    for (key, events) in by_key {
        if !check_key(&events) {
            let mut events: Vec<Event> = events.into_iter().cloned().collect();
            events.sort_by_key(|e| e.invoked);
            return Err(Violation {
                key: key.to_vec(),
                events,
            });
        }
    }
    Ok(())
}

/// The register model: applies `op` to `state`; None when the outcome is impossible there.
fn step(state: &Option<Vec<u8>>, op: &Op, outcome: &Outcome) -> Option<Option<Vec<u8>>> {
    let unknown = *outcome == Outcome::Unknown;
    match op {
        Op::Put(value) => (unknown || *outcome == Outcome::Done).then(|| Some(value.clone())),
        Op::Get => match outcome {
            Outcome::Unknown => Some(state.clone()),
            Outcome::Value(seen) if seen == state => Some(state.clone()),
            _ => None,
        },
        Op::Delete => match outcome {
            Outcome::Unknown => Some(None),
            Outcome::Flag(existed) if *existed == state.is_some() => Some(None),
            _ => None,
        },
        Op::Cas { expected, new } => {
            let matches = state == expected;
            match outcome {
                Outcome::Unknown => Some(if matches { new.clone() } else { state.clone() }),
                Outcome::Flag(wrote) if *wrote == matches => {
                    Some(if matches { new.clone() } else { state.clone() })
                }
                _ => None,
            }
        }
    }
}

/// A call or a response, in the time-ordered list the search walks.
#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    call: bool,
    /// Links of the doubly-linked list (usize::MAX: none).
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

/// Wing & Gong's search with Lowe's memoization over one key's operations.
fn check_key(events: &[&Event]) -> bool {
    let n = events.len();
    // Entries: a call per operation, and a response per known outcome, in time order. At
    // equal times calls come first: two operations that touch the same instant overlap.
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in events.iter().enumerate() {
        order.push((e.invoked, true, i));
        if e.outcome != Outcome::Unknown {
            order.push((e.returned, false, i));
        }
    }
    order.sort_by_key(|&(time, call, op)| (time, !call, op));
    // Index 0 is a sentinel head; entries follow.
    let mut entries = vec![Entry {
        op: NONE,
        call: false,
        prev: NONE,
        next: NONE,
    }];
    let mut call_at = vec![NONE; n];
    let mut return_at = vec![NONE; n];
    for &(_, call, op) in &order {
        let at = entries.len();
        entries[at - 1].next = at;
        entries.push(Entry {
            op,
            call,
            prev: at - 1,
            next: NONE,
        });
        if call {
            call_at[op] = at;
        } else {
            return_at[op] = at;
        }
    }
    let unlink = |entries: &mut Vec<Entry>, at: usize| {
        let (prev, next) = (entries[at].prev, entries[at].next);
        entries[prev].next = next;
        if next != NONE {
            entries[next].prev = prev;
        }
    };

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut state: Option<Vec<u8>> = None;
    let mut seen: HashSet<(Vec<u64>, Option<Vec<u8>>)> = HashSet::new();
    // (operation, state before it) for each operation linearized, in order.
    let mut stack: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
    let mut at = entries[0].next;
    loop {
        if entries[0].next == NONE {
            return true; // every operation placed
        }
        // Whether the operations placed so far cannot be followed from here: a response
        // whose operation is not placed, or the end of the list with something left that
        // must be placed before it.
        let stuck = if at == NONE {
            // Calls of unknown operations may be placed at the end, where they change
            // nothing anyone saw.
            let mut rest = entries[0].next;
            while rest != NONE
                && entries[rest].call
                && events[entries[rest].op].outcome == Outcome::Unknown
            {
                rest = entries[rest].next;
            }
            if rest == NONE {
                return true;
            }
            true
        } else if entries[at].call {
            let entry = entries[at];
            let event = events[entry.op];
            if let Some(next_state) = step(&state, &event.op, &event.outcome) {
                let mut marked = linearized.clone();
                marked[entry.op / 64] |= 1 << (entry.op % 64);
                if seen.insert((marked.clone(), next_state.clone())) {
                    stack.push((entry.op, std::mem::replace(&mut state, next_state)));
                    linearized = marked;
                    unlink(&mut entries, at);
                    if return_at[entry.op] != NONE {
                        unlink(&mut entries, return_at[entry.op]);
                    }
                    at = entries[0].next;
                    continue;
                }
            }
            at = entry.next;
            false
        } else {
            true
        };
        if stuck {
            match backtrack(
                &mut entries,
                &mut stack,
                &mut state,
                &mut linearized,
                &call_at,
                &return_at,
            ) {
                Some(next) => at = next,
                None => return false,
            }
        }
    }
}

/// Puts an unlinked entry back (in the reverse order of unlinking).
fn relink(entries: &mut [Entry], at: usize) {
    let (prev, next) = (entries[at].prev, entries[at].next);
    entries[prev].next = at;
    if next != NONE {
        entries[next].prev = at;
    }
}

/// Takes back the operation linearized last: its entries return to the list, the state and
/// the set go back to before it. Returns where the search goes on (after its call), or None
/// when nothing is left to take back (no order works).
fn backtrack(
    entries: &mut [Entry],
    stack: &mut Vec<(usize, Option<Vec<u8>>)>,
    state: &mut Option<Vec<u8>>,
    linearized: &mut [u64],
    call_at: &[usize],
    return_at: &[usize],
) -> Option<usize> {
    let (op, before) = stack.pop()?;
    if return_at[op] != NONE {
        relink(entries, return_at[op]);
    }
    relink(entries, call_at[op]);
    *state = before;
    linearized[op / 64] &= !(1 << (op % 64));
    Some(entries[call_at[op]].next)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;
