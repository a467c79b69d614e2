//! The isolation checker against a minimal history for each anomaly, against histories from
//! a serial executor (which must always pass), and against a snapshot-isolation executor
//! (which must always be read committed, and produces write skew that must be found).

use crate::txn::*;
use proptest::prelude::*;
use std::collections::HashMap;

fn r(key: &str, version: Option<u64>) -> Op {
    Op::Read {
        key: key.into(),
        version,
    }
}

fn w(key: &str, version: u64) -> Op {
    Op::Write {
        key: key.into(),
        version: Some(version),
    }
}

fn txn(id: u64, status: Status, ops: Vec<Op>) -> Txn {
    Txn { id, status, ops }
}

fn ok(id: u64, ops: Vec<Op>) -> Txn {
    txn(id, Status::Committed, ops)
}

/// The transaction ids around a cycle, starting from its first edge, each edge checked to
/// start where the one before ended.
fn around(cycle: &[Edge]) -> Vec<u64> {
    for (e, next) in cycle.iter().zip(cycle.iter().cycle().skip(1)) {
        assert_eq!(e.to, next.from, "not a cycle: {cycle:?}");
    }
    cycle.iter().map(|e| e.from).collect()
}

fn dependencies(cycle: &[Edge]) -> Vec<Dependency> {
    cycle.iter().map(|e| e.dependency).collect()
}

/// The single anomaly of a report; fails if there are none or several.
fn only(report: &Report) -> &Anomaly {
    assert_eq!(report.anomalies.len(), 1, "{report}");
    &report.anomalies[0]
}

#[test]
fn serial_histories_are_serializable() {
    assert!(check(&[]).is_serializable());
    let history = [
        ok(1, vec![r("x", None), w("x", 1), w("y", 1)]),
        ok(2, vec![r("x", Some(1)), r("y", Some(1)), w("x", 2)]),
        ok(3, vec![r("x", Some(2)), r("y", Some(1)), w("y", 2), r("y", Some(2))]),
    ];
    let report = check(&history);
    assert!(report.is_serializable(), "{report}");
    assert_eq!(report.strongest_level(), Some(Level::Serializable));
    // The order of the history does not matter.
    let reversed: Vec<Txn> = history.iter().rev().cloned().collect();
    assert!(check(&reversed).is_serializable());
}

#[test]
fn a_write_cycle_is_g0() {
    // T1 installs x first and y second; T2 the other way round.
    let history = [
        ok(1, vec![w("x", 1), w("y", 2)]),
        ok(2, vec![w("x", 2), w("y", 1)]),
    ];
    let report = check(&history);
    let Anomaly::G0 { cycle } = only(&report) else {
        panic!("{report}");
    };
    let mut ids = around(cycle);
    ids.sort();
    assert_eq!(ids, [1, 2]);
    assert_eq!(dependencies(cycle), [Dependency::Write; 2]);
    assert_eq!(report.strongest_level(), None);
    assert!(!check_level(&history, Level::ReadUncommitted).satisfies(Level::ReadUncommitted));
    assert!(report.to_string().contains("G0"), "{report}");
}

#[test]
fn a_read_of_an_aborted_write_is_g1a() {
    let history = [
        txn(1, Status::Aborted, vec![w("x", 1)]),
        ok(2, vec![r("x", Some(1))]),
    ];
    let report = check_read_committed(&history);
    assert_eq!(
        only(&report),
        &Anomaly::G1a {
            reader: 2,
            writer: 1,
            key: b"x".to_vec(),
            version: 1
        }
    );
    assert_eq!(report.strongest_level(), Some(Level::ReadUncommitted));
    // Read uncommitted allows it.
    assert!(check_level(&history, Level::ReadUncommitted).anomalies.is_empty());
    // An aborted transaction's own reads are not checked.
    let aborted_reader = [
        txn(1, Status::Aborted, vec![w("x", 1)]),
        txn(2, Status::Aborted, vec![r("x", Some(1))]),
    ];
    assert!(check(&aborted_reader).is_serializable());
}

