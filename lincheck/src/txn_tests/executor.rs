//! The executors the checker's tests run random transactions on: a versioned store with
//! snapshot isolation (reads from a snapshot taken at begin, no read validation at commit,
//! first committer wins on write-write conflicts), which is serial when run one
//! transaction at a time, and a seeded driver that interleaves clients on it.

use crate::txn::{Op, Status, Txn};
use std::collections::HashMap;

/// splitmix64: a small seeded generator, so a failing run replays from its seed.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// How a transaction ends, as the executor decides it.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum End {
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
pub(super) struct SnapshotStore {
    /// Per key, its installed versions in commit order: (commit number, version).
    installed: HashMap<Vec<u8>, Vec<(u64, u64)>>,
    commits: u64,
    versions: u64,
}

pub(super) struct Running {
    id: u64,
    snapshot: u64,
    ops: Vec<Op>,
    writes: HashMap<Vec<u8>, u64>,
}

impl SnapshotStore {
    pub(super) fn begin(&self, id: u64) -> Running {
        let (snapshot, ops, writes) = (self.commits, Vec::new(), HashMap::new());
        Running {
            id,
            snapshot,
            ops,
            writes,
        }
    }

    pub(super) fn read(&self, t: &mut Running, key: &[u8]) {
        let version = t.writes.get(key).copied().or_else(|| {
            let installed = self.installed.get(key)?;
            let visible = installed.partition_point(|&(commit, _)| commit <= t.snapshot);
            visible.checked_sub(1).map(|at| installed[at].1)
        });
        let key = key.to_vec();
        t.ops.push(Op::Read { key, version });
    }

    pub(super) fn write(&mut self, t: &mut Running, key: &[u8]) {
        self.versions += 1;
        t.writes.insert(key.to_vec(), self.versions);
        let (key, version) = (key.to_vec(), Some(self.versions));
        t.ops.push(Op::Write { key, version });
    }

    /// Ends the transaction; a commit that loses a write-write conflict aborts.
    pub(super) fn end(&mut self, t: Running, end: End) -> Txn {
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
pub(super) fn run(seed: u64, count: u64, clients: usize, keys: u64) -> Vec<Txn> {
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
