//! A deterministic simulation of one shard's Raft group over three nodes: the real `Peer`
//! (raft-rs, the log, the paged store) of each node on a simulated disk of its own, joined by
//! a simulated network that delays, reorders, drops and duplicates messages and cuts a node
//! off, with power losses that tear unsynced blocks and restarts. Every seed is replayable: a
//! failure names it. 200 seeds by default, as CI runs it (about a minute);
//! `KVS_CLUSTER_SIM_SEEDS=N` runs N seeds, `KVS_CLUSTER_SIM_SEED=N` replays one. It found
//! that raft-rs 0.7 acts on a stale append rejection in probe state (see
//! `Peer::is_stale_rejection`).
//!
//! Checked on every run:
//! - election safety: at most one leader per term;
//! - state machine safety: every index is applied with the same entry on every node;
//! - once the network heals and the group catches up, every node holds the same value for
//!   every key, and a final read of each is part of the history checked below (so a lost
//!   acknowledged write fails it);
//! - the history the clients saw (writes, and reads through ReadIndex or a leader's lease)
//!   is linearizable (`kvs-lincheck`); a write whose node went down has an unknown outcome.
//!
//! A node may also be paused (as SIGSTOP does): it neither ticks nor runs nor receives
//! while the others go on, and time passes for it all the same. A leader's lease (ADR 0019)
//! is on the world's time, one tick every `TICK`: a paused leader that resumed after the
//! others elected a new one must not answer a read from its lease.
//!
//! Nodes checkpoint and trim their logs at random, and keep few entries before their
//! checkpoint, so a follower that was cut off or down is often caught up by a snapshot:
//! the leader's checkpoint, sent through the same network in chunks (the transfer may be
//! lost, or lose a chunk, and is then started again).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_lite::future::block_on;
use kvs_core::command::{BatchEncoder, Command};
use kvs_core::log::sim::{SimDisk, SimLogFile, SimRng};
use kvs_core::log::GroupWrite;
use kvs_core::store::StoreConfig;
use kvs_lincheck::{Event, Op, Outcome};
use kvs_shards::peer::{Membership, Peer};
use kvs_shards::snapshot::{name_checkpoint, SnapshotChunk, SnapshotSender};
use raft::eraftpb::{Message, MessageType};

const CONFIG: StoreConfig = StoreConfig {
    cache_pages: 64,
    hot_cache_bytes: 4 * 1024,
};
const NODES: u64 = 3;
/// Keys the clients write and read: few, so reads and writes of a key overlap often.
const KEYS: u64 = 4;
const STEPS: usize = 3000;
/// The time a tick stands for, and a leader's lease: half the shortest election timeout
/// (13 ticks, node 1's), rounded down.
const TICK: Duration = Duration::from_millis(50);
const LEASE_TICKS: u32 = 6;

struct Node {
    disk: SimDisk,
    /// None while the node is down.
    peer: Option<Peer<SimDisk>>,
    /// Group writes begun and not yet run, oldest first.
    writes: VecDeque<GroupWrite<SimLogFile>>,
    /// Proposals this node made and has not applied yet: index → (term, key, value, when
    /// the client sent it).
    proposed: HashMap<u64, (u64, Vec<u8>, Vec<u8>, u64)>,
    /// Reads asked for (ReadIndex) and not yet confirmed: context → (key, when sent).
    reads_asked: HashMap<u64, (Vec<u8>, u64)>,
    /// Reads confirmed, waiting for the store to apply their index: (index, key, sent).
    reads_confirmed: Vec<(u64, Vec<u8>, u64)>,
}

struct InFlight {
    deliver_at: u64,
    /// A snapshot's chunks travel ahead of its `MsgSnapshot`, in order, on the same link.
    chunks: Vec<SnapshotChunk>,
    message: Message,
}

