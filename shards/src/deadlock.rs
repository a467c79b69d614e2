//! The node's wait-for graph between transactions (ADR 0022), shared by its shard loops: an
//! edge from a transaction waiting for a lock to each transaction it waits for. Each time a
//! wait begins or its blockers change, the shard looks for a cycle through the waiter; the
//! youngest transaction of a cycle (the largest id: ids grow with begin time) is the victim.
//! A victim waiting on the asking shard is refused at once; one waiting on another shard is
//! marked, and that shard refuses it at its next tick.
//!
//! A transaction waits on one shard at a time (its coordinator sends one lock request and
//! waits for the answer), so the graph maps each waiter to one set of blockers.
//!
//! In a cluster a cycle may run through waits on several nodes' shards (their leaders keep
//! the locks). Every [`GOSSIP_INTERVAL`] each node sends its edges to the others, and looks
//! for cycles through its own waiters in the union of everyone's recent edges
//! ([`WaitGraph::detect_across_nodes`]); such a deadlock ends within a few intervals.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long another node's edges count without being sent again (it sends them every
/// [`GOSSIP_INTERVAL`] while it has waiters).
const REMOTE_EDGES_TTL: Duration = Duration::from_secs(2);

/// How often a node of a cluster sends its edges to the others and looks for cycles through
/// everyone's.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(200);

/// Edges: each waiting transaction and the transactions it waits for.
pub type Edges = Vec<(u64, Vec<u64>)>;

#[derive(Debug, Default)]
struct Graph {
    edges: HashMap<u64, Vec<u64>>,
    victims: HashSet<u64>,
    /// Other nodes' edges, as they last sent them (a cluster), and when.
    remote: HashMap<u64, (Instant, Edges)>,
}

/// A cycle through `from` in `edges`, as the transactions on it, if there is one.
fn cycle_in(edges: &HashMap<u64, Vec<u64>>, from: u64) -> Option<Vec<u64>> {
    // Depth-first, iterative: (node, next edge to try).
    let mut path: Vec<(u64, usize)> = vec![(from, 0)];
    let mut seen = HashSet::from([from]);
    while let Some((node, next)) = path.last_mut() {
        let blockers = edges.get(node).map(Vec::as_slice).unwrap_or(&[]);
        let Some(&blocker) = blockers.get(*next) else {
            path.pop();
            continue;
        };
        *next += 1;
        if blocker == from {
            return Some(path.iter().map(|(n, _)| *n).collect());
        }
        if seen.insert(blocker) {
            path.push((blocker, 0));
        }
    }
    None
}

