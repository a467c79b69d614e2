//! An isolation checker for histories of transactions over registers: which of Adya's
//! anomalies (G0, G1a, G1b, G1c, G2) a history exhibits, found the way Elle finds them.
//!
//! Adya ("Weak Consistency", 1999) defines isolation levels by what they forbid in the
//! direct serialization graph of the committed transactions. Its edges, each on one key:
//! - ww (write-depends): Ti installs a version and Tj installs the next one;
//! - wr (read-depends): Tj reads the version Ti installed;
//! - rw (anti-depends): Ti reads a version, or the key's initial state, and Tj installs the
//!   version that follows it.
//!
//! G0 is a cycle of ww edges; G1c a cycle of ww and wr edges with at least one wr; G2 a cycle
//! with at least one rw edge. G1a is a committed transaction reading a version an aborted
//! one wrote; G1b one reading a version its writer overwrote before committing (only a
//! transaction's last write of a key is installed). Read uncommitted (PL-1) forbids G0, read
//! committed (PL-2) also G1a, G1b and G1c, serializable (PL-3) also G2.
//!
//! Elle has to infer each key's version order from the values clients wrote. Here the
//! database tells us: every write carries the version the database gave it, versions are
//! unique per key, and their numeric order is the key's version order. Every read carries
//! the version it observed, so it names its writer. A read of a version no transaction
//! wrote is reported as a garbage read, whatever the level; so are two transactions given
//! the same version of a key, and a transaction that read a key it had written and did not
//! get its own last write back.
//!
//! A transaction whose outcome the client does not know (Unknown) may or may not have
//! committed. If a transaction in the graph read one of its writes, it committed (had it
//! aborted, that read would be a G1a we cannot tell apart), so it joins the graph, and its
//! own reads may bring in more unknown ones. One that nobody in the graph read is left out:
//! that can hide a cycle through it, never invent one. Aborted transactions are never in the
//! graph; their reads are not checked.
//!
//! Scope: reads are item reads. A predicate read or a scan is to be given as item reads of
//! the keys it returned, so phantoms (G2 proper, as against G2-item) are out of reach unless
//! the caller also records reads of the keys the scan found absent. A delete is a write: its
//! tombstone has a version, and a read that finds the key deleted must report that version,
//! since a read of `None` means the key's initial state (no write at all).
//!
//! Cost: building the graph takes one pass over the operations (hash lookups and a sort of
//! each key's versions); each class of cycle is one run of Tarjan's algorithm over the graph,
//! then, in each strongly connected component that holds an edge of the kind the class
//! needs, one breadth-first search for a shortest cycle through that edge. Every step is
//! iterative, so a history of 100,000 transactions with a cycle through all of them is fine.
//! One cycle is reported per component and class, not every cycle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

/// How a transaction ended, as the client knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Committed,
    Aborted,
    /// Not known to the client (a timeout, a lost connection): it may or may not have
    /// committed.
    Unknown,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// A read, and the version it observed: None when the key had never been written.
    Read { key: Vec<u8>, version: Option<u64> },
    /// A write (or a delete), and the version the database gave it. The version of a
    /// committed transaction's last write of a key must be known; others may be None.
    Write { key: Vec<u8>, version: Option<u64> },
}

/// A transaction, with its operations in program order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    /// Unique in the history.
    pub id: u64,
    pub status: Status,
    pub ops: Vec<Op>,
}

/// Adya's portable isolation levels, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// PL-1: no G0.
    ReadUncommitted,
    /// PL-2: no G0, G1a, G1b, G1c.
    ReadCommitted,
    /// PL-3: none of those, and no G2.
    Serializable,
}

/// The kind of an edge of the serialization graph, in Adya's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    /// ww: `to` installed the version of the key that follows `from`'s.
    Write,
    /// wr: `to` read the version of the key that `from` installed.
    Read,
    /// rw: `from` read a version of the key (or its initial state), and `to` installed the
    /// version that follows it.
    Anti,
}

/// An edge of the serialization graph, between transaction ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: u64,
    pub to: u64,
    pub dependency: Dependency,
    pub key: Vec<u8>,
    /// The version that makes the edge: the one `to` installed (ww, rw) or read (wr).
    pub version: u64,
}