struct World {
    seed: u64,
    rng: SimRng,
    nodes: Vec<Node>,
    now: u64,
    network: Vec<InFlight>,
    /// A node cut off from the others, and until when.
    isolated: Option<(u64, u64)>,
    /// A link between two nodes cut (each still reaches the third), and until when.
    link_cut: Option<(u64, u64, u64)>,
    /// A node paused, and until when.
    paused: Option<(u64, u64)>,
    /// Ticks so far: the world's time (a paused node misses its ticks, not the time).
    ticks: u64,
    /// Reads a leader answered from its lease.
    lease_reads: usize,
    /// Faults happen only while this is set (the end of a run heals and catches up).
    faults: bool,
    leaders: HashMap<u64, u64>,
    /// Every applied index: the entry's term and data.
    applied: HashMap<u64, (u64, Vec<u8>)>,
    acknowledged: Vec<(Vec<u8>, Vec<u8>)>,
    next_value: u64,
    /// What the clients saw, for the linearizability check; and its clock (one tick per
    /// event, so an answer always follows every call made before it).
    history: Vec<Event>,
    clock: u64,
    /// Snapshots installed (a follower's applied index jumped).
    snapshots: usize,
    /// Entries a leader read back from its log's segments for a follower.
    read_back: u64,
}

/// Each node's election timeout is fixed, and differs from the others' (raft-rs would draw
/// it from the thread's generator, which no seed replays).
fn membership(id: u64) -> Membership {
    let ticks = 10 + 3 * id as usize;
    Membership {
        id,
        voters: (1..=NODES).collect(),
        election_ticks: (ticks, ticks + 1),
        entries_in_memory: 4,
        read_lease: TICK * LEASE_TICKS,
    }
}

impl World {
    fn new(seed: u64) -> World {
        let nodes = (1..=NODES)
            .map(|id| {
                let disk = SimDisk::new();
                let peer = block_on(Peer::open_member(disk.clone(), 0, CONFIG, membership(id)))
                    .unwrap_or_else(|e| panic!("seed {seed}: node {id} opens: {e}"));
                Node {
                    disk,
                    peer: Some(peer),
                    writes: VecDeque::new(),
                    proposed: HashMap::new(),
                    reads_asked: HashMap::new(),
                    reads_confirmed: Vec::new(),
                }
            })
            .collect();
        World {
            seed,
            rng: SimRng::new(seed),
            nodes,
            now: 0,
            network: Vec::new(),
            isolated: None,
            link_cut: None,
            paused: None,
            ticks: 0,
            lease_reads: 0,
            faults: true,
            leaders: HashMap::new(),
            applied: HashMap::new(),
            acknowledged: Vec::new(),
            next_value: 0,
            history: Vec::new(),
            clock: 0,
            snapshots: 0,
            read_back: 0,
        }
    }