#[test]
fn a_read_of_an_overwritten_write_is_g1b() {
    let writer = ok(1, vec![w("x", 1), w("y", 1), w("x", 2)]);
    let report = check(&[writer.clone(), ok(2, vec![r("x", Some(1))])]);
    assert_eq!(
        only(&report),
        &Anomaly::G1b {
            reader: 2,
            writer: 1,
            key: b"x".to_vec(),
            version: 1
        }
    );
    assert!(!report.satisfies(Level::ReadCommitted));
    // The last write is the one to read.
    assert!(check(&[writer, ok(2, vec![r("x", Some(2))])]).is_serializable());
}

#[test]
fn circular_information_flow_is_g1c() {
    // Each read the other's write.
    let history = [
        ok(1, vec![w("x", 1), r("y", Some(1))]),
        ok(2, vec![w("y", 1), r("x", Some(1))]),
    ];
    let report = check(&history);
    let Anomaly::G1c { cycle } = only(&report) else {
        panic!("{report}");
    };
    assert_eq!(around(cycle).len(), 2);
    assert_eq!(dependencies(cycle), [Dependency::Read; 2]);
    assert_eq!(report.strongest_level(), Some(Level::ReadUncommitted));
    // A cycle of a wr and a ww edge: T1 reads T2's x, and installs y before T2 does.
    let mixed = [
        ok(1, vec![r("x", Some(1)), w("y", 1)]),
        ok(2, vec![w("x", 1), w("y", 2)]),
    ];
    let report = check_read_committed(&mixed);
    let Anomaly::G1c { cycle } = only(&report) else {
        panic!("{report}");
    };
    let mut kinds = dependencies(cycle);
    kinds.sort_by_key(|d| *d as u8);
    assert_eq!(kinds, [Dependency::Write, Dependency::Read]);
}

#[test]
fn write_skew_is_g2() {
    // T1 and T2 both read x and y as T0 left them, then each writes one of them.
    let history = [
        ok(0, vec![w("x", 1), w("y", 1)]),
        ok(1, vec![r("x", Some(1)), r("y", Some(1)), w("x", 2)]),
        ok(2, vec![r("x", Some(1)), r("y", Some(1)), w("y", 2)]),
    ];
    let report = check(&history);
    let Anomaly::G2 { cycle } = only(&report) else {
        panic!("{report}");
    };
    let mut ids = around(cycle);
    ids.sort();
    assert_eq!(ids, [1, 2]);
    assert_eq!(dependencies(cycle), [Dependency::Anti; 2]);
    assert!(!report.is_serializable());
    assert_eq!(report.strongest_level(), Some(Level::ReadCommitted));
    assert!(check_read_committed(&history).anomalies.is_empty());
}

#[test]
fn write_skew_over_the_initial_state_is_g2() {
    // Each reads a key in its initial state, which the other then writes first.
    let history = [
        ok(1, vec![r("x", None), w("y", 1)]),
        ok(2, vec![r("y", None), w("x", 1)]),
    ];
    let report = check(&history);
    let Anomaly::G2 { cycle } = only(&report) else {
        panic!("{report}");
    };
    assert_eq!(dependencies(cycle), [Dependency::Anti; 2]);
    // A lost update: both read x's initial state; the ww edge and one rw edge close it.
    let lost_update = [
        ok(1, vec![r("x", None), w("x", 1)]),
        ok(2, vec![r("x", None), w("x", 2)]),
    ];
    let report = check(&lost_update);
    let Anomaly::G2 { cycle } = only(&report) else {
        panic!("{report}");
    };
    let mut kinds = dependencies(cycle);
    kinds.sort_by_key(|d| *d as u8);
    assert_eq!(kinds, [Dependency::Write, Dependency::Anti]);
    assert!(report.to_string().contains("G2"), "{report}");
}

