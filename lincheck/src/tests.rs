//! The checker against histories known to be linearizable and known not to be.

use super::*;
use proptest::prelude::*;

fn ev(op: Op, outcome: Outcome, invoked: u64, returned: u64) -> Event {
    Event {
        key: b"k".to_vec(),
        op,
        outcome,
        invoked,
        returned,
    }
}

fn put(v: &str, invoked: u64, returned: u64) -> Event {
    ev(Op::Put(v.into()), Outcome::Done, invoked, returned)
}

fn get(v: Option<&str>, invoked: u64, returned: u64) -> Event {
    ev(
        Op::Get,
        Outcome::Value(v.map(|v| v.as_bytes().to_vec())),
        invoked,
        returned,
    )
}

fn unknown_put(v: &str, invoked: u64) -> Event {
    ev(Op::Put(v.into()), Outcome::Unknown, invoked, 0)
}

#[test]
fn sequential_and_overlapping_histories_are_accepted() {
    assert!(check(&[]).is_ok());
    assert!(check(&[get(None, 0, 1), put("a", 2, 3), get(Some("a"), 4, 5)]).is_ok());
    // A read overlapping a write may see either value.
    assert!(check(&[put("a", 0, 1), put("b", 2, 6), get(Some("a"), 3, 4)]).is_ok());
    assert!(check(&[put("a", 0, 1), put("b", 2, 6), get(Some("b"), 3, 4)]).is_ok());
    // Two concurrent writes, then reads that agree on which came last.
    assert!(check(&[
        put("a", 0, 10),
        put("b", 1, 9),
        get(Some("a"), 11, 12),
        get(Some("a"), 13, 14),
    ])
    .is_ok());
    // Delete and compare-and-set.
    assert!(check(&[
        put("a", 0, 1),
        ev(Op::Delete, Outcome::Flag(true), 2, 3),
        ev(Op::Delete, Outcome::Flag(false), 4, 5),
        ev(
            Op::Cas {
                expected: None,
                new: Some(b"c".to_vec())
            },
            Outcome::Flag(true),
            6,
            7
        ),
        get(Some("c"), 8, 9),
    ])
    .is_ok());
}

#[test]
fn a_stale_read_is_caught() {
    let v = check(&[put("a", 0, 1), put("b", 2, 3), get(Some("a"), 4, 5)]).unwrap_err();
    assert_eq!(v.key, b"k");
    assert!(v.to_string().contains("not linearizable"));
}

#[test]
fn a_lost_acknowledged_write_is_caught() {
    assert!(check(&[put("a", 0, 1), get(None, 2, 3)]).is_err());
}

#[test]
fn a_value_never_written_is_caught() {
    assert!(check(&[put("a", 0, 1), get(Some("z"), 2, 3)]).is_err());
}

#[test]
fn reads_that_disagree_on_the_order_of_writes_are_caught() {
    // Two concurrent writes; one reader sees b then a, another, later, sees a then b.
    assert!(check(&[
        put("a", 0, 100),
        put("b", 0, 100),
        get(Some("b"), 10, 11),
        get(Some("a"), 12, 13),
        get(Some("b"), 14, 15),
    ])
    .is_err());
}

#[test]
fn a_failed_cas_that_should_have_succeeded_is_caught() {
    let cas = ev(
        Op::Cas {
            expected: Some(b"a".to_vec()),
            new: Some(b"b".to_vec()),
        },
        Outcome::Flag(false),
        2,
        3,
    );
    assert!(check(&[put("a", 0, 1), cas]).is_err());
}

