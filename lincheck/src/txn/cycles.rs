//! Cycles in a directed graph: for each strongly connected component, one shortest cycle
//! through an edge of a given kind. The isolation checker runs it once per class of
//! anomaly, each time on the edges that class may use.
//!
//! A cycle exists through an edge exactly when both its ends are in one strongly connected
//! component (the component has a path back from the edge's head to its tail), so the
//! components, found by Tarjan's algorithm, say where to look, and a breadth-first search
//! inside one finds a shortest way back. Both are iterative and linear in the graph's size:
//! a component of 100,000 nodes costs no stack.

use std::collections::VecDeque;

/// For each strongly connected component of the graph made of the edges `allowed` keeps,
/// a shortest cycle through the first edge (in `edges` order) that `required` picks and
/// whose ends are both in the component. `edges` are (from, to) pairs of nodes `0..n`;
/// `required` must pick only edges `allowed` keeps. A cycle is a list of edge indices, each
/// edge's head the next one's tail, starting with the required edge.
pub(super) fn cycles(
    n: usize,
    edges: &[(usize, usize)],
    allowed: impl Fn(usize) -> bool,
    required: impl Fn(usize) -> bool,
) -> Vec<Vec<usize>> {
    let adjacency = Adjacency::new(n, edges, &allowed);
    let (component, count) = strongly_connected(n, edges, &adjacency);
    let mut reported = vec![false; count];
    let mut search = Search::new(n);
    let mut cycles = Vec::new();
    for (e, &(from, to)) in edges.iter().enumerate() {
        let c = component[from];
        if !required(e) || component[to] != c || reported[c] {
            continue;
        }
        assert!(allowed(e), "a required edge is one of the allowed");
        reported[c] = true;
        // A path back from the edge's head to its tail closes the cycle.
        let inside = |v: usize| component[v] == c;
        let mut cycle = vec![e];
        cycle.extend(search.shortest_path(to, from, edges, &adjacency, inside));
        cycles.push(cycle);
    }
    cycles
}

/// Outgoing edges per node, of the allowed edges only (compressed rows: node `v`'s edges
/// are `edges[start[v]..start[v + 1]]`, as indices into the graph's edges).
struct Adjacency {
    start: Vec<usize>,
    edges: Vec<usize>,
}

impl Adjacency {
    fn new(n: usize, edges: &[(usize, usize)], allowed: impl Fn(usize) -> bool) -> Self {
        let mut start = vec![0; n + 1];
        for (e, &(from, _)) in edges.iter().enumerate() {
            if allowed(e) {
                start[from + 1] += 1;
            }
        }
        for v in 0..n {
            start[v + 1] += start[v];
        }
        let mut fill = start.clone();
        let mut out = vec![0; start[n]];
        for (e, &(from, _)) in edges.iter().enumerate() {
            if allowed(e) {
                out[fill[from]] = e;
                fill[from] += 1;
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
fn strongly_connected(
    n: usize,
    edges: &[(usize, usize)],
    adjacency: &Adjacency,
) -> (Vec<usize>, usize) {
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
                let w = edges[e].1;
                if s.order[w] == UNSEEN {
                    s.enter(w);
                } else if s.on_stack[w] {
                    s.low[v] = s.low[v].min(s.order[w]);
                }
                continue;
            }
            s.path.pop();
            if let Some(&(parent, _)) = s.path.last() {
                s.low[parent] = s.low[parent].min(s.low[v]);
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
        edges: &[(usize, usize)],
        adjacency: &Adjacency,
        inside: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        assert_ne!(source, target);
        self.current = self
            .current
            .checked_add(1)
            .expect("fewer than 2^32 searches");
        self.queue.clear();
        self.stamp[source] = self.current;
        self.queue.push_back(source);
        'search: while let Some(v) = self.queue.pop_front() {
            for &e in adjacency.out(v) {
                let w = edges[e].1;
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
        assert_eq!(
            self.stamp[target], self.current,
            "no path inside a component"
        );
        let mut path = Vec::new();
        let mut at = target;
        while at != source {
            let e = self.via[at];
            path.push(e);
            at = edges[e].0;
        }
        path.reverse();
        path
    }
}