impl Graph {
    /// A cycle through `from` in this node's edges, if there is one.
    fn cycle_through(&self, from: u64) -> Option<Vec<u64>> {
        cycle_in(&self.edges, from)
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct WaitGraph {
    graph: Mutex<Graph>,
}

impl WaitGraph {
    pub fn new() -> WaitGraph {
        WaitGraph::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Graph> {
        // A panic elsewhere while holding it cannot leave the graph half-changed in a way
        // that matters more than losing an edge: keep going.
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `txn` begins to wait for `blockers`. Returns true when `txn` closes a cycle and is
    /// its victim (the caller refuses it with DEADLOCK); a victim elsewhere is marked.
    pub fn wait(&self, txn: u64, blockers: &[u64]) -> bool {
        let mut graph = self.lock();
        graph.edges.insert(txn, blockers.to_vec());
        Self::settle(&mut graph, txn)
    }

    /// The blockers of a waiting `txn` changed. A cycle it closes marks its victim (this
    /// transaction included), refused at its shard's next tick.
    pub fn still_waiting(&self, txn: u64, blockers: &[u64]) {
        let mut graph = self.lock();
        if graph.edges.get(&txn).map(Vec::as_slice) == Some(blockers) {
            return;
        }
        graph.edges.insert(txn, blockers.to_vec());
        if Self::settle(&mut graph, txn) {
            graph.victims.insert(txn);
        }
    }

    fn settle(graph: &mut Graph, txn: u64) -> bool {
        let Some(cycle) = graph.cycle_through(txn) else {
            return false;
        };
        let victim = *cycle.iter().max().expect("a cycle has members");
        if victim == txn {
            graph.edges.remove(&txn);
            return true;
        }
        graph.victims.insert(victim);
        false
    }

    /// `txn` no longer waits (granted, refused, rolled back).
    pub fn done_waiting(&self, txn: u64) {
        let mut graph = self.lock();
        graph.edges.remove(&txn);
        graph.victims.remove(&txn);
    }

    /// Whether `txn` was chosen as a victim; the mark is taken.
    pub fn take_victim(&self, txn: u64) -> bool {
        let mut graph = self.lock();
        if graph.victims.is_empty() {
            return false;
        }
        graph.victims.remove(&txn)
    }

    /// Waiting transactions, for tests and INFO.
    pub fn waiters(&self) -> usize {
        self.lock().edges.len()
    }

    /// This node's edges, to send to the other nodes of a cluster.
    pub fn local_edges(&self) -> Edges {
        let graph = self.lock();
        graph.edges.iter().map(|(t, b)| (*t, b.clone())).collect()
    }

    /// Node `node`'s edges, as it sent them.
    pub fn set_remote(&self, node: u64, edges: Edges) {
        self.lock().remote.insert(node, (Instant::now(), edges));
    }

    /// Looks for cycles through this node's waiters in everyone's edges (a wait on one node
    /// for a transaction that waits on another): each cycle's youngest transaction is marked
    /// as a victim, and refused by its shard's next tick if it waits here. Every node finds
    /// the same cycles from the same edges and picks the same victim, so each refuses the
    /// victims that wait on it.
    pub fn detect_across_nodes(&self) {
        let mut graph = self.lock();
        let now = Instant::now();
        graph
            .remote
            .retain(|_, (at, _)| now.duration_since(*at) < REMOTE_EDGES_TTL);
        if graph.edges.is_empty() || graph.remote.is_empty() {
            return;
        }
        let mut all = graph.edges.clone();
        for (_, edges) in graph.remote.values() {
            for (txn, blockers) in edges {
                all.entry(*txn).or_default().extend(blockers);
            }
        }
        let local: Vec<u64> = graph.edges.keys().copied().collect();
        for txn in local {
            if let Some(cycle) = cycle_in(&all, txn) {
                let victim = *cycle.iter().max().expect("a cycle has members");
                if graph.edges.contains_key(&victim) {
                    graph.victims.insert(victim);
                }
                // The victim's edges leave the search: one victim per cycle.
                all.remove(&victim);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_refuses_its_youngest_member() {
        let graph = WaitGraph::new();
        // 1 waits for 2: no cycle.
        assert!(!graph.wait(1, &[2]));
        // 2 (younger) waits for 1: a cycle, and 2 is its youngest.
        assert!(graph.wait(2, &[1]));
        assert_eq!(graph.waiters(), 1);
        assert!(!graph.take_victim(1));
    }

    #[test]
    fn a_victim_elsewhere_is_marked_for_its_shard() {
        let graph = WaitGraph::new();
        assert!(!graph.wait(9, &[3]));
        assert!(!graph.wait(3, &[5]));
        // 5 (older than 9) closes 5 -> 9 -> 3 -> 5: 9 is the victim, waiting elsewhere.
        assert!(!graph.wait(5, &[9]));
        assert!(graph.take_victim(9));
        assert!(!graph.take_victim(9), "the mark is taken once");
        graph.done_waiting(9);
        assert!(!graph.wait(7, &[3]), "no cycle once the victim left");
    }

    #[test]
    fn a_cycle_through_two_nodes_is_found_by_both_with_one_victim() {
        let (a, b) = (WaitGraph::new(), WaitGraph::new());
        // 5 waits on node A for 8; 8 waits on node B for 5.
        assert!(!a.wait(5, &[8]));
        assert!(!b.wait(8, &[5]));
        a.detect_across_nodes();
        assert!(!a.take_victim(5), "no edges from B yet");
        a.set_remote(2, b.local_edges());
        b.set_remote(1, a.local_edges());
        a.detect_across_nodes();
        b.detect_across_nodes();
        assert!(!a.take_victim(5), "the older waiter on A goes on");
        assert!(b.take_victim(8), "B refuses the younger, which waits there");
    }

    #[test]
    fn changed_blockers_can_close_a_cycle() {
        let graph = WaitGraph::new();
        assert!(!graph.wait(1, &[2]));
        assert!(!graph.wait(2, &[3]));
        graph.still_waiting(2, &[1]);
        assert!(graph.take_victim(2));
        graph.done_waiting(1);
        graph.still_waiting(2, &[4]);
        assert!(!graph.take_victim(2));
    }
}
