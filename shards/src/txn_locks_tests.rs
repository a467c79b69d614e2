//! The transaction lock table on its own: grants, waits in order, upgrades, ranges, writes
//! outside transactions, timeouts and deadlocks.

use std::time::Duration;

use kvs_wire::ErrorCode;

use super::*;

const FAR: u64 = u64::MAX;

fn ask(txn: u64, keys: &[(&str, Mode)]) -> LockAsk {
    holding(txn, keys, 0)
}

/// A request of a transaction that holds `held` locks on the shard already.
fn holding(txn: u64, keys: &[(&str, Mode)], held: u32) -> LockAsk {
    LockAsk {
        txn,
        held,
        deadline_ms: FAR,
        keys: keys
            .iter()
            .map(|(k, m)| (k.as_bytes().to_vec(), *m))
            .collect(),
        range: None,
    }
}

fn range_ask(txn: u64, start: &str, end: &str) -> LockAsk {
    LockAsk {
        txn,
        held: 0,
        deadline_ms: FAR,
        keys: Vec::new(),
        range: Some((start.into(), Some(end.into()))),
    }
}

use Mode::{Exclusive as X, Shared as S};

fn granted(answer: Option<(u32, Answer)>) -> bool {
    matches!(answer, Some((_, Ok(()))))
}

fn codes(answers: &[(u32, Answer)]) -> Vec<(u32, Option<ErrorCode>)> {
    answers
        .iter()
        .map(|(w, a)| (*w, a.as_ref().err().map(|(c, _)| *c)))
        .collect()
}

#[test]
fn shared_locks_share_and_exclusive_ones_wait_in_order() {
    let graph = WaitGraph::new();
    let mut table = TxnLockTable::new(0);
    let now = Duration::ZERO;
    assert!(granted(table.acquire(ask(1, &[("a", S)]), 1, now, &graph)));
    assert!(granted(table.acquire(ask(2, &[("a", S)]), 2, now, &graph)));
    assert!(table.acquire(ask(3, &[("a", X)]), 3, now, &graph).is_none());
    // A later shared request does not pass the exclusive waiter.
    assert!(table.acquire(ask(4, &[("a", S)]), 4, now, &graph).is_none());
    assert!(table.release(1, &graph).is_empty());
    assert_eq!(codes(&table.release(2, &graph)), vec![(3, None)]);
    assert_eq!(codes(&table.release(3, &graph)), vec![(4, None)]);
    assert_eq!(graph.waiters(), 0);
}

#[test]
fn an_upgrade_does_not_queue_behind_the_waiter_it_blocks() {
    let graph = WaitGraph::new();
    let mut table = TxnLockTable::new(0);
    let now = Duration::ZERO;
    assert!(granted(table.acquire(ask(1, &[("a", S)]), 1, now, &graph)));
    assert!(table.acquire(ask(2, &[("a", X)]), 2, now, &graph).is_none());
    assert!(granted(table.acquire(
        holding(1, &[("a", X)], 1),
        11,
        now,
        &graph
    )));
    assert_eq!(codes(&table.release(1, &graph)), vec![(2, None)]);
}

#[test]
fn a_shared_range_blocks_exclusive_keys_inside_it_only() {
    let graph = WaitGraph::new();
    let mut table = TxnLockTable::new(0);
    let now = Duration::ZERO;
    assert!(granted(table.acquire(
        range_ask(1, "b", "d"),
        1,
        now,
        &graph
    )));
    assert!(granted(table.acquire(ask(2, &[("d", X)]), 2, now, &graph)));
    assert!(granted(table.acquire(
        holding(2, &[("a", X)], 1),
        2,
        now,
        &graph
    )));
    assert!(table
        .acquire(holding(2, &[("c", X)], 2), 22, now, &graph)
        .is_none());
    // And a range waits for an exclusive key inside it.
    assert!(table
        .acquire(range_ask(3, "a", "b"), 3, now, &graph)
        .is_none());
    assert_eq!(codes(&table.release(1, &graph)), vec![(22, None)]);
    assert_eq!(codes(&table.release(2, &graph)), vec![(3, None)]);
}