    fn time(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn is_paused(&self, id: u64) -> bool {
        matches!(self.paused, Some((node, until)) if node == id && self.now < until)
    }

    /// The time on the lease's clock.
    fn lease_now(&self) -> Duration {
        TICK * self.ticks as u32
    }

    fn cut_off(&self, a: u64, b: u64) -> bool {
        matches!(self.isolated, Some((node, until)) if self.now < until && (node == a || node == b))
            || matches!(self.link_cut, Some((x, y, until))
                if self.now < until && ((x, y) == (a, b) || (x, y) == (b, a)))
    }

    /// Begins every ready a node has room for; applies what they commit.
    fn drive(&mut self, id: u64) {
        let seed = self.seed;
        loop {
            let node = &mut self.nodes[(id - 1) as usize];
            let Some(peer) = node.peer.as_mut() else {
                return;
            };
            if peer.wants_entries() {
                let before = peer.entries_read_back();
                block_on(peer.fetch_entries())
                    .unwrap_or_else(|e| panic!("seed {seed}: node {id} reads entries back: {e}"));
                self.read_back += peer.entries_read_back() - before;
            }
            if !peer.can_begin_ready() {
                return;
            }
            let applied_before = peer.status().applied_index;
            let work = block_on(peer.begin_ready())
                .unwrap_or_else(|e| panic!("seed {seed}: node {id} begins a ready: {e}"));
            if peer.status().applied_index > applied_before {
                self.snapshots += 1;
            }
            node.writes.extend(work.write);
            for read in peer.take_read_states() {
                let context = u64::from_le_bytes(read.request_ctx[..8].try_into().unwrap());
                if let Some((key, sent)) = node.reads_asked.remove(&context) {
                    node.reads_confirmed.push((read.index, key, sent));
                }
            }
            for entry in work.committed {
                let (index, term, data) = (entry.index, entry.term, entry.data.to_vec());
                block_on(peer.apply(entry, None))
                    .unwrap_or_else(|e| panic!("seed {seed}: node {id} applies {index}: {e}"));
                if let Some((proposed_term, key, value, sent)) = node.proposed.remove(&index) {
                    // Another entry at the index: the write surely failed, and is not in the
                    // history at all.
                    if proposed_term == term {
                        self.clock += 1;
                        self.history.push(Event {
                            key: key.clone(),
                            op: Op::Put(value.clone()),
                            outcome: Outcome::Done,
                            invoked: sent,
                            returned: self.clock,
                        });
                        self.acknowledged.push((key, value));
                    }
                }
                let first = self.applied.entry(index).or_insert((term, data.clone()));
                assert_eq!(
                    *first,
                    (term, data),
                    "seed {seed}: index {index} applied with two different entries"
                );
            }
        }
    }

    /// Answers the reads whose index the node has applied, from its store.
    fn answer_reads(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        let Some(peer) = node.peer.as_ref() else {
            return;
        };
        let applied = peer.status().applied_index;
        let (ready, waiting): (Vec<_>, Vec<_>) = node
            .reads_confirmed
            .drain(..)
            .partition(|(index, _, _)| *index <= applied);
        node.reads_confirmed = waiting;
        for (_, key, sent) in ready {
            let value = block_on(peer.store().get(&key))
                .expect("a read")
                .map(|v| v.value);
            self.clock += 1;
            self.history.push(Event {
                key,
                op: Op::Get,
                outcome: Outcome::Value(value),
                invoked: sent,
                returned: self.clock,
            });
        }
    }

    /// Runs a node's oldest group write and reports it.
    fn write_one(&mut self, id: u64) {
        let seed = self.seed;
        let node = self.node(id);
        let (Some(peer), Some(write)) = (node.peer.as_mut(), node.writes.pop_front()) else {
            return;
        };
        let written = block_on(write.write());
        peer.group_written(written)
            .unwrap_or_else(|e| panic!("seed {seed}: node {id} group written: {e}"));
    }

    /// A checkpoint, and the log it covers deleted.
    fn checkpoint(&mut self, id: u64) {
        let seed = self.seed;
        let Some(peer) = self.node(id).peer.as_mut() else {
            return;
        };
        block_on(
            peer.store()
                .checkpoint(None::<fn(usize) -> std::future::Ready<()>>),
        )
        .unwrap_or_else(|e| panic!("seed {seed}: node {id} checkpoints: {e}"));
        block_on(peer.trim_log()).unwrap_or_else(|e| panic!("seed {seed}: node {id} trims: {e}"));
    }

    /// The chunks of the leader's checkpoint for a `MsgSnapshot`, which is made to name it.
    fn snapshot_chunks(&mut self, from: u64, message: &mut Message) -> Vec<SnapshotChunk> {
        let seed = self.seed;
        let peer = self
            .node(from)
            .peer
            .as_ref()
            .expect("a node that sends is up");
        let mut sender = block_on(SnapshotSender::start(peer.store()))
            .unwrap_or_else(|e| panic!("seed {seed}: node {from} reads its checkpoint: {e}"))
            .expect("raft asks for a snapshot only once there is a checkpoint");
        let (index, term) = sender.position();
        name_checkpoint(message, index, term);
        let mut chunks = Vec::new();
        while let Some(chunk) = block_on(sender.next_chunk())
            .unwrap_or_else(|e| panic!("seed {seed}: node {from} reads its checkpoint: {e}"))
        {
            chunks.push(chunk);
        }
        chunks
    }

    /// Moves each node's outgoing messages into the network.
    fn send(&mut self) {
        for i in 0..self.nodes.len() {
            if self.is_paused(i as u64 + 1) {
                continue;
            }
            let Some(peer) = self.nodes[i].peer.as_mut() else {
                continue;
            };
            for mut message in peer.take_messages() {
                let mut chunks = Vec::new();
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    chunks = self.snapshot_chunks(i as u64 + 1, &mut message);
                    if self.faults && chunks.len() > 1 && self.rng.below(4) == 0 {
                        // A chunk lost: the follower refuses the snapshot.
                        let lost = 1 + self.rng.below(chunks.len() as u64 - 1);
                        chunks.remove(lost as usize);
                    }
                }
                if self.faults && self.rng.below(20) == 0 {
                    if !chunks.is_empty() {
                        // The link broke under the transfer: the leader hears of it.
                        let to = message.to;
                        if let Some(peer) = self.nodes[i].peer.as_mut() {
                            peer.report_snapshot_failure(to);
                        }
                    }
                    continue; // dropped
                }
                let copies = if self.faults && self.rng.below(50) == 0 {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let delay = if self.faults { self.rng.below(6) } else { 1 };
                    self.network.push(InFlight {
                        deliver_at: self.now + delay,
                        chunks: chunks.clone(),
                        message: message.clone(),
                    });
                }
            }
        }
    }

