//! The direct serialization graph of a history: which transactions are in it (the
//! committed ones and the unknown ones someone in it read from), its ww, wr and rw edges,
//! and, found on the way, the anomalies that are single reads rather than cycles (garbage,
//! aborted and intermediate reads, internal inconsistencies, duplicate versions).

use super::{Anomaly, Dependency, Op, Status, Txn};
use std::collections::{HashMap, HashSet};

/// Who wrote a version of a key.
#[derive(Clone, Copy)]
struct Writer {
    /// The writer's position in the history.
    txn: usize,
    /// Whether this is the writer's last write of the key (the one it installs).
    last: bool,
}

/// The history's keys and versions.
pub(super) struct Index<'h> {
    pub(super) keys: Vec<&'h [u8]>,
    key_of: HashMap<&'h [u8], usize>,
    /// (key, version) to the transaction that wrote it (the first, if several claim it).
    writers: HashMap<(usize, u64), Writer>,
    /// Per key: whether some write of it has no known version, so that a read of a version
    /// nobody claims may have seen it and is not garbage.
    unversioned: Vec<bool>,
    pub(super) duplicates: Vec<Anomaly>,
}

impl<'h> Index<'h> {
    pub(super) fn new(history: &'h [Txn]) -> Self {
        let mut index = Index {
            keys: Vec::new(),
            key_of: HashMap::new(),
            writers: HashMap::new(),
            unversioned: Vec::new(),
            duplicates: Vec::new(),
        };
        let mut ids = HashSet::with_capacity(history.len());
        // (key, version, transaction) already reported as a duplicate.
        let mut reported = HashSet::new();
        // Per transaction: each key's last write, by position in `ops`.
        let mut last_write: HashMap<usize, usize> = HashMap::new();
        for (t, txn) in history.iter().enumerate() {
            assert!(ids.insert(txn.id), "transaction id {} used twice", txn.id);
            last_write.clear();
            for (at, op) in txn.ops.iter().enumerate() {
                let (Op::Read { key, .. } | Op::Write { key, .. }) = op;
                let key = index.intern(key);
                if matches!(op, Op::Write { .. }) {
                    last_write.insert(key, at);
                }
            }
            for (at, op) in txn.ops.iter().enumerate() {
                let Op::Write { key, version } = op else {
                    continue;
                };
                let key = index.key_of[key.as_slice()];
                let last = last_write[&key] == at;
                let Some(version) = *version else {
                    assert!(
                        !(last && txn.status == Status::Committed),
                        "committed transaction {} has no version for its write of {:?}",
                        txn.id,
                        String::from_utf8_lossy(index.keys[key])
                    );
                    index.unversioned[key] = true;
                    continue;
                };
                let writer = index
                    .writers
                    .entry((key, version))
                    .or_insert(Writer { txn: t, last });
                if writer.txn == t {
                    // A transaction may write a key twice at one version (a database that
                    // versions at commit): the version is installed if its last write has it.
                    writer.last |= last;
                } else if reported.insert((key, version, t)) {
                    index.duplicates.push(Anomaly::DuplicateVersion {
                        key: index.keys[key].to_vec(),
                        version,
                        writers: [history[writer.txn].id, txn.id],
                    });
                }
            }
        }
        index
    }

    fn intern(&mut self, key: &'h [u8]) -> usize {
        *self.key_of.entry(key).or_insert_with(|| {
            self.keys.push(key);
            self.unversioned.push(false);
            self.keys.len() - 1
        })
    }

    /// The writer of `version` of `key`, if any transaction claims it.
    fn writer(&self, key: &[u8], version: u64) -> Option<Writer> {
        let key = self.key_of[key];
        self.writers.get(&(key, version)).copied()
    }
}

/// Which transactions are in the graph: the committed ones, and the unknown ones that a
/// transaction in the graph read from (found by a walk from the committed ones; the order
/// of the walk does not matter).
pub(super) fn included(history: &[Txn], index: &Index) -> Vec<bool> {
    let mut included: Vec<bool> = history
        .iter()
        .map(|t| t.status == Status::Committed)
        .collect();
    let mut queue: Vec<usize> = (0..history.len()).filter(|&t| included[t]).collect();
    while let Some(t) = queue.pop() {
        for op in &history[t].ops {
            let Op::Read {
                key,
                version: Some(version),
            } = op
            else {
                continue;
            };
            if let Some(writer) = index.writer(key, *version) {
                let status = history[writer.txn].status;
                if status == Status::Unknown && !included[writer.txn] {
                    included[writer.txn] = true;
                    queue.push(writer.txn);
                }
            }
        }
    }
    included
}

/// What a read of a version by a transaction in the graph observed.
enum ReadFrom {
    /// A version that the transaction (by position in the history) installed.
    Installed(usize),
    /// One of the reader's own writes, which it had not yet made: no edge.
    Own,
    /// Something no transaction installed (None: a version nobody claims, on a key that has
    /// writes of unknown version, so it cannot be called garbage).
    Anomaly(Option<Anomaly>),
}