#[test]
fn unknown_outcomes_count_when_observed_and_only_then() {
    // Unobserved: left out, though with it the history would be G2.
    let unobserved = [
        txn(1, Status::Unknown, vec![r("x", None), w("y", 1)]),
        ok(2, vec![r("y", None), w("x", 1)]),
    ];
    assert!(check(&unobserved).is_serializable());
    // Observed by a committed read: committed, so its cycle is found (not a G1a).
    let observed = [
        txn(1, Status::Unknown, vec![w("x", 1), r("y", Some(1))]),
        ok(2, vec![w("y", 1), r("x", Some(1))]),
    ];
    assert!(matches!(only(&check(&observed)), Anomaly::G1c { .. }));
    // Observed through another unknown one that is itself observed.
    let chain = [
        txn(1, Status::Unknown, vec![w("x", 1), r("z", Some(1))]),
        txn(2, Status::Unknown, vec![r("x", Some(1)), w("y", 1)]),
        ok(3, vec![r("y", Some(1)), w("z", 1)]),
    ];
    let report = check(&chain);
    let Anomaly::G1c { cycle } = only(&report) else {
        panic!("{report}");
    };
    let mut ids = around(cycle);
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
    // Observed only by an aborted transaction: still left out.
    let by_aborted = [
        txn(1, Status::Unknown, vec![r("x", None), w("y", 1)]),
        ok(2, vec![r("y", None), w("x", 1)]),
        txn(3, Status::Aborted, vec![r("y", Some(1))]),
    ];
    assert!(check(&by_aborted).is_serializable());
}

#[test]
fn reads_of_versions_nobody_wrote_are_garbage() {
    let report = check(&[ok(1, vec![w("x", 1)]), ok(2, vec![r("x", Some(7))])]);
    assert_eq!(
        only(&report),
        &Anomaly::GarbageRead {
            reader: 2,
            key: b"x".to_vec(),
            version: 7
        }
    );
    assert_eq!(report.strongest_level(), None);
    // Unless a write of x has no known version: the read may have seen it.
    let unversioned = Op::Write {
        key: b"x".to_vec(),
        version: None,
    };
    let history = [
        txn(1, Status::Unknown, vec![unversioned]),
        ok(2, vec![r("x", Some(7))]),
    ];
    assert!(check(&history).is_serializable());
}

#[test]
fn own_writes_give_no_edges_but_must_be_read_back() {
    // Reads of its own writes, before and after rewriting the key.
    let history = [
        ok(1, vec![w("x", 1), r("x", Some(1)), w("x", 2), r("x", Some(2))]),
        ok(2, vec![r("x", Some(2)), w("x", 3), r("x", Some(3))]),
    ];
    assert!(check(&history).is_serializable());
    // Reading someone else's version after writing the key is an internal inconsistency.
    let history = [
        ok(1, vec![w("x", 1)]),
        ok(2, vec![w("x", 2), r("x", Some(1))]),
    ];
    assert_eq!(
        only(&check(&history)),
        &Anomaly::Internal {
            txn: 2,
            key: b"x".to_vec(),
            wrote: 2,
            read: Some(1)
        }
    );
}

#[test]
fn two_writers_of_one_version_are_reported() {
    let history = [ok(1, vec![w("x", 1)]), ok(2, vec![w("x", 1)])];
    assert_eq!(
        only(&check(&history)),
        &Anomaly::DuplicateVersion {
            key: b"x".to_vec(),
            version: 1,
            writers: [1, 2]
        }
    );
}

#[test]
fn a_cycle_through_a_hundred_thousand_transactions_is_found() {
    // T(i) reads key i in its initial state and writes key i+1 (mod n): T(i) -rw-> T(i-1).
    let n = 100_000u64;
    let key = |i: u64| format!("k{}", i % n);
    let history: Vec<Txn> = (0..n)
        .map(|i| ok(i, vec![r(&key(i), None), w(&key(i + 1), 1)]))
        .collect();
    let report = check(&history);
    let Anomaly::G2 { cycle } = only(&report) else {
        panic!("expected one G2");
    };
    assert_eq!(around(cycle).len(), n as usize);
    // Without the read of one key the ring is open.
    let mut open = history;
    open[0].ops.remove(0);
    assert!(check(&open).is_serializable());
}