    /// Delivers one message that is due to a node not paused, chosen at random (so they may
    /// overtake each other); returns whether there was one.
    fn deliver_one(&mut self) -> bool {
        let due: Vec<usize> = (0..self.network.len())
            .filter(|&i| {
                self.network[i].deliver_at <= self.now
                    && !self.is_paused(self.network[i].message.to)
            })
            .collect();
        if due.is_empty() {
            return false;
        }
        let pick = due[self.rng.below(due.len() as u64) as usize];
        let InFlight {
            message, chunks, ..
        } = self.network.swap_remove(pick);
        let (seed, to, from) = (self.seed, message.to, message.from);
        if self.cut_off(from, to) || self.node(to).peer.is_none() {
            if !chunks.is_empty() {
                // The transfer's link broke: the leader hears of it.
                if let Some(peer) = self.node(from).peer.as_mut() {
                    peer.report_snapshot_failure(to);
                }
            }
            return true;
        }
        if let Some(peer) = self.node(to).peer.as_mut() {
            let snapshot = !chunks.is_empty();
            for chunk in chunks {
                block_on(peer.receive_snapshot_chunk(from, chunk));
            }
            if snapshot {
                // The transfer went out whole: the leader reports it.
                if let Some(sender) = self.node(from).peer.as_mut() {
                    sender.report_snapshot_sent(to);
                }
            }
            let peer = self.node(to).peer.as_mut().expect("up");
            peer.step(message)
                .unwrap_or_else(|e| panic!("seed {seed}: node {to} steps a message: {e}"));
        }
        true
    }

    fn propose(&mut self, id: u64) {
        let key = format!("key-{}", self.rng.below(KEYS)).into_bytes();
        let value = format!("value-{}", self.next_value).into_bytes();
        let sent = self.time();
        let node = &mut self.nodes[(id - 1) as usize];
        let Some(peer) = node.peer.as_mut() else {
            return;
        };
        if !peer.is_leader() {
            return;
        }
        let mut batch = BatchEncoder::new();
        batch.push(&Command::Put {
            key: key.clone(),
            value: value.clone(),
        });
        if let Ok((index, term)) = peer.propose(batch.finish()) {
            node.proposed.insert(index, (term, key, value, sent));
            self.next_value += 1;
        }
    }

    /// A linearizable read of a key, asked of a leader.
    fn read(&mut self, id: u64) {
        let key = format!("key-{}", self.rng.below(KEYS)).into_bytes();
        let sent = self.time();
        let context = self.clock;
        let now = self.lease_now();
        let node = &mut self.nodes[(id - 1) as usize];
        let Some(peer) = node.peer.as_mut() else {
            return;
        };
        if !peer.is_leader() {
            return;
        }
        if let Some(index) = peer.lease_read(now) {
            // No other leader can have been elected while the lease holds.
            let term = peer.status().term;
            assert!(
                !self.leaders.keys().any(|&t| t > term),
                "seed {}: node {id} answered from its lease of term {term}, after a later \
                 term elected a leader",
                self.seed
            );
            // Answered at once when the state is current, as the shard does; else once
            // it applied the index.
            node.reads_confirmed.push((index, key, sent));
            self.lease_reads += 1;
            self.answer_reads(id);
            return;
        }
        peer.read_index(context.to_le_bytes().to_vec(), now);
        node.reads_asked.insert(context, (key, sent));
    }

    /// Writes still in flight when their node went down (or the run ended): their outcome
    /// is unknown to the client.
    fn give_up_writes(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        for (_, (_, key, value, sent)) in node.proposed.drain() {
            self.history.push(Event {
                key,
                op: Op::Put(value),
                outcome: Outcome::Unknown,
                invoked: sent,
                returned: 0,
            });
        }
        node.reads_asked.clear();
        node.reads_confirmed.clear();
    }