#[test]
fn opposite_orders_deadlock_and_the_younger_is_refused() {
    let graph = WaitGraph::new();
    // Two shards of one node, sharing the graph.
    let mut a = TxnLockTable::new(0);
    let mut b = TxnLockTable::new(1);
    let now = Duration::ZERO;
    assert!(granted(a.acquire(ask(1, &[("x", X)]), 1, now, &graph)));
    assert!(granted(b.acquire(ask(2, &[("y", X)]), 2, now, &graph)));
    assert!(b.acquire(ask(1, &[("y", X)]), 1, now, &graph).is_none());
    let (_, answer) = a.acquire(ask(2, &[("x", X)]), 2, now, &graph).unwrap();
    assert_eq!(answer.unwrap_err().0, ErrorCode::Deadlock);
    // The victim rolls back: the older transaction gets its lock.
    assert_eq!(codes(&b.release(2, &graph)), vec![(1, None)]);
}

#[test]
fn an_older_closer_marks_the_younger_victim_on_its_shard() {
    let graph = WaitGraph::new();
    let mut a = TxnLockTable::new(0);
    let mut b = TxnLockTable::new(1);
    let now = Duration::ZERO;
    assert!(granted(a.acquire(ask(1, &[("x", X)]), 1, now, &graph)));
    assert!(granted(b.acquire(ask(2, &[("y", X)]), 2, now, &graph)));
    // The younger waits first, then the older closes the cycle.
    assert!(a.acquire(ask(2, &[("x", X)]), 2, now, &graph).is_none());
    assert!(b.acquire(ask(1, &[("y", X)]), 1, now, &graph).is_none());
    let answers = a.tick(now, 0, Duration::from_secs(5), &graph);
    assert_eq!(codes(&answers), vec![(2, Some(ErrorCode::Deadlock))]);
    assert!(b.tick(now, 0, Duration::from_secs(5), &graph).is_empty());
    assert_eq!(codes(&b.release(2, &graph)), vec![(1, None)]);
}

#[test]
fn a_long_wait_times_out_and_an_expired_holder_loses_its_locks() {
    let graph = WaitGraph::new();
    let mut table = TxnLockTable::new(0);
    let timeout = Duration::from_secs(5);
    let mut holder = ask(1, &[("a", X)]);
    holder.deadline_ms = 10_000;
    assert!(granted(table.acquire(holder, 1, Duration::ZERO, &graph)));
    assert!(table
        .acquire(ask(2, &[("a", X)]), 2, Duration::ZERO, &graph)
        .is_none());
    assert!(table
        .tick(Duration::from_secs(4), 0, timeout, &graph)
        .is_empty());
    let answers = table.tick(Duration::from_secs(5), 0, timeout, &graph);
    assert_eq!(codes(&answers), vec![(2, Some(ErrorCode::TxnTimeout))]);
    // Past its deadline the holder's locks go, and it may not commit.
    assert!(table
        .acquire(ask(3, &[("a", X)]), 3, Duration::from_secs(6), &graph)
        .is_none());
    let answers = table.tick(Duration::from_secs(6), 10_000, timeout, &graph);
    assert_eq!(codes(&answers), vec![(3, None)]);
    let refused = table.begin_commit(1, &[b"a"], &[], false, 1);
    assert_eq!(refused.unwrap_err().0, ErrorCode::TxnConflict);
}

#[test]
fn writes_outside_break_running_transactions_pass_committing_ones_and_stop_at_prepared() {
    let graph = WaitGraph::new();
    let mut table = TxnLockTable::new(0);
    let now = Duration::ZERO;
    assert!(granted(table.acquire(ask(1, &[("a", S)]), 1, now, &graph)));
    assert!(granted(table.acquire(
        range_ask(2, "m", "p"),
        2,
        now,
        &graph
    )));
    assert!(granted(table.acquire(ask(3, &[("c", X)]), 3, now, &graph)));
    assert!(granted(table.acquire(ask(4, &[("d", X)]), 4, now, &graph)));
    assert!(table.acquire(ask(5, &[("a", X)]), 5, now, &graph).is_none());
    // Breaking 1 lets 5 have "a".
    let answers = table.outside_write(b"a", &graph).unwrap();
    assert_eq!(codes(&answers), vec![(5, None)]);
    assert_eq!(
        table.begin_commit(1, &[], &[b"a"], false, 1).unwrap_err().0,
        ErrorCode::TxnConflict
    );
    // Inside a locked range.
    assert!(table.outside_write(b"n", &graph).unwrap().is_empty());
    assert_eq!(
        table.check(2, 1, &graph).0.unwrap_err().0,
        ErrorCode::TxnConflict
    );
    // Committing: the write is ordered after the commit entry.
    table.begin_commit(3, &[b"c"], &[], false, 1).unwrap();
    assert!(table.outside_write(b"c", &graph).unwrap().is_empty());
    assert!(
        table.begin_commit(3, &[b"c"], &[], false, 1).is_ok(),
        "looked at again"
    );
    assert!(
        table.begin_commit(3, &[b"c"], &[], true, 1).is_err(),
        "not prepared too"
    );
    // Prepared: refused.
    table.begin_commit(4, &[b"d"], &[], true, 1).unwrap();
    let refused = table.outside_write(b"d", &graph).unwrap_err();
    assert_eq!(refused.0, ErrorCode::TxnConflict);
    // A commit needs its write keys held exclusively.
    assert!(granted(table.acquire(ask(6, &[("e", S)]), 6, now, &graph)));
    assert!(table.begin_commit(6, &[b"e"], &[], false, 1).is_err());
    table.release(6, &graph);
    table.release(5, &graph);
    table.release(4, &graph);
    table.release(3, &graph);
    table.release(2, &graph);
    table.release(1, &graph);
    assert!(table.is_empty(), "{table:?}");
    // A released transaction's late lock request is refused, until its deadline passes.
    let late = table.acquire(ask(1, &[("z", X)]), 1, now, &graph).unwrap();
    assert_eq!(late.1.unwrap_err().0, ErrorCode::TxnNotFound);
    assert!(table.needs_ticks());
    table.tick(now, u64::MAX, Duration::from_secs(5), &graph);
    assert!(!table.needs_ticks());
}