/// splitmix64: a small seeded generator, so a failing run replays from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// How a transaction ends, as the executor decides it.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Commit,
    Abort,
    /// Committed (or aborted), but the client is not told.
    UnknownCommit,
    UnknownAbort,
}

/// A versioned store that runs transactions from snapshots and commits them without read
/// validation, first committer wins on write-write conflicts: snapshot isolation, which
/// allows write skew. Run one transaction at a time, it is serial.
#[derive(Default)]
struct SnapshotStore {
    /// Per key, its installed versions in commit order: (commit number, version).
    installed: HashMap<Vec<u8>, Vec<(u64, u64)>>,
    commits: u64,
    versions: u64,
}

struct Running {
    id: u64,
    snapshot: u64,
    ops: Vec<Op>,
    writes: HashMap<Vec<u8>, u64>,
}

impl SnapshotStore {
    fn begin(&self, id: u64) -> Running {
        let (snapshot, ops, writes) = (self.commits, Vec::new(), HashMap::new());
        Running { id, snapshot, ops, writes }
    }

    fn read(&self, t: &mut Running, key: &[u8]) {
        let version = t.writes.get(key).copied().or_else(|| {
            let installed = self.installed.get(key)?;
            let visible = installed.partition_point(|&(commit, _)| commit <= t.snapshot);
            visible.checked_sub(1).map(|at| installed[at].1)
        });
        let key = key.to_vec();
        t.ops.push(Op::Read { key, version });
    }

    fn write(&mut self, t: &mut Running, key: &[u8]) {
        self.versions += 1;
        t.writes.insert(key.to_vec(), self.versions);
        let (key, version) = (key.to_vec(), Some(self.versions));
        t.ops.push(Op::Write { key, version });
    }

    /// Ends the transaction; a commit that loses a write-write conflict aborts.
    fn end(&mut self, t: Running, end: End) -> Txn {
        let conflict = t.writes.keys().any(|key| {
            let last = self.installed.get(key).and_then(|v| v.last());
            last.is_some_and(|&(commit, _)| commit > t.snapshot)
        });
        let commits = matches!(end, End::Commit | End::UnknownCommit) && !conflict;
        if commits {
            self.commits += 1;
            for (key, version) in t.writes {
                let entry = self.installed.entry(key).or_default();
                entry.push((self.commits, version));
            }
        }
        let status = match end {
            End::Commit | End::Abort if commits => Status::Committed,
            End::Commit | End::Abort => Status::Aborted,
            End::UnknownCommit | End::UnknownAbort => Status::Unknown,
        };
        Txn {
            id: t.id,
            status,
            ops: t.ops,
        }
    }
}

/// Runs `count` random transactions over a few keys with up to `clients` of them open at
/// once (1: serially), each step chosen by the seeded generator.
fn run(seed: u64, count: u64, clients: usize, keys: u64) -> Vec<Txn> {
    let mut rng = Rng(seed);
    let mut store = SnapshotStore::default();
    let mut open: Vec<(Running, u64)> = Vec::new(); // a transaction and its steps left
    let mut history = Vec::new();
    let mut started = 0;
    while started < count || !open.is_empty() {
        if open.len() < clients && started < count {
            open.push((store.begin(started), 1 + rng.below(5)));
            started += 1;
            continue;
        }
        let at = rng.below(open.len() as u64) as usize;
        let (t, left) = &mut open[at];
        if *left == 0 {
            let end = match rng.below(10) {
                0 => End::Abort,
                1 => End::UnknownCommit,
                2 => End::UnknownAbort,
                _ => End::Commit,
            };
            let mut txn = store.end(open.swap_remove(at).0, end);
            if end != End::Commit && rng.below(2) == 0 {
                // The client may not learn the versions of writes that did not commit.
                for op in &mut txn.ops {
                    if let Op::Write { version, .. } = op {
                        *version = None;
                    }
                }
            }
            history.push(txn);
            continue;
        }
        *left -= 1;
        let key = format!("k{}", rng.below(keys)).into_bytes();
        if rng.below(2) == 0 {
            store.read(t, &key);
        } else {
            store.write(t, &key);
        }
    }
    history
}