    /// A power loss: unsynced blocks are torn, the node's state is rebuilt from its disk.
    fn crash(&mut self, id: u64) {
        self.give_up_writes(id);
        let node = &mut self.nodes[(id - 1) as usize];
        node.peer = None;
        node.writes.clear();
        node.disk.crash(Some(&mut self.rng));
    }

    fn restart(&mut self, id: u64) {
        let seed = self.seed;
        let node = self.node(id);
        if node.peer.is_none() {
            let peer = block_on(Peer::open_member(
                node.disk.clone(),
                0,
                CONFIG,
                membership(id),
            ))
            .unwrap_or_else(|e| panic!("seed {seed}: node {id} restarts: {e}"));
            node.peer = Some(peer);
        }
    }

    fn check_leaders(&mut self) {
        for node in &self.nodes {
            let Some(peer) = node.peer.as_ref() else {
                continue;
            };
            if peer.is_leader() {
                let term = peer.status().term;
                let first = *self.leaders.entry(term).or_insert(peer.id());
                assert_eq!(
                    first,
                    peer.id(),
                    "seed {}: two leaders in term {term}",
                    self.seed
                );
            }
        }
    }

    fn step(&mut self) {
        self.now += 1;
        let id = 1 + self.rng.below(NODES);
        let paused = self.is_paused(id);
        // Ticks are rarer than the work between them: an election timeout (10 to 20 ticks)
        // spans many message round trips, as on a real network.
        match self.rng.below(1000) {
            0..=59 => {
                self.ticks += 1;
                let running: Vec<u64> = (1..=NODES).filter(|&id| !self.is_paused(id)).collect();
                for id in running {
                    if let Some(peer) = self.node(id).peer.as_mut() {
                        peer.tick();
                    }
                }
            }
            _ if paused => {}
            60..=399 => {
                self.drive(id);
                self.answer_reads(id);
            }
            400..=599 => self.write_one(id),
            // Every message due, in a random order (they may overtake each other).
            600..=849 => while self.deliver_one() {},
            850..=919 => self.propose(id),
            920..=929 => self.checkpoint(id),
            930..=989 => self.read(id),
            990..=991 if self.faults => {
                let until = self.now + 50 + self.rng.below(300);
                self.isolated = Some((id, until));
            }
            992 if self.faults && self.nodes.iter().all(|n| n.peer.is_some()) => self.crash(id),
            // A crash and an immediate restart: a follower that forgets at once whom it
            // heard from must not vote while a leader's lease it helped earn holds.
            994 if self.faults && self.nodes.iter().all(|n| n.peer.is_some()) => {
                self.crash(id);
                self.restart(id);
            }
            995 if self.faults => {
                let other = 1 + (id + self.rng.below(NODES - 1)) % NODES;
                let until = self.now + 50 + self.rng.below(300);
                self.link_cut = Some((id, other, until));
            }
            993 if self.faults && self.paused.is_none_or(|(_, until)| until <= self.now) => {
                // A leader, when there is one: longer than an election timeout, often, so
                // the others elect a new one and take writes before it resumes.
                let leader = (1..=NODES).find(|&n| {
                    self.nodes[(n - 1) as usize]
                        .peer
                        .as_ref()
                        .is_some_and(|p| p.is_leader())
                });
                let until = self.now + 300 + self.rng.below(400);
                self.paused = Some((leader.unwrap_or(id), until));
            }
            _ => self.restart(id),
        }
        self.send();
        self.check_leaders();
    }