/// Something wrong with a history. A cycle is a list of edges, each one's `to` the next
/// one's `from`, the last one's `to` the first one's `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// A read of a version that no transaction in the history wrote.
    GarbageRead {
        reader: u64,
        key: Vec<u8>,
        version: u64,
    },
    /// Two transactions were given the same version of a key (reads of it are taken to be of
    /// the first one's write).
    DuplicateVersion {
        key: Vec<u8>,
        version: u64,
        writers: [u64; 2],
    },
    /// A transaction read a key it had written (last at version `wrote`) and did not get
    /// that version back.
    Internal {
        txn: u64,
        key: Vec<u8>,
        wrote: u64,
        read: Option<u64>,
    },
    /// A cycle of ww edges.
    G0 { cycle: Vec<Edge> },
    /// A committed transaction read a version written by an aborted one.
    G1a {
        reader: u64,
        writer: u64,
        key: Vec<u8>,
        version: u64,
    },
    /// A committed transaction read a version its writer overwrote before committing.
    G1b {
        reader: u64,
        writer: u64,
        key: Vec<u8>,
        version: u64,
    },
    /// A cycle of ww and wr edges, at least one of them wr.
    G1c { cycle: Vec<Edge> },
    /// A cycle with at least one rw edge (G2-item).
    G2 { cycle: Vec<Edge> },
}

impl Anomaly {
    /// The weakest level that forbids this anomaly. A history with a garbage read, a
    /// duplicate version or an internal inconsistency satisfies no level.
    pub fn forbidden_from(&self) -> Level {
        match self {
            Anomaly::GarbageRead { .. }
            | Anomaly::DuplicateVersion { .. }
            | Anomaly::Internal { .. }
            | Anomaly::G0 { .. } => Level::ReadUncommitted,
            Anomaly::G1a { .. } | Anomaly::G1b { .. } | Anomaly::G1c { .. } => {
                Level::ReadCommitted
            }
            Anomaly::G2 { .. } => Level::Serializable,
        }
    }