#[test]
fn unknown_outcomes_may_apply_late_or_never() {
    // Never observed: fine.
    assert!(check(&[unknown_put("x", 0), get(None, 5, 6)]).is_ok());
    // Observed long after the client gave up: fine (it may take effect any time).
    assert!(check(&[
        unknown_put("x", 0),
        get(None, 5, 6),
        get(Some("x"), 100, 101)
    ])
    .is_ok());
    // But once seen, it cannot be unseen without a later write.
    assert!(check(&[unknown_put("x", 0), get(Some("x"), 5, 6), get(None, 7, 8)]).is_err());
    // And it cannot take effect before it was invoked.
    assert!(check(&[get(Some("x"), 0, 1), unknown_put("x", 5)]).is_err());
}

#[test]
fn keys_are_checked_apart() {
    let mut other = put("a", 0, 1);
    other.key = b"other".to_vec();
    let mut stale = get(None, 2, 3);
    stale.key = b"other".to_vec();
    let v = check(&[put("b", 0, 1), get(Some("b"), 2, 3), other, stale]).unwrap_err();
    assert_eq!(v.key, b"other");
}

proptest! {
    /// Any history produced by running operations one at a time against a register, with
    /// each operation's interval covering its instant, is accepted; shifting one read's
    /// result to a value not current there is refused.
    #[test]
    fn histories_from_a_real_register_are_accepted(
        ops in proptest::collection::vec((0u8..4, 0u8..3, 0u64..5, 0u64..5), 1..40),
    ) {
        let mut state: Option<Vec<u8>> = None;
        let mut history = Vec::new();
        for (i, (kind, value, before, after)) in ops.into_iter().enumerate() {
            let instant = 10 * i as u64 + 5;
            let value = vec![b'a' + value];
            let (op, outcome) = match kind {
                0 => {
                    state = Some(value.clone());
                    (Op::Put(value), Outcome::Done)
                }
                1 => (Op::Get, Outcome::Value(state.clone())),
                2 => {
                    let existed = state.take().is_some();
                    (Op::Delete, Outcome::Flag(existed))
                }
                _ => {
                    let wrote = state.is_none();
                    if wrote {
                        state = Some(value.clone());
                    }
                    (Op::Cas { expected: None, new: Some(value) }, Outcome::Flag(wrote))
                }
            };
            // Intervals may overlap their neighbours' (up to 5 either side of the instant).
            history.push(Event {
                key: b"k".to_vec(),
                op,
                outcome,
                invoked: instant - before,
                returned: instant + after,
            });
        }
        prop_assert!(check(&history).is_ok());
        // A read of a value nobody wrote is refused wherever it is.
        let mut bad = history.clone();
        bad.push(Event {
            key: b"k".to_vec(),
            op: Op::Get,
            outcome: Outcome::Value(Some(b"never".to_vec())),
            invoked: 0,
            returned: 1000,
        });
        prop_assert!(check(&bad).is_err());
    }
}

/// A long history with many overlapping operations: the memoized search stays quick
/// (this would time out the test run if it went exponential).
#[test]
fn long_concurrent_histories_are_checked() {
    let mut seed = 7u64;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut state: Option<Vec<u8>> = None;
    let mut history = Vec::new();
    for i in 0..3000u64 {
        let instant = 10 * i + 50;
        let (op, outcome) = if next(2) == 0 {
            let value = i.to_string().into_bytes(); // every write its own value
            state = Some(value.clone());
            (Op::Put(value), Outcome::Done)
        } else {
            (Op::Get, Outcome::Value(state.clone()))
        };
        // Each interval spans up to four neighbours either side.
        history.push(ev(op, outcome, instant - next(45), instant + next(45)));
    }
    assert!(check(&history).is_ok());
    // One read moved to see a value from far in the past is caught.
    let at = history
        .iter()
        .rposition(|e| matches!(e.outcome, Outcome::Value(Some(_))))
        .unwrap();
    let stale = history
        .iter()
        .find_map(|e| match &e.op {
            Op::Put(v) if history[at].outcome != Outcome::Value(Some(v.clone())) => Some(v.clone()),
            _ => None,
        })
        .unwrap();
    history[at].outcome = Outcome::Value(Some(stale));
    assert!(check(&history).is_err());
}