proptest! {
    /// Transactions run one at a time form a serializable history, whatever the order the
    /// history lists them in.
    #[test]
    fn serial_executions_are_serializable(seed in any::<u64>(), count in 1u64..60, keys in 1u64..5) {
        let mut history = run(seed, count, 1, keys);
        let report = check(&history);
        prop_assert!(report.is_serializable(), "{}", report);
        let mut rng = Rng(seed);
        for i in (1..history.len()).rev() {
            history.swap(i, rng.below(i as u64 + 1) as usize);
        }
        prop_assert!(check(&history).is_serializable());
    }

    /// Snapshot isolation never shows G0 or G1: anything the checker finds is G2.
    #[test]
    fn snapshot_isolation_is_read_committed(seed in any::<u64>(), count in 1u64..60) {
        let history = run(seed, count, 4, 3);
        let report = check_read_committed(&history);
        prop_assert!(report.anomalies.is_empty(), "{}", report);
        let report = check(&history);
        prop_assert!(
            report.anomalies.iter().all(|a| matches!(a, Anomaly::G2 { .. })),
            "{}",
            report
        );
    }
}

#[test]
fn snapshot_isolation_write_skew_is_g2() {
    let mut store = SnapshotStore::default();
    let mut setup = store.begin(0);
    store.write(&mut setup, b"x");
    store.write(&mut setup, b"y");
    let mut history = vec![store.end(setup, End::Commit)];
    let mut t1 = store.begin(1);
    let mut t2 = store.begin(2);
    for key in [b"x", b"y"] {
        store.read(&mut t1, key);
        store.read(&mut t2, key);
    }
    store.write(&mut t1, b"x");
    store.write(&mut t2, b"y");
    history.push(store.end(t1, End::Commit));
    history.push(store.end(t2, End::Commit));
    assert!(history.iter().all(|t| t.status == Status::Committed));
    let report = check(&history);
    let Anomaly::G2 { cycle } = only(&report) else {
        panic!("{report}");
    };
    let mut ids = around(cycle);
    ids.sort();
    assert_eq!(ids, [1, 2]);
    // Had they written the same key, the second to commit would have aborted.
    let mut store = SnapshotStore::default();
    let (mut t1, mut t2) = (store.begin(1), store.begin(2));
    store.write(&mut t1, b"x");
    store.write(&mut t2, b"x");
    assert_eq!(store.end(t1, End::Commit).status, Status::Committed);
    assert_eq!(store.end(t2, End::Commit).status, Status::Aborted);
}

#[test]
fn random_snapshot_isolation_runs_show_write_skew() {
    let flagged = (0..200)
        .filter(|&seed| {
            let report = check(&run(seed, 30, 4, 2));
            assert!(report.satisfies(Level::ReadCommitted), "seed {seed}: {report}");
            !report.is_serializable()
        })
        .count();
    assert!(flagged > 0, "no G2 in 200 runs of snapshot isolation");
}

