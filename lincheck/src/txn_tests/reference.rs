//! A reference for the cycle search: small tangled histories whose graphs have cycles of
//! every kind, and the number of G0, G1c and G2 cycles each must show, worked out by brute
//! force (Warshall's reachability) rather than by the checker's Tarjan and search.

use super::executor::Rng;
use super::ok;
use crate::txn::{Op, Txn};
use std::collections::HashMap;

/// A small random history of committed transactions whose reads see any installed version
/// (or the initial state), so that its graph has cycles of every kind, nested and crossing.
pub(super) fn tangle(seed: u64) -> Vec<Txn> {
    let mut rng = Rng(seed);
    let (count, keys) = (2 + rng.below(6), 1 + rng.below(3));
    let plans: Vec<Vec<(bool, u64)>> = (0..count)
        .map(|_| {
            (0..1 + rng.below(4))
                .map(|_| (rng.below(2) == 0, rng.below(keys)))
                .collect()
        })
        .collect();
    // Each key's installed versions 1..=m go to its writers in a random order; intermediate
    // writes get versions above those, which nobody reads.
    let mut installed: HashMap<(usize, u64), u64> = HashMap::new(); // (txn, key) -> version
    for key in 0..keys {
        let mut writers: Vec<usize> = (0..plans.len())
            .filter(|&t| plans[t].contains(&(true, key)))
            .collect();
        for i in (1..writers.len()).rev() {
            writers.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (v, t) in writers.into_iter().enumerate() {
            installed.insert((t, key), v as u64 + 1);
        }
    }
    let mut spare = 1000;
    let mut history = Vec::new();
    for (t, plan) in plans.iter().enumerate() {
        let mut own: HashMap<u64, u64> = HashMap::new();
        let mut ops = Vec::new();
        for (at, &(write, key)) in plan.iter().enumerate() {
            let name = format!("k{key}").into_bytes();
            if write {
                let last = !plan[at + 1..].contains(&(true, key));
                spare += 1;
                let version = if last { installed[&(t, key)] } else { spare };
                own.insert(key, version);
                ops.push(Op::Write {
                    key: name,
                    version: Some(version),
                });
                continue;
            }
            let version = own.get(&key).copied().or_else(|| {
                let mut seen: Vec<u64> = installed
                    .iter()
                    .filter(|(&(writer, k), _)| k == key && writer != t)
                    .map(|(_, &v)| v)
                    .collect();
                seen.sort();
                let pick = rng.below(seen.len() as u64 + 1) as usize;
                seen.get(pick).copied() // past the end: the initial state
            });
            ops.push(Op::Read { key: name, version });
        }
        history.push(ok(t as u64, ops));
    }
    history
}

/// How many G0, G1c and G2 cycles the checker must report for a history of committed
/// transactions, worked out without it: the edges from their definitions, reachability by
/// Warshall's algorithm, and per class the number of components (sets of mutually
/// reachable transactions) with an edge of the class's own kind inside.
pub(super) fn expected_cycles(history: &[Txn]) -> [usize; 3] {
    let n = history.len();
    // (key, version) installed, to its writer: a transaction's last write of a key.
    let mut installed: HashMap<(&[u8], u64), usize> = HashMap::new();
    for (t, txn) in history.iter().enumerate() {
        for (at, op) in txn.ops.iter().enumerate() {
            if let Op::Write {
                key,
                version: Some(v),
            } = op
            {
                let later = txn.ops[at + 1..]
                    .iter()
                    .any(|o| matches!(o, Op::Write { key: k, .. } if k == key));
                if !later {
                    installed.insert((key, *v), t);
                }
            }
        }
    }
    // The writer of the version of `key` after `version` (None: after the initial state).
    let next = |key: &[u8], version: Option<u64>| {
        let after = installed
            .iter()
            .filter(|(&(k, u), _)| k == key && version.is_none_or(|v| u > v));
        after.min_by_key(|(&(_, u), _)| u).map(|(_, &t)| t)
    };
    // Edges as (from, to, kind), kind 0 ww, 1 wr, 2 rw.
    let mut edges = Vec::new();
    for (&(key, v), &t) in &installed {
        if let Some(s) = next(key, Some(v)) {
            edges.push((t, s, 0));
        }
    }
    for (t, txn) in history.iter().enumerate() {
        let mut written = Vec::new();
        for op in &txn.ops {
            match op {
                Op::Write { key, .. } => written.push(key),
                Op::Read { key, .. } if written.contains(&key) => {}
                Op::Read { key, version } => {
                    if let Some(v) = version {
                        edges.push((installed[&(key.as_slice(), *v)], t, 1));
                    }
                    if let Some(s) = next(key, *version).filter(|&s| s != t) {
                        edges.push((t, s, 2));
                    }
                }
            }
        }
    }
    let mut counts = [0; 3];
    for (class, count) in counts.iter_mut().enumerate() {
        let mut reach = vec![vec![false; n]; n];
        for &(a, b, kind) in &edges {
            reach[a][b] |= kind <= class;
        }
        for k in 0..n {
            for a in 0..n {
                for b in 0..n {
                    reach[a][b] |= reach[a][k] && reach[k][b];
                }
            }
        }
        // A component is named by its smallest member.
        let name = |a: usize| (0..n).find(|&b| b == a || (reach[a][b] && reach[b][a]));
        let mut components: Vec<usize> = edges
            .iter()
            .filter(|&&(a, b, kind)| kind == class && reach[b][a])
            .filter_map(|&(a, _, _)| name(a))
            .collect();
        components.sort();
        components.dedup();
        *count = components.len();
    }
    counts
}
