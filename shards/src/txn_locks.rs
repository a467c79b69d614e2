//! Transactions' locks on one shard (ADR 0022): shared and exclusive locks on keys, shared
//! locks on key ranges, held by transactions until they commit or abort. The table lives in
//! the shard loop of the shard's leader, in memory; it is asked by message (a transaction's
//! coordinator on any core sends a lock request and is answered once it is granted), so
//! nobody polls.
//!
//! - A request names keys (each shared or exclusive) and at most one range (shared). It is
//!   granted whole or waits whole. Waiters are served in arrival order: a request waits
//!   behind an earlier waiter that wants one of its keys in a conflicting mode, unless it
//!   already holds a lock on that key (an upgrade never queues behind a waiter it blocks).
//! - When a request must wait, its edges go into the node's wait-for graph and a cycle
//!   through it is looked for at once (see `deadlock`); the youngest transaction of a cycle
//!   is refused with DEADLOCK.
//! - A wait longer than the lock timeout is refused with TXN_TIMEOUT, and a transaction
//!   past its deadline loses its locks (unless prepared: its fate is then the decision's).
//! - A write outside any transaction never waits: it breaks the locks of transactions that
//!   are still running on its key (they fail at commit with TXN_CONFLICT), passes those
//!   whose commit entry is already proposed, and is refused when a prepared transaction
//!   holds the key exclusively (two-phase commit in flight).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use kvs_wire::ErrorCode;

use crate::deadlock::WaitGraph;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// A lock request of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockAsk {
    pub txn: u64,
    /// Wall-clock ms after which the transaction is abandoned.
    pub deadline_ms: u64,
    /// How many locks the coordinator holds on this shard already: a leader that holds
    /// fewer lost some (a leader change), and a read under them may be stale, so the
    /// request is refused rather than granted afresh.
    pub held: u32,
    pub keys: Vec<(Vec<u8>, Mode)>,
    /// A shared range `[start, end)`; `None` end: to the end of the key space.
    pub range: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

/// What a transaction's coordinator asks of the lock table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnLockOp {
    Lock(LockAsk),
    /// A participant that only read: answered OK (and its locks released) if none was
    /// broken and it still holds the `locks` its coordinator took here, else TXN_CONFLICT.
    /// After it, writes outside transactions pass its keys.
    Check {
        txn: u64,
        locks: u32,
    },
    /// Releases every lock of the transaction (rollback, or after its commit).
    Release {
        txn: u64,
    },
}

/// How far a transaction got on this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Running,
    /// Its commit entry is proposed: writes outside transactions are ordered after it.
    Committing,
    /// Prepared (two-phase commit): its exclusive keys refuse writes outside transactions.
    Prepared,
}