    /// Where the anomaly goes in a report: the ones that rule out weaker levels first.
    fn rank(&self) -> u8 {
        match self {
            Anomaly::GarbageRead { .. } => 0,
            Anomaly::DuplicateVersion { .. } => 1,
            Anomaly::Internal { .. } => 2,
            Anomaly::G0 { .. } => 3,
            Anomaly::G1a { .. } => 4,
            Anomaly::G1b { .. } => 5,
            Anomaly::G1c { .. } => 6,
            Anomaly::G2 { .. } => 7,
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The level the history was checked against: anomalies it allows were not looked for.
    pub level: Level,
    /// Every anomaly found, those that rule out the weakest levels first, then in the order
    /// of the history.
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// The strongest level the history satisfies, up to the level it was checked against;
    /// None when it satisfies none.
    pub fn strongest_level(&self) -> Option<Level> {
        let Some(worst) = self.anomalies.first() else {
            return Some(self.level);
        };
        match worst.forbidden_from() {
            Level::ReadUncommitted => None,
            Level::ReadCommitted => Some(Level::ReadUncommitted),
            Level::Serializable => Some(Level::ReadCommitted),
        }
    }

    /// Whether the history satisfies `level`, which must not be stronger than the level it
    /// was checked against (the anomalies that would tell were not looked for).
    pub fn satisfies(&self, level: Level) -> bool {
        assert!(
            level <= self.level,
            "asked whether a history checked at {:?} satisfies {level:?}",
            self.level
        );
        self.strongest_level().is_some_and(|strongest| strongest >= level)
    }

    /// Whether the history is serializable: no anomaly at all (it must have been checked
    /// at `Level::Serializable`).
    pub fn is_serializable(&self) -> bool {
        self.satisfies(Level::Serializable)
    }
}

/// Checks a history for every anomaly: serializability (PL-3).
pub fn check(history: &[Txn]) -> Report {
    check_level(history, Level::Serializable)
}

/// Checks a history for the anomalies read committed (PL-2) forbids: G2 is not looked for.
pub fn check_read_committed(history: &[Txn]) -> Report {
    check_level(history, Level::ReadCommitted)
}

/// Checks a history for the anomalies `level` forbids (garbage reads, duplicate versions and
/// internal inconsistencies are reported at every level).
pub fn check_level(history: &[Txn], level: Level) -> Report {
    let index = Index::new(history);
    let included = included(history, &index);
    let graph = Graph::new(history, &index, &included);
    let mut anomalies = index.duplicates;
    anomalies.extend(graph.anomalies.iter().cloned().filter(|a| a.forbidden_from() <= level));

    let edge = |e: &RawEdge| Edge {
        from: graph.ids[e.from],
        to: graph.ids[e.to],
        dependency: e.dependency,
        key: index.keys[e.key].to_vec(),
        version: e.version,
    };
    use Dependency::{Anti, Read, Write};
    let classes: [(Level, &[Dependency], Dependency); 3] = [
        (Level::ReadUncommitted, &[Write], Write),
        (Level::ReadCommitted, &[Write, Read], Read),
        (Level::Serializable, &[Write, Read, Anti], Anti),
    ];
    for (forbidden_from, allowed, required) in classes {
        if forbidden_from > level {
            continue;
        }
        for cycle in graph.cycles(allowed, required) {
            let cycle = cycle.iter().map(|&e| edge(&graph.edges[e])).collect();
            anomalies.push(match required {
                Write => Anomaly::G0 { cycle },
                Read => Anomaly::G1c { cycle },
                Anti => Anomaly::G2 { cycle },
            });
        }
    }
    anomalies.sort_by_key(Anomaly::rank); // stable: history order within a kind
    Report { level, anomalies }
}

/// Who wrote a version of a key.
#[derive(Clone, Copy)]
struct Writer {
    /// The writer's position in the history.
    txn: usize,
    /// Whether this is the writer's last write of the key (the one it installs).
    last: bool,
}

/// The history's keys and versions.
struct Index<'h> {
    keys: Vec<&'h [u8]>,
    key_of: HashMap<&'h [u8], usize>,
    /// (key, version) to the transaction that wrote it (the first, if several claim it).
    writers: HashMap<(usize, u64), Writer>,
    /// Per key: whether some write of it has no known version, so that a read of a version
    /// nobody claims may have seen it and is not garbage.
    unversioned: Vec<bool>,
    duplicates: Vec<Anomaly>,
}

impl<'h> Index<'h> {
    fn new(history: &'h [Txn]) -> Self {
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
/// transaction in the graph read from (found by a breadth-first walk from the committed).
fn included(history: &[Txn], index: &Index) -> Vec<bool> {
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
        return ReadFrom::Anomaly(Some(Anomaly::GarbageRead { reader, key, version }));
    };
    if writer.txn == reader {
        return ReadFrom::Own;
    }
    let (reader, key, writer_id) = (reader_id, key.to_vec(), history[writer.txn].id);
    if history[writer.txn].status == Status::Aborted {
        return ReadFrom::Anomaly(Some(Anomaly::G1a { reader, writer: writer_id, key, version }));
    }
    assert!(included[writer.txn], "every unknown writer read from is in the graph");
    if !writer.last {
        return ReadFrom::Anomaly(Some(Anomaly::G1b { reader, writer: writer_id, key, version }));
    }
    ReadFrom::Installed(writer.txn)
}

/// An edge between nodes of the graph.
#[derive(Clone, Copy)]
struct RawEdge {
    from: usize,
    to: usize,
    dependency: Dependency,
    key: usize,
    version: u64,
}

/// The direct serialization graph of the included transactions, and the anomalies that are
/// not cycles (found while building it).
struct Graph {
    /// Node to transaction id.
    ids: Vec<u64>,
    edges: Vec<RawEdge>,
    anomalies: Vec<Anomaly>,
}

impl Graph {
    fn new(history: &[Txn], index: &Index, included: &[bool]) -> Self {
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
                edges.push(RawEdge { from, to, dependency, key, version });
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
                    Some(version) => match read_from(history, index, included, t, key_bytes, version) {
                        ReadFrom::Installed(writer) => {
                            let from = node[writer];
                            let dependency = Dependency::Read;
                            edges.push(RawEdge { from, to: reader, dependency, key, version });
                            installed[key].partition_point(|&(v, _)| v <= version)
                        }
                        ReadFrom::Own => continue,
                        ReadFrom::Anomaly(anomaly) => {
                            anomalies.extend(anomaly);
                            continue;
                        }
                    },
                };
                if let Some(&(version, to)) = installed[key].get(next) {
                    if to != reader {
                        let dependency = Dependency::Anti;
                        edges.push(RawEdge { from: reader, to, dependency, key, version });
                    }
                }
            }
        }
        Graph { ids, edges, anomalies }
    }

    /// One shortest cycle through an edge of kind `required`, using only edges of the
    /// `allowed` kinds, for each strongly connected component (of those edges) that has one.
    /// Cycles are lists of edge indices.
    fn cycles(&self, allowed: &[Dependency], required: Dependency) -> Vec<Vec<usize>> {
        assert!(allowed.contains(&required));
        let n = self.ids.len();
        let adjacency = Adjacency::new(n, &self.edges, allowed);
        let (component, count) = strongly_connected(n, &self.edges, &adjacency);
        let mut reported = vec![false; count];
        let mut search = Search::new(n);
        let mut cycles = Vec::new();
        for (e, edge) in self.edges.iter().enumerate() {
            let c = component[edge.from];
            if edge.dependency != required || component[edge.to] != c || reported[c] {
                continue;
            }
            reported[c] = true;
            // The edge goes from `from` to `to`; a path back from `to` closes the cycle.
            let path = search.shortest_path(edge.to, edge.from, &self.edges, &adjacency, |v| {
                component[v] == c
            });
            let mut cycle = vec![e];
            cycle.extend(path);
            cycles.push(cycle);
        }
        cycles
    }
}