    /// Heals everything and runs until every node has applied the same last entry.
    fn settle(&mut self) {
        self.faults = false;
        self.isolated = None;
        self.link_cut = None;
        self.paused = None;
        for id in 1..=NODES {
            self.restart(id);
        }
        for _ in 0..20_000 {
            self.now += 1;
            if self.now.is_multiple_of(5) {
                self.ticks += 1;
            }
            for id in 1..=NODES {
                if self.now.is_multiple_of(5) {
                    if let Some(peer) = self.node(id).peer.as_mut() {
                        peer.tick();
                    }
                }
                self.drive(id);
                while !self.node(id).writes.is_empty() {
                    self.write_one(id);
                }
                self.drive(id);
                self.answer_reads(id);
            }
            self.send();
            while self.deliver_one() {}
            self.check_leaders();
            // Settled: a leader, and every node has applied everything the leader holds
            // (its own term's entries included, so all earlier ones are committed).
            let leader_last = self
                .nodes
                .iter()
                .filter_map(|n| n.peer.as_ref().filter(|p| p.is_leader()))
                .map(|p| p.status().last_index)
                .next();
            let settled = leader_last.is_some_and(|last| {
                self.nodes.iter().all(|n| {
                    n.peer
                        .as_ref()
                        .is_some_and(|p| p.status().applied_index == last)
                })
            });
            if settled && self.network.is_empty() {
                return;
            }
        }
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match n.peer.as_ref() {
                Some(p) => format!("{:?} {:?}", p.status(), p.replicas()),
                None => "down".into(),
            })
            .collect();
        panic!(
            "seed {}: the group did not settle: {states:#?} ({} in flight)",
            self.seed,
            self.network.len()
        );
    }

    fn check_history(&mut self) {
        for id in 1..=NODES {
            self.give_up_writes(id);
        }
        if let Err(violation) = kvs_lincheck::check(&self.history) {
            panic!("seed {}: {violation}", self.seed);
        }
    }

    /// Every node holds the same value for every key, and that value is read once more at
    /// the end: the linearizability check then shows no acknowledged write was lost (the
    /// final read must see the last write of some valid order).
    fn check_final_state(&mut self) {
        for k in 0..KEYS {
            let key = format!("key-{k}").into_bytes();
            let values: Vec<Option<Vec<u8>>> = self
                .nodes
                .iter()
                .map(|node| {
                    let peer = node.peer.as_ref().expect("every node is up after settling");
                    block_on(peer.store().get(&key))
                        .expect("a read")
                        .map(|v| v.value)
                })
                .collect();
            assert!(
                values.iter().all(|v| *v == values[0]),
                "seed {}: the nodes disagree on {:?}: {values:?}",
                self.seed,
                String::from_utf8_lossy(&key)
            );
            let invoked = self.time();
            let returned = self.time();
            self.history.push(Event {
                key,
                op: Op::Get,
                outcome: Outcome::Value(values[0].clone()),
                invoked,
                returned,
            });
        }
    }
}

#[test]
fn a_three_node_group_keeps_every_acknowledged_write_through_faults() {
    let seeds: u64 = std::env::var("KVS_CLUSTER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let (mut acknowledged, mut reads, mut snapshots, mut read_back) = (0, 0, 0, 0);
    let mut lease_reads = 0;
    // KVS_CLUSTER_SIM_SEED=N replays seed N alone.
    let only: Option<u64> = std::env::var("KVS_CLUSTER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let seeds: Vec<u64> = match only {
        Some(seed) => vec![seed],
        None => (0..seeds).collect(),
    };
    let runs = seeds.len();
    for seed in seeds {
        let mut world = World::new(seed);
        for _ in 0..STEPS {
            world.step();
        }
        world.settle();
        world.check_final_state();
        world.check_history();
        reads += world.history.iter().filter(|e| e.op == Op::Get).count();
        acknowledged += world.acknowledged.len();
        snapshots += world.snapshots;
        read_back += world.read_back;
        lease_reads += world.lease_reads;
        assert!(
            world.leaders.len() > 1 || !world.acknowledged.is_empty(),
            "seed {seed}: nothing happened: leaders {:?}, history {}",
            world.leaders,
            world.history.len()
        );
    }
    assert!(
        acknowledged > runs * 10 && reads > runs * 5,
        "writes were acknowledged ({acknowledged}) and reads answered ({reads})"
    );
    assert!(
        runs < 10 || snapshots >= runs / 3,
        "followers were caught up by snapshots ({snapshots} in {runs} runs)"
    );
    assert!(
        runs < 10 || read_back >= runs as u64,
        "followers were sent entries read back from the leader's segments ({read_back} in \
         {runs} runs)"
    );
    assert!(
        lease_reads > 0 && lease_reads < reads,
        "leaders answered reads from their leases ({lease_reads}) and through ReadIndex \
         ({reads} reads in all)"
    );
}