#[derive(Debug)]
struct Held {
    stage: Stage,
    deadline_ms: u64,
    keys: HashMap<Vec<u8>, Mode>,
    ranges: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

#[derive(Debug, Default)]
struct KeyLock {
    shared: Vec<u64>,
    exclusive: Option<u64>,
}

#[derive(Debug)]
struct Waiter<W> {
    ask: LockAsk,
    reply: W,
    since: Duration,
}

/// How long, at most, a released transaction is remembered: longer than a forwarded
/// request may wait for its answer (`FORWARD_TIMEOUT`, 10 s).
const RELEASED_FOR_MS: u64 = 15_000;

/// An answer for a waiter or a requester: granted (`Ok`), or refused.
pub type Answer = Result<(), (ErrorCode, String)>;

/// One shard's transaction locks; `W` is how a waiter is answered.
#[derive(Debug)]
pub struct TxnLockTable<W> {
    shard: u32,
    keys: BTreeMap<Vec<u8>, KeyLock>,
    txns: HashMap<u64, Held>,
    /// Transactions whose locks a write outside transactions (or their deadline) broke:
    /// their commit is refused. Forgotten when they release.
    broken: HashSet<u64>,
    /// Transactions released here (finished or rolled back), with when to forget them: a
    /// lock request of one that arrives late (forwarded, its coordinator gave up on it) is
    /// refused instead of granted to nobody. Forgotten at its deadline, or [`RELEASED_FOR_MS`]
    /// after the release if sooner, which bounds the memory at high transaction rates.
    released: HashMap<u64, u64>,
    waiting: VecDeque<Waiter<W>>,
}

fn in_range(key: &[u8], (start, end): &(Vec<u8>, Option<Vec<u8>>)) -> bool {
    key >= start.as_slice() && end.as_ref().is_none_or(|end| key < end.as_slice())
}

impl<W> TxnLockTable<W> {
    pub fn new(shard: u32) -> TxnLockTable<W> {
        TxnLockTable {
            shard,
            keys: BTreeMap::new(),
            txns: HashMap::new(),
            broken: HashSet::new(),
            released: HashMap::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Whether no transaction holds or waits for anything (the common case: writes outside
    /// transactions then skip the table entirely).
    pub fn is_empty(&self) -> bool {
        self.txns.is_empty() && self.waiting.is_empty() && self.broken.is_empty()
    }

    /// Whether a tick has anything to do: locks, waits, or released transactions to forget.
    pub fn needs_ticks(&self) -> bool {
        !self.is_empty() || !self.released.is_empty()
    }

    /// The transactions `ask` would wait for now (empty: it can be granted).
    fn blockers(&self, ask: &LockAsk, earlier: &[&LockAsk]) -> Vec<u64> {
        let mut blockers = Vec::new();
        let own = self.txns.get(&ask.txn);
        for (key, mode) in &ask.keys {
            let held_already = own.is_some_and(|held| held.keys.contains_key(key));
            if let Some(lock) = self.keys.get(key) {
                if let Some(holder) = lock.exclusive.filter(|&h| h != ask.txn) {
                    blockers.push(holder);
                }
                if *mode == Mode::Exclusive {
                    blockers.extend(lock.shared.iter().copied().filter(|&h| h != ask.txn));
                }
            }
            if *mode == Mode::Exclusive {
                for (txn, held) in &self.txns {
                    if *txn != ask.txn && held.ranges.iter().any(|r| in_range(key, r)) {
                        blockers.push(*txn);
                    }
                }
            }
            if !held_already {
                for other in earlier.iter().filter(|other| other.txn != ask.txn) {
                    let conflicts = other.keys.iter().any(|(k, m)| {
                        k == key && (*m == Mode::Exclusive || *mode == Mode::Exclusive)
                    });
                    if conflicts {
                        blockers.push(other.txn);
                    }
                }
            }
        }
        if let Some(range) = &ask.range {
            for (key, lock) in self.keys.range(range.0.clone()..) {
                if !in_range(key, range) {
                    break;
                }
                if let Some(holder) = lock.exclusive.filter(|&h| h != ask.txn) {
                    blockers.push(holder);
                }
            }
        }
        blockers.sort_unstable();
        blockers.dedup();
        blockers
    }

    fn grant(&mut self, ask: &LockAsk) {
        let held = self.txns.entry(ask.txn).or_insert_with(|| Held {
            stage: Stage::Running,
            deadline_ms: ask.deadline_ms,
            keys: HashMap::new(),
            ranges: Vec::new(),
        });
        for (key, mode) in &ask.keys {
            let lock = self.keys.entry(key.clone()).or_default();
            let mode = match (held.keys.get(key), mode) {
                (Some(Mode::Exclusive), _) | (_, Mode::Exclusive) => Mode::Exclusive,
                _ => Mode::Shared,
            };
            match mode {
                Mode::Exclusive => {
                    lock.shared.retain(|&t| t != ask.txn);
                    assert!(
                        lock.exclusive.is_none_or(|t| t == ask.txn) && lock.shared.is_empty(),
                        "an exclusive lock is granted only when nobody else holds the key"
                    );
                    lock.exclusive = Some(ask.txn);
                }
                Mode::Shared => {
                    if !lock.shared.contains(&ask.txn) {
                        lock.shared.push(ask.txn);
                    }
                }
            }
            held.keys.insert(key.clone(), mode);
        }
        if let Some(range) = &ask.range {
            held.ranges.push(range.clone());
        }
    }

    /// A lock request: answered now (granted or refused), or `None` when it waits (it is
    /// answered later by a release or a tick).
    pub fn acquire(
        &mut self,
        ask: LockAsk,
        reply: W,
        now: Duration,
        graph: &WaitGraph,
    ) -> Option<(W, Answer)> {
        if self.broken.contains(&ask.txn) {
            return Some((reply, Err(self.conflict(ask.txn))));
        }
        if self.held_count(ask.txn) != ask.held {
            return Some((reply, Err(self.conflict(ask.txn))));
        }
        if self.released.contains_key(&ask.txn) {
            let message = format!("transaction {:#x} already ended", ask.txn);
            return Some((reply, Err((ErrorCode::TxnNotFound, message))));
        }
        if self
            .txns
            .get(&ask.txn)
            .is_some_and(|held| held.stage != Stage::Running)
        {
            let message = format!("transaction {:#x} is committing", ask.txn);
            return Some((reply, Err((ErrorCode::BadRequest, message))));
        }
        let earlier: Vec<&LockAsk> = self.waiting.iter().map(|w| &w.ask).collect();
        let blockers = self.blockers(&ask, &earlier);
        if blockers.is_empty() {
            self.grant(&ask);
            return Some((reply, Ok(())));
        }
        if graph.wait(ask.txn, &blockers) {
            graph.done_waiting(ask.txn);
            let message = format!(
                "transaction {:#x} was chosen as a deadlock's victim on shard {}",
                ask.txn, self.shard
            );
            return Some((reply, Err((ErrorCode::Deadlock, message))));
        }
        self.waiting.push_back(Waiter {
            ask,
            reply,
            since: now,
        });
        None
    }

    fn conflict(&self, txn: u64) -> (ErrorCode, String) {
        (
            ErrorCode::TxnConflict,
            format!(
                "transaction {txn:#x} lost its locks on shard {}: a write outside the \
                 transaction, a change of leader or its deadline took its place",
                self.shard
            ),
        )
    }

    fn drop_locks(&mut self, txn: u64) -> Option<Held> {
        let held = self.txns.remove(&txn)?;
        for key in held.keys.keys() {
            if let Some(lock) = self.keys.get_mut(key) {
                lock.shared.retain(|&t| t != txn);
                if lock.exclusive == Some(txn) {
                    lock.exclusive = None;
                }
                if lock.shared.is_empty() && lock.exclusive.is_none() {
                    self.keys.remove(key);
                }
            }
        }
        Some(held)
    }

    /// Grants the waiters that can go now, in arrival order; updates the wait-for edges of
    /// those that still wait.
    fn grant_waiters(&mut self, graph: &WaitGraph) -> Vec<(W, Answer)> {
        let mut answers = Vec::new();
        let mut still = VecDeque::with_capacity(self.waiting.len());
        while let Some(waiter) = self.waiting.pop_front() {
            let earlier: Vec<&LockAsk> = still.iter().map(|w: &Waiter<W>| &w.ask).collect();
            let blockers = self.blockers(&waiter.ask, &earlier);
            if blockers.is_empty() {
                self.grant(&waiter.ask);
                graph.done_waiting(waiter.ask.txn);
                answers.push((waiter.reply, Ok(())));
            } else {
                graph.still_waiting(waiter.ask.txn, &blockers);
                still.push_back(waiter);
            }
        }
        self.waiting = still;
        answers
    }

    /// Releases every lock of `txn` and refuses its waits; answers the waiters this lets go.
    pub fn release(&mut self, txn: u64, graph: &WaitGraph) -> Vec<(W, Answer)> {
        self.broken.remove(&txn);
        let deadline = self.txns.get(&txn).map_or(0, |held| held.deadline_ms);
        let soon = kvs_core::sessions::wall_clock_ms().saturating_add(RELEASED_FOR_MS);
        self.released.insert(txn, deadline.min(soon));
        let mut answers = self.refuse_waits(txn, graph, |_| {
            (
                ErrorCode::TxnNotFound,
                format!("transaction {txn:#x} was rolled back"),
            )
        });
        self.drop_locks(txn);
        answers.extend(self.grant_waiters(graph));
        answers
    }

    fn refuse_waits(
        &mut self,
        txn: u64,
        graph: &WaitGraph,
        why: impl Fn(&Self) -> (ErrorCode, String),
    ) -> Vec<(W, Answer)> {
        let mut answers = Vec::new();
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for waiter in std::mem::take(&mut self.waiting) {
            if waiter.ask.txn == txn {
                graph.done_waiting(txn);
                answers.push((waiter.reply, Err(why(self))));
            } else {
                kept.push_back(waiter);
            }
        }
        self.waiting = kept;
        answers
    }

    /// How many locks (keys and ranges) `txn` holds here.
    fn held_count(&self, txn: u64) -> u32 {
        self.txns
            .get(&txn)
            .map_or(0, |held| (held.keys.len() + held.ranges.len()) as u32)
    }

    /// A participant that only read: its locks go, and whether they were intact — none
    /// broken, and as many as its coordinator took here (`locks`: fewer means a leader change
    /// lost some).
    pub fn check(&mut self, txn: u64, locks: u32, graph: &WaitGraph) -> (Answer, Vec<(W, Answer)>) {
        let answer = if self.broken.contains(&txn) || self.held_count(txn) != locks {
            Err(self.conflict(txn))
        } else {
            Ok(())
        };
        (answer, self.release(txn, graph))
    }

    /// Before a commit (`prepared` false) or prepare entry is proposed: the transaction must
    /// hold `writes` exclusively and `reads` at all, with none of its locks broken, and hold
    /// `locks` locks in all (what its coordinator took here: fewer means a leader change lost
    /// some, and a read under one of them may be stale). Moves it to `Committing` or
    /// `Prepared`.
    pub fn begin_commit(
        &mut self,
        txn: u64,
        writes: &[&[u8]],
        reads: &[&[u8]],
        prepared: bool,
        locks: u32,
    ) -> Answer {
        if self.broken.contains(&txn) || self.held_count(txn) != locks {
            return Err(self.conflict(txn));
        }
        let conflict = self.conflict(txn);
        let Some(held) = self.txns.get_mut(&txn) else {
            return if writes.is_empty() && reads.is_empty() {
                Ok(())
            } else {
                Err(conflict)
            };
        };
        let intact = writes
            .iter()
            .all(|k| held.keys.get(*k) == Some(&Mode::Exclusive))
            && reads.iter().all(|k| held.keys.contains_key(*k));
        let stage = if prepared {
            Stage::Prepared
        } else {
            Stage::Committing
        };
        // The same entry may be looked at again (a round that could not take it puts it
        // back in the queue).
        if !intact || held.stage != Stage::Running && held.stage != stage {
            return Err(conflict);
        }
        held.stage = stage;
        Ok(())
    }

    /// A write outside transactions to `key`: refused when a prepared transaction holds it
    /// exclusively; otherwise it breaks the running transactions that locked it (their
    /// waits are refused too) and returns the answers that lets go.
    pub fn outside_write(
        &mut self,
        key: &[u8],
        graph: &WaitGraph,
    ) -> Result<Vec<(W, Answer)>, (ErrorCode, String)> {
        let mut victims = Vec::new();
        if let Some(lock) = self.keys.get(key) {
            for txn in lock.exclusive.iter().chain(&lock.shared) {
                match self.txns.get(txn).map(|held| held.stage) {
                    Some(Stage::Prepared) if lock.exclusive == Some(*txn) => {
                        return Err((
                            ErrorCode::TxnConflict,
                            format!(
                                "a transaction is committing this key on shard {}; nothing \
                                 was written, try again",
                                self.shard
                            ),
                        ))
                    }
                    Some(Stage::Running) => victims.push(*txn),
                    _ => {}
                }
            }
        }
        for (txn, held) in &self.txns {
            if held.stage == Stage::Running && held.ranges.iter().any(|r| in_range(key, r)) {
                victims.push(*txn);
            }
        }
        victims.sort_unstable();
        victims.dedup();
        let mut answers = Vec::new();
        for txn in victims {
            answers.extend(self.break_txn(txn, graph));
        }
        Ok(answers)
    }

    fn break_txn(&mut self, txn: u64, graph: &WaitGraph) -> Vec<(W, Answer)> {
        self.broken.insert(txn);
        let mut answers = self.refuse_waits(txn, graph, |table| table.conflict(txn));
        self.drop_locks(txn);
        answers.extend(self.grant_waiters(graph));
        answers
    }

    /// Takes a prepared transaction's exclusive locks again (a shard that opens with it
    /// recorded, or a new leader): nothing may write its keys before the decision.
    pub fn hold_prepared(
        &mut self,
        txn: u64,
        keys: Vec<Vec<u8>>,
        deadline_ms: u64,
        graph: &WaitGraph,
    ) -> Vec<(W, Answer)> {
        if self
            .txns
            .get(&txn)
            .is_some_and(|held| held.stage == Stage::Prepared)
        {
            return Vec::new();
        }
        let ask = LockAsk {
            txn,
            deadline_ms,
            held: 0,
            keys: keys.into_iter().map(|k| (k, Mode::Exclusive)).collect(),
            range: None,
        };
        // Whoever else holds these keys (a transaction of an earlier leadership, say) lost
        // them: the prepared transaction held them exclusively when it prepared.
        let mut others: Vec<u64> = Vec::new();
        for (key, _) in &ask.keys {
            if let Some(lock) = self.keys.get(key) {
                others.extend(lock.exclusive.iter().chain(&lock.shared));
            }
        }
        others.retain(|&t| t != txn);
        others.sort_unstable();
        others.dedup();
        let mut answers = Vec::new();
        for other in others {
            // Waiters are looked at only once the prepared transaction holds its keys: one
            // granted in between would hold a key it must not.
            self.broken.insert(other);
            answers.extend(self.refuse_waits(other, graph, |table| table.conflict(other)));
            self.drop_locks(other);
        }
        self.grant(&ask);
        if let Some(held) = self.txns.get_mut(&txn) {
            held.stage = Stage::Prepared;
        }
        answers.extend(self.grant_waiters(graph));
        answers
    }

    /// Refuses waits that ran past `lock_timeout` or whose transaction the deadlock detector
    /// chose as a victim, and breaks running transactions past their deadline.
    pub fn tick(
        &mut self,
        now: Duration,
        wall_ms: u64,
        lock_timeout: Duration,
        graph: &WaitGraph,
    ) -> Vec<(W, Answer)> {
        let mut answers = Vec::new();
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for waiter in std::mem::take(&mut self.waiting) {
            let txn = waiter.ask.txn;
            let refusal = if graph.take_victim(txn) {
                Some((
                    ErrorCode::Deadlock,
                    format!(
                        "transaction {txn:#x} was chosen as a deadlock's victim on shard {}",
                        self.shard
                    ),
                ))
            } else if now.saturating_sub(waiter.since) >= lock_timeout {
                Some((
                    ErrorCode::TxnTimeout,
                    format!(
                        "transaction {txn:#x} waited longer than the lock timeout ({} ms) \
                         on shard {}",
                        lock_timeout.as_millis(),
                        self.shard
                    ),
                ))
            } else if waiter.ask.deadline_ms <= wall_ms {
                Some((
                    ErrorCode::TxnTimeout,
                    format!("transaction {txn:#x} ran past its deadline"),
                ))
            } else {
                None
            };
            match refusal {
                Some(refusal) => {
                    graph.done_waiting(txn);
                    answers.push((waiter.reply, Err(refusal)));
                }
                None => kept.push_back(waiter),
            }
        }
        self.waiting = kept;
        self.released.retain(|_, deadline| *deadline > wall_ms);
        let expired: Vec<u64> = self
            .txns
            .iter()
            .filter(|(_, held)| held.stage == Stage::Running && held.deadline_ms <= wall_ms)
            .map(|(txn, _)| *txn)
            .collect();
        for txn in expired {
            answers.extend(self.break_txn(txn, graph));
        }
        answers.extend(self.grant_waiters(graph));
        answers
    }

    /// Locks held (keys, ranges) and waits, for INFO and tests.
    pub fn counts(&self) -> (usize, usize) {
        (self.keys.len(), self.waiting.len())
    }
}

#[cfg(test)]
#[path = "txn_locks_tests.rs"]
mod tests;