/// A leader that took over knows none of a transaction's locks: a check or a commit that
/// expects locks there must fail, not pass because nothing is recorded (an audit read a
/// transfer half-applied in the cluster bank until this held).
#[test]
fn locks_lost_with_a_leader_are_noticed_by_their_count() {
    let graph = WaitGraph::new();
    let mut new_leader: TxnLockTable<u32> = TxnLockTable::new(0);
    let (answer, _) = new_leader.check(7, 2, &graph);
    assert_eq!(answer.unwrap_err().0, ErrorCode::TxnConflict);
    assert!(
        new_leader.check(8, 0, &graph).0.is_ok(),
        "it locked nothing here"
    );
    // Locks taken again after the change, but fewer than the coordinator holds.
    let now = Duration::ZERO;
    assert!(granted(new_leader.acquire(
        ask(9, &[("b", X)]),
        9,
        now,
        &graph
    )));
    let refused = new_leader.begin_commit(9, &[b"b"], &[], false, 2);
    assert_eq!(refused.unwrap_err().0, ErrorCode::TxnConflict);
    assert!(granted(new_leader.acquire(
        ask(10, &[("c", X)]),
        10,
        now,
        &graph
    )));
    assert!(new_leader.begin_commit(10, &[b"c"], &[], false, 1).is_ok());
}

/// A prepared transaction's keys taken over from a holder that has waiters: the waiters are
/// not granted the keys in between (the cluster bank hit the grant's assertion).
#[test]
fn a_prepared_transaction_takes_its_keys_before_any_waiter() {
    let graph = WaitGraph::new();
    let mut table = TxnLockTable::new(0);
    let now = Duration::ZERO;
    assert!(granted(table.acquire(ask(1, &[("k", X)]), 1, now, &graph)));
    assert!(table.acquire(ask(2, &[("k", X)]), 2, now, &graph).is_none());
    let answers = table.hold_prepared(3, vec![b"k".to_vec()], FAR, &graph);
    assert!(answers.is_empty(), "the waiter still waits: {answers:?}");
    assert_eq!(
        table.begin_commit(1, &[b"k"], &[], false, 1).unwrap_err().0,
        ErrorCode::TxnConflict
    );
    assert_eq!(codes(&table.release(3, &graph)), vec![(2, None)]);
}

/// A transaction's lock at a leader that took over, for a key it had locked (and read) under
/// the old leader: refused, since the new leader holds fewer of its locks than it took — a
/// fresh grant would let a stale read through (the cluster bank lost updates until this).
#[test]
fn a_lock_asked_again_at_a_new_leader_is_refused() {
    let graph = WaitGraph::new();
    let mut new_leader: TxnLockTable<u32> = TxnLockTable::new(0);
    let now = Duration::ZERO;
    let (_, answer) = new_leader
        .acquire(holding(5, &[("a", X)], 1), 5, now, &graph)
        .unwrap();
    assert_eq!(answer.unwrap_err().0, ErrorCode::TxnConflict);
    assert!(granted(new_leader.acquire(
        holding(6, &[("b", X)], 0),
        6,
        now,
        &graph
    )));
}