/// Outgoing edges per node, of some kinds only (compressed rows: node `v`'s edges are
/// `edges[start[v]..start[v + 1]]`, as indices into the graph's edges).
struct Adjacency {
    start: Vec<usize>,
    edges: Vec<usize>,
}

impl Adjacency {
    fn new(n: usize, edges: &[RawEdge], allowed: &[Dependency]) -> Self {
        let kept = |e: &&RawEdge| allowed.contains(&e.dependency);
        let mut start = vec![0; n + 1];
        for e in edges.iter().filter(kept) {
            start[e.from + 1] += 1;
        }
        for v in 0..n {
            start[v + 1] += start[v];
        }
        let mut fill = start.clone();
        let mut out = vec![0; start[n]];
        for (i, e) in edges.iter().enumerate() {
            if allowed.contains(&e.dependency) {
                out[fill[e.from]] = i;
                fill[e.from] += 1;
            }
        }
        Adjacency { start, edges: out }
    }

    fn out(&self, v: usize) -> &[usize] {
        &self.edges[self.start[v]..self.start[v + 1]]
    }
}

/// Tarjan's strongly connected components, without recursion: the component of each node,
/// and how many components there are.
fn strongly_connected(n: usize, edges: &[RawEdge], adjacency: &Adjacency) -> (Vec<usize>, usize) {
    const UNSEEN: usize = usize::MAX;
    struct State {
        order: Vec<usize>, // when each node was first reached
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        reached: usize,
        /// The depth-first path: a node, and how many of its edges have been followed.
        path: Vec<(usize, usize)>,
    }
    impl State {
        fn enter(&mut self, v: usize) {
            self.order[v] = self.reached;
            self.low[v] = self.reached;
            self.reached += 1;
            self.on_stack[v] = true;
            self.stack.push(v);
            self.path.push((v, 0));
        }
    }
    let mut s = State {
        order: vec![UNSEEN; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        reached: 0,
        path: Vec::new(),
    };
    let mut component = vec![UNSEEN; n];
    let mut count = 0;
    for root in 0..n {
        if s.order[root] != UNSEEN {
            continue;
        }
        s.enter(root);
        while let Some(&(v, followed)) = s.path.last() {
            if let Some(&e) = adjacency.out(v).get(followed) {
                if let Some(top) = s.path.last_mut() {
                    top.1 += 1;
                }
                let w = edges[e].to;
                if s.order[w] == UNSEEN {
                    s.enter(w);
                } else if s.on_stack[w] {
                    s.low[v] = s.low[v].min(s.order[w]);
                }
                continue;
            }
            s.path.pop();
            if let Some(&(parent, _)) = s.path.last() {

            }
            if s.low[v] == s.order[v] {
                loop {
                    let w = s.stack.pop().expect("v is on the stack");
                    s.on_stack[w] = false;
                    component[w] = count;
                    if w == v {
                        break;
                    }
                }
                count += 1;
            }
        }
    }
    assert!(s.stack.is_empty() && component.iter().all(|&c| c < count));
    (component, count)
}

/// Breadth-first search state, reused across searches (a node is visited in the current
/// search when its stamp is the current one, so nothing is cleared between searches).
struct Search {
    stamp: Vec<u32>,
    current: u32,
    /// The edge a node was reached by, in the current search.
    via: Vec<usize>,
    queue: VecDeque<usize>,
}

impl Search {
    fn new(n: usize) -> Self {
        Search {
            stamp: vec![0; n],
            current: 0,
            via: vec![usize::MAX; n],
            queue: VecDeque::new(),
        }
    }

    /// The edges of a shortest path from `source` to `target` through nodes `inside`
    /// accepts; there must be one.
    fn shortest_path(
        &mut self,
        source: usize,
        target: usize,
        edges: &[RawEdge],
        adjacency: &Adjacency,
        inside: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        assert_ne!(source, target);
        self.current = self.current.checked_add(1).expect("fewer than 2^32 searches");
        self.queue.clear();
        self.stamp[source] = self.current;
        self.queue.push_back(source);
        'search: while let Some(v) = self.queue.pop_front() {
            for &e in adjacency.out(v) {
                let w = edges[e].to;
                if self.stamp[w] != self.current && inside(w) {
                    self.stamp[w] = self.current;
                    self.via[w] = e;
                    if w == target {
                        break 'search;
                    }
                    self.queue.push_back(w);
                }
            }
        }
        assert_eq!(self.stamp[target], self.current, "no path inside a component");
        let mut path = Vec::new();
        let mut at = target;
        while at != source {
            let e = self.via[at];
            path.push(e);
            at = edges[e].from;
        }
        path.reverse();
        path
    }
}

