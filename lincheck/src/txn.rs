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

use std::fmt;

mod cycles;
mod graph;

use graph::{Graph, Index, RawEdge};

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
            Anomaly::G1a { .. } | Anomaly::G1b { .. } | Anomaly::G1c { .. } => Level::ReadCommitted,
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
        let Some(weakest) = self.anomalies.iter().map(Anomaly::forbidden_from).min() else {
            return Some(self.level);
        };
        match weakest {
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
        self.strongest_level()
            .is_some_and(|strongest| strongest >= level)
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
    let included = graph::included(history, &index);
    let mut graph = Graph::new(history, &index, &included);
    let mut anomalies = index.duplicates;
    let found = std::mem::take(&mut graph.anomalies);
    anomalies.extend(found.into_iter().filter(|a| a.forbidden_from() <= level));

    let edge = |e: &RawEdge| Edge {
        from: graph.ids[e.from],
        to: graph.ids[e.to],
        dependency: e.dependency,
        key: index.keys[e.key].to_vec(),
        version: e.version,
    };
    let ends: Vec<(usize, usize)> = graph.edges.iter().map(|e| (e.from, e.to)).collect();
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
        let found = cycles::cycles(
            graph.ids.len(),
            &ends,
            |e| allowed.contains(&graph.edges[e].dependency),
            |e| graph.edges[e].dependency == required,
        );
        for cycle in found {
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
        write!(
            f,
            "T{} -{} {}@{}-> ",
            e.from,
            e.dependency,
            key_text(&e.key),
            e.version
        )?;
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
