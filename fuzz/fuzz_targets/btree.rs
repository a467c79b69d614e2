//! The B+tree (`core/src/store/tree.rs`) against a `BTreeMap` model: a sequence of puts
//! (values up to the inline limit, so leaves split), deletes (so they merge), lookups, scans
//! that walk leaf by leaf, and epoch seals with the pages they free made reusable (as a
//! checkpoint does, so copy-on-write and page reuse are exercised). After every operation
//! the tree answers as the model does; at the end its shape is checked: keys in order
//! within and across nodes, separators bounding their children, every leaf at the same
//! depth, every page within its size, and a full scan equal to the model.
#![no_main]

use std::collections::BTreeMap;

use kvs_core::store::key::Key;
use kvs_core::store::page::{node_size, Entry, Node, Value, PAGE_SIZE};
use kvs_core::store::tree::{needs_extent, State};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    /// A key from a small space (so operations meet), a value length and byte.
    Put { key: u16, long: bool, len: u16, byte: u8 },
    Delete { key: u16, long: bool },
    Get { key: u16, long: bool },
    Scan { start: u16, limit: u8 },
    /// Seal the epoch (its pages become copy-on-write); with `durable`, release the pages
    /// earlier epochs freed, as a durable checkpoint does.
    Seal { durable: bool },
}

/// Key `n`: short, or long enough to live on the heap and fill pages faster.
fn key(n: u16, long: bool) -> Vec<u8> {
    let n = n % 512;
    if long {
        format!("long-key-{n:05}-{}", "x".repeat(40)).into_bytes()
    } else {
        format!("k{n:04}").into_bytes()
    }
}

/// Every entry from `start` on, leaf by leaf, `limit` at a time.
fn scan(state: &mut State, start: &[u8], limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = start.to_vec();
    loop {
        let (entries, next) = state
            .scan_leaf(&from, None, limit)
            .expect("every page is resident");
        let full = entries.len() == limit;
        for entry in &entries {
            let Value::Inline(value) = &entry.value else {
                panic!("only inline values are put");
            };
            out.push((entry.key.as_slice().to_vec(), value.clone()));
        }
        match (full, entries.last(), next) {
            (true, Some(last), _) => {
                from = last.key.as_slice().to_vec();
                from.push(0);
            }
            (_, _, Some(next)) => from = next,
            _ => return out,
        }
    }
}

/// Checks the subtree at `id` holds keys in `[low, high)`, its leaves at depth `height`;
/// returns its leaves' entry count.
fn check(state: &mut State, id: u64, low: Option<&[u8]>, high: Option<&[u8]>, height: u32) -> usize {
    let node = state.node(id).expect("every page is resident").clone();
    assert!(node_size(&node) <= PAGE_SIZE, "page {id} over its size");
    let within = |key: &[u8]| low.is_none_or(|l| key >= l) && high.is_none_or(|h| key < h);
    match node {
        Node::Leaf(entries) => {
            assert_eq!(height, 1, "a leaf above the bottom level");
            for pair in entries.windows(2) {
                assert!(pair[0].key < pair[1].key, "leaf {id} out of order");
            }
            for entry in &entries {
                assert!(within(entry.key.as_slice()), "leaf {id} key outside its bounds");
            }
            entries.len()
        }
        Node::Inner { keys, children } => {
            assert!(height > 1, "an inner node at the bottom level");
            assert_eq!(children.len(), keys.len() + 1, "inner {id} shape");
            for pair in keys.windows(2) {
                assert!(pair[0] < pair[1], "inner {id} separators out of order");
            }
            let mut count = 0;
            for (i, &child) in children.iter().enumerate() {
                let lo = if i == 0 { low } else { Some(keys[i - 1].as_slice()) };
                let hi = if i == keys.len() { high } else { Some(keys[i].as_slice()) };
                count += check(state, child, lo, hi, height - 1);
            }
            count
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut state = State::new(1 << 20);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut lsn = 0;
    for op in ops.into_iter().take(4096) {
        lsn += 1;
        match op {
            Op::Put { key: k, long, len, byte } => {
                let key = key(k, long);
                let mut len = usize::from(len % 2048);
                while needs_extent(&key, &vec![byte; len]) {
                    len /= 2;
                }
                let value = vec![byte; len];
                let entry = Entry {
                    key: Key::new(&key),
                    version: lsn,
                    value: Value::Inline(value.clone()),
                };
                let old = state.insert(entry, lsn).expect("every page is resident");
                let expected = model.insert(key, value);
                assert_eq!(
                    old.map(|e| match e.value {
                        Value::Inline(v) => v,
                        Value::Extent { .. } => panic!("only inline values are put"),
                    }),
                    expected
                );
            }
            Op::Delete { key: k, long } => {
                let key = key(k, long);
                let old = state.remove(&key, lsn).expect("every page is resident");
                assert_eq!(old.is_some(), model.remove(&key).is_some());
            }
            Op::Get { key: k, long } => {
                let key = key(k, long);
                let got = state.lookup(&key).expect("every page is resident");
                match (got.map(|e| e.value), model.get(&key)) {
                    (None, None) => {}
                    (Some(Value::Inline(v)), Some(m)) => assert_eq!(&v, m),
                    (got, m) => panic!("lookup {key:?}: tree {got:?}, model {m:?}"),
                }
            }
            Op::Scan { start, limit } => {
                let start = key(start, false);
                let limit = usize::from(limit % 64) + 1;
                let got = scan(&mut state, &start, limit);
                let expected: Vec<_> = model
                    .range(start.clone()..)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, expected, "scan from {start:?}");
            }
            Op::Seal { durable } => {
                state.epoch += 1;
                state.moved.clear();
                if durable {
                    let sealed: Vec<u64> =
                        state.pending.range(..state.epoch).map(|(&e, _)| e).collect();
                    for epoch in sealed {
                        let ids = state.pending.remove(&epoch).unwrap_or_default();
                        state.free.extend(ids);
                    }
                }
            }
        }
    }
    if state.root != 0 {
        let (root, height) = (state.root, state.height);
        assert_eq!(check(&mut state, root, None, None, height), model.len());
    } else {
        assert!(model.is_empty());
    }
    let all = scan(&mut state, b"", 50);
    assert_eq!(all.len(), model.len());
    assert!(all.iter().zip(&model).all(|((k, v), (mk, mv))| k == mk && v == mv));
});