fn key_text(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

fn version_text(version: Option<u64>) -> String {
    version.map_or("initial".to_string(), |v| v.to_string())
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dependency::Write => "ww",
            Dependency::Read => "wr",
            Dependency::Anti => "rw",
        })
    }
}

/// Writes a cycle as `T1 -ww "x"@2-> T2 -rw "y"@3-> T1`.
fn write_cycle(f: &mut fmt::Formatter<'_>, cycle: &[Edge]) -> fmt::Result {
    for e in cycle {
        write!(f, "T{} -{} {}@{}-> ", e.from, e.dependency, key_text(&e.key), e.version)?;
    }
    match cycle.first() {
        Some(e) => write!(f, "T{}", e.from),
        None => Ok(()),
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::GarbageRead { reader, key, version } => write!(
                f,
                "garbage read: T{reader} read {}@{version}, which no transaction wrote",
                key_text(key)
            ),
            Anomaly::DuplicateVersion { key, version, writers } => write!(
                f,
                "duplicate version: T{} and T{} were both given {}@{version}",
                writers[0],
                writers[1],
                key_text(key)
            ),
            Anomaly::Internal { txn, key, wrote, read } => write!(
                f,
                "internal: T{txn} wrote {}@{wrote}, then read it back as {}",
                key_text(key),
                version_text(*read)
            ),
            Anomaly::G0 { cycle } => {
                f.write_str("G0 (write cycle): ")?;
                write_cycle(f, cycle)
            }
            Anomaly::G1a { reader, writer, key, version } => write!(
                f,
                "G1a (aborted read): T{reader} read {}@{version}, written by T{writer}, which aborted",
                key_text(key)
            ),
            Anomaly::G1b { reader, writer, key, version } => write!(
                f,
                "G1b (intermediate read): T{reader} read {}@{version}, which T{writer} overwrote",
                key_text(key)
            ),
            Anomaly::G1c { cycle } => {
                f.write_str("G1c (circular information flow): ")?;
                write_cycle(f, cycle)
            }
            Anomaly::G2 { cycle } => {
                f.write_str("G2 (anti-dependency cycle): ")?;
                write_cycle(f, cycle)
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.strongest_level() {
            Some(level) => writeln!(f, "checked at {:?}; satisfies {level:?}", self.level)?,
            None => writeln!(f, "checked at {:?}; satisfies no level", self.level)?,
        }
        for anomaly in &self.anomalies {
            writeln!(f, "  {anomaly}")?;
        }
        Ok(())
    }
}