/// A small random history of committed transactions whose reads see any installed version
/// (or the initial state), so that its graph has cycles of every kind, nested and crossing.
fn tangle(seed: u64) -> Vec<Txn> {
    let mut rng = Rng(seed);
    let (count, keys) = (2 + rng.below(5), 1 + rng.below(3));
    let plans: Vec<Vec<(bool, u64)>> = (0..count)
        .map(|_| (0..1 + rng.below(4)).map(|_| (rng.below(2) == 0, rng.below(keys))).collect())
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
                ops.push(Op::Write { key: name, version: Some(version) });
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

/// Whether some serial order of the transactions respects the version order (ww), and with
/// `reads` each read's writer (wr), and with `anti` each read's next version (rw): by trying
/// every order, which is a cycle search that shares nothing with the checker's.
fn serial_order_exists(history: &[Txn], reads: bool, anti: bool) -> bool {
    let n = history.len();
    // Per (key, installed version): its writer; a transaction's last write of a key installs.
    let mut writer: HashMap<(&[u8], u64), usize> = HashMap::new();
    for (t, txn) in history.iter().enumerate() {
        for (at, op) in txn.ops.iter().enumerate() {
            if let Op::Write { key, version: Some(v) } = op {
                let later = txn.ops[at + 1..]
                    .iter()
                    .any(|o| matches!(o, Op::Write { key: k, .. } if k == key));
                if !later {
                    writer.insert((key, *v), t);
                }
            }
        }
    }
    // Pairs (a, b): a must come before b.
    let mut before: Vec<(usize, usize)> = Vec::new();
    for (&(key, v), &t) in &writer {
        for (&(k, u), &s) in &writer {
            if k == key && u < v {
                before.push((s, t));
            }
        }
    }
    for (t, txn) in history.iter().enumerate() {
        let mut written = Vec::new();
        for op in &txn.ops {
            match op {
                Op::Write { key, .. } => written.push(key),
                Op::Read { key, .. } if written.contains(&key) => {}
                Op::Read { key, version } => {
                    if let (true, Some(v)) = (reads, version) {
                        before.push((writer[&(key.as_slice(), *v)], t));
                    }
                    let next = writer
                        .iter()
                        .filter(|(&(k, u), _)| k == key && version.is_none_or(|v| u > v))
                        .min_by_key(|(&(_, u), _)| u);
                    if let (true, Some((_, &s))) = (anti, next) {
                        if s != t {
                            before.push((t, s));
                        }
                    }
                }
            }
        }
    }
    fn place(n: usize, placed: &mut Vec<usize>, before: &[(usize, usize)]) -> bool {
        if placed.len() == n {
            return true;
        }
        for t in 0..n {
            let ready = !placed.contains(&t)
                && before.iter().all(|&(a, b)| b != t || a == t || placed.contains(&a));
            if ready {
                placed.push(t);
                if place(n, placed, before) {
                    return true;
                }
                placed.pop();
            }
        }
        false
    }
    place(n, &mut Vec::new(), &before)
}

proptest! {
    /// On small tangled histories, the checker finds G0, G0 or G1c, and any cycle exactly
    /// when no serial order respects ww, ww and wr, and all edges.
    #[test]
    fn cycles_are_found_exactly_when_no_serial_order_exists(seed in any::<u64>()) {
        let history = tangle(seed);
        let report = check(&history);
        let g0 = report.anomalies.iter().any(|a| matches!(a, Anomaly::G0 { .. }));
        let g1c = report.anomalies.iter().any(|a| matches!(a, Anomaly::G1c { .. }));
        prop_assert!(
            report.anomalies.iter().all(|a| matches!(
                a,
                Anomaly::G0 { .. } | Anomaly::G1c { .. } | Anomaly::G2 { .. }
            )),
            "{}",
            report
        );
        prop_assert_eq!(g0, !serial_order_exists(&history, false, false), "{}", report);
        prop_assert_eq!(g0 || g1c, !serial_order_exists(&history, true, false), "{}", report);
        prop_assert_eq!(
            report.is_serializable(),
            serial_order_exists(&history, true, true),
            "{}",
            report
        );
        for anomaly in &report.anomalies {
            if let Anomaly::G0 { cycle } | Anomaly::G1c { cycle } | Anomaly::G2 { cycle } = anomaly {
                around(cycle);
            }
        }
    }
}