fn read_from(
    history: &[Txn],
    index: &Index,
    included: &[bool],
    reader: usize,
    key: &[u8],
    version: u64,
) -> ReadFrom {
    let reader_id = history[reader].id;
    let Some(writer) = index.writer(key, version) else {
        if index.unversioned[index.key_of[key]] {
            return ReadFrom::Anomaly(None);
        }
        let (reader, key) = (reader_id, key.to_vec());
        return ReadFrom::Anomaly(Some(Anomaly::GarbageRead {
            reader,
            key,
            version,
        }));
    };
    if writer.txn == reader {
        return ReadFrom::Own;
    }
    let (reader, key, writer_id) = (reader_id, key.to_vec(), history[writer.txn].id);
    if history[writer.txn].status == Status::Aborted {
        return ReadFrom::Anomaly(Some(Anomaly::G1a {
            reader,
            writer: writer_id,
            key,
            version,
        }));
    }
    assert!(
        included[writer.txn],
        "every unknown writer read from is in the graph"
    );
    if !writer.last {
        return ReadFrom::Anomaly(Some(Anomaly::G1b {
            reader,
            writer: writer_id,
            key,
            version,
        }));
    }
    ReadFrom::Installed(writer.txn)
}

/// An edge between nodes of the graph.
#[derive(Clone, Copy)]
pub(super) struct RawEdge {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) dependency: Dependency,
    pub(super) key: usize,
    pub(super) version: u64,
}

/// The direct serialization graph of the included transactions, and the anomalies that are
/// not cycles (found while building it).
pub(super) struct Graph {
    /// Node to transaction id.
    pub(super) ids: Vec<u64>,
    pub(super) edges: Vec<RawEdge>,
    pub(super) anomalies: Vec<Anomaly>,
}

impl Graph {
    pub(super) fn new(history: &[Txn], index: &Index, included: &[bool]) -> Self {
        let mut node = vec![usize::MAX; history.len()];
        let mut ids = Vec::new();
        for (t, txn) in history.iter().enumerate() {
            if included[t] {
                node[t] = ids.len();
                ids.push(txn.id);
            }
        }
        // Each key's installed versions, in version order, with the node that installed it.
        let mut installed: Vec<Vec<(u64, usize)>> = vec![Vec::new(); index.keys.len()];
        for (&(key, version), writer) in &index.writers {
            if writer.last && included[writer.txn] {
                installed[key].push((version, node[writer.txn]));
            }
        }
        let mut edges = Vec::new();
        for (key, versions) in installed.iter_mut().enumerate() {
            versions.sort_unstable();
            for pair in versions.windows(2) {
                let ((_, from), (version, to)) = (pair[0], pair[1]);
                assert_ne!(from, to, "a transaction installed two versions of a key");
                let dependency = Dependency::Write;
                edges.push(RawEdge {
                    from,
                    to,
                    dependency,
                    key,
                    version,
                });
            }
        }

        let mut anomalies = Vec::new();
        // The key's last version this transaction wrote (None: version not known).
        let mut own: HashMap<usize, Option<u64>> = HashMap::new();
        for (t, txn) in history.iter().enumerate() {
            if !included[t] {
                continue;
            }
            let reader = node[t];
            own.clear();
            for op in &txn.ops {
                let (key_bytes, read) = match op {
                    Op::Write { key, version } => {
                        own.insert(index.key_of[key.as_slice()], *version);
                        continue;
                    }
                    Op::Read { key, version } => (key, *version),
                };
                let key = index.key_of[key_bytes.as_slice()];
                if let Some(&wrote) = own.get(&key) {
                    // A read of a key the transaction wrote gives no edge; it must return
                    // the transaction's last write (when its version is known).
                    if let Some(wrote) = wrote.filter(|&w| read != Some(w)) {
                        anomalies.push(Anomaly::Internal {
                            txn: txn.id,
                            key: key_bytes.clone(),
                            wrote,
                            read,
                        });
                    }
                    continue;
                }
                // Where the version read is in the key's version order: the position of
                // the next one. A read that is an anomaly gives no edge, so that one fault
                // is reported once.
                let next = match read {
                    None => 0,
                    Some(version) => {
                        match read_from(history, index, included, t, key_bytes, version) {
                            ReadFrom::Installed(writer) => {
                                let from = node[writer];
                                let dependency = Dependency::Read;
                                edges.push(RawEdge {
                                    from,
                                    to: reader,
                                    dependency,
                                    key,
                                    version,
                                });
                                installed[key].partition_point(|&(v, _)| v <= version)
                            }
                            ReadFrom::Own => continue,
                            ReadFrom::Anomaly(anomaly) => {
                                anomalies.extend(anomaly);
                                continue;
                            }
                        }
                    }
                };
                if let Some(&(version, to)) = installed[key].get(next) {
                    if to != reader {
                        let dependency = Dependency::Anti;
                        edges.push(RawEdge {
                            from: reader,
                            to,
                            dependency,
                            key,
                            version,
                        });
                    }
                }
            }
        }
        Graph {
            ids,
            edges,
            anomalies,
        }
    }
}
