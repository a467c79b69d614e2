//! A cluster of real kvsd processes on loopback for the cluster tests, and concurrent
//! clients that record what they saw for the linearizability checker.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{free_ports, Server};
use kvs_lincheck::{Event, Op, Outcome};
use kvs_wire::{Client, ClientError, ClientOptions, ErrorCode};

/// A cluster of kvsd processes, each with its own data directory under one scratch dir.
pub struct Cluster {
    pub nodes: Vec<Option<Server>>,
    pub addrs: Vec<String>,
    pub resp_addrs: Vec<String>,
    pub peer_addrs: Vec<String>,
    pub dir: tempfile::TempDir,
    pub shards: u32,
    /// Flags every node gets.
    pub extra: Vec<String>,
}

impl Cluster {
    pub fn start(size: usize, shards: u32) -> Cluster {
        Cluster::start_on(size, shards, false)
    }

    /// Like `start`; with `own_peer_ips`, node i's peer address is on 127.0.1.(i + 1), so
    /// that firewall rules on addresses can cut the links between two nodes while their
    /// clients (on 127.0.0.1) still reach them.
    pub fn start_on(size: usize, shards: u32, own_peer_ips: bool) -> Cluster {
        Cluster::start_with(size, shards, own_peer_ips, &[])
    }

    /// Like `start_on`, with more flags for every node (kept for restarts).
    pub fn start_with(size: usize, shards: u32, own_peer_ips: bool, extra: &[&str]) -> Cluster {
        let ports: Vec<u16> = free_ports::<15>().to_vec();
        let addr = |i: usize| {
            if own_peer_ips && i >= 10 {
                format!("127.0.1.{}:{}", i - 9, ports[i])
            } else {
                format!("127.0.0.1:{}", ports[i])
            }
        };
        let mut cluster = Cluster {
            nodes: Vec::new(),
            addrs: (0..size).map(addr).collect(),
            resp_addrs: (0..size).map(|i| addr(5 + i)).collect(),
            peer_addrs: (0..size).map(|i| addr(10 + i)).collect(),
            dir: tempfile::tempdir().unwrap(),
            shards,
            extra: extra.iter().map(|f| f.to_string()).collect(),
        };
        for i in 0..size {
            let server = cluster.spawn(i, &[]);
            cluster.nodes.push(Some(server));
        }
        for node in cluster.nodes.iter().flatten() {
            node.wait_ready();
        }
        cluster
    }

    pub fn members(&self) -> String {
        self.peer_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}", i + 1))
    }

    /// Starts node `i` (0-based; its id is i + 1) with the cluster's flags and `extra`.
    pub fn spawn(&self, i: usize, extra: &[&str]) -> Server {
        let id = (i + 1).to_string();
        let members = self.members();
        let mut flags = vec![
            "--node-id",
            &id,
            "--peer-listen",
            &self.peer_addrs[i],
            "--resp-listen",
            &self.resp_addrs[i],
            "--initial-cluster",
            &members,
        ];
        flags.extend(self.extra.iter().map(String::as_str));
        flags.extend_from_slice(extra);
        Server::spawn_with(&self.data_dir(i), self.shards, &self.addrs[i], &flags)
    }

    pub fn restart(&mut self, i: usize) {
        let server = self.spawn(i, &[]);
        server.wait_ready();
        self.nodes[i] = Some(server);
    }

    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].take().expect("the node runs").kill9();
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the running nodes `nodes` (indexes).
    pub fn signal(&self, nodes: &[usize], signal: &str) {
        for &i in nodes {
            let pid = self.nodes[i]
                .as_ref()
                .expect("the node runs")
                .pid()
                .to_string();
            let status = std::process::Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap();
            assert!(status.success(), "kill {signal} {pid}");
        }
    }

    /// Each shard's leader as node `i` sees it, with its INFO.
    pub fn shards_seen_by(&self, i: usize) -> Option<Vec<serde_json::Value>> {
        let client = Client::connect(&self.addrs[i]).ok()?;
        let info: serde_json::Value = serde_json::from_str(&client.info().ok()?).ok()?;
        Some(info["shard"].as_array()?.clone())
    }

    /// Waits until every shard is led by its preferred node (shard i by node (i mod n) + 1,
    /// where leadership moves once elections settle).
    pub fn wait_for_preferred_leaders(&self) {
        let size = self.addrs.len() as u64;
        let preferred: Vec<u64> = (0..u64::from(self.shards)).map(|s| s % size + 1).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders = self.wait_for_leaders();
            if leaders == preferred {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "leaders did not move to their preferred nodes: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until node `i` has applied what each shard's leader has committed (it caught up
    /// after a restart or a partition).
    pub fn wait_caught_up(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leaders = self.wait_for_leaders();
            let leader_commit: Vec<u64> = (0..self.shards as usize)
                .map(|s| {
                    let shards = self.shards_seen_by(leaders[s] as usize - 1).unwrap();
                    shards[s]["commit_index"].as_u64().unwrap()
                })
                .collect();
            let applied: Vec<u64> = self
                .shards_seen_by(i)
                .unwrap()
                .iter()
                .map(|s| s["applied_index"].as_u64().unwrap())
                .collect();
            if applied.iter().zip(&leader_commit).all(|(a, c)| a >= c) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not catch up: applied {applied:?}, leaders' commit {leader_commit:?}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running node knows a leader for every shard, and they agree;
    /// returns the leaders by shard.
    pub fn wait_for_leaders(&self) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut agreed: Option<Vec<u64>> = None;
            let mut ok = true;
            for i in (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()) {
                let leaders: Option<Vec<u64>> = self.shards_seen_by(i).and_then(|shards| {
                    shards
                        .iter()
                        .map(|s| s["cluster"]["leader"].as_u64())
                        .collect()
                });
                match (leaders, &agreed) {
                    (Some(l), None) => agreed = Some(l),
                    (Some(l), Some(a)) if &l == a => {}
                    _ => ok = false,
                }
            }
            if ok {
                if let Some(leaders) = agreed {
                    return leaders;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the nodes did not agree on leaders:\n{}",
                self.views()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Cluster {
    /// What each running node sees of each shard (leader, term, indexes, replicas) and the
    /// end of its log, for a failure message.
    pub fn views(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            out += &format!("node {}:\n", i + 1);
            let shards = self.shards_seen_by(i);
            if shards.is_none() {
                out += "  (INFO unanswered)\n";
            }
            for mut shard in shards.unwrap_or_default() {
                if let Some(cluster) = shard["cluster"].as_object_mut() {
                    let nodes: Vec<String> = cluster["nodes"]
                        .as_array()
                        .map(|nodes| {
                            nodes
                                .iter()
                                .map(|n| {
                                    format!(
                                        "{} reachable {} heard {}ms ago",
                                        n["id"], n["reachable"], n["last_heard_ms"]
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    cluster["nodes"] = nodes.join("; ").into();
                }
                out += &format!(
                    "  shard {}: term {} commit {} applied {} cluster {}\n",
                    shard["shard"],
                    shard["term"],
                    shard["commit_index"],
                    shard["applied_index"],
                    shard["cluster"]
                );
            }
            let log = node.stderr();
            let lines: Vec<&str> = log.lines().collect();
            for line in &lines[lines.len().saturating_sub(30)..] {
                out += &format!("  | {line}\n");
            }
        }
        out
    }
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Nanoseconds since the test's clock started: the time every client records.
pub fn now(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// The keys the clients work on: `k0` .. `k{KEYS - 1}`.
pub const KEYS: u64 = 4;

/// Concurrent clients against a cluster's nodes, and the history of what they saw (times on
/// the clock of `start`).
pub struct Clients {
    pub start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Event>>>,
    acknowledged: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Clients {
    /// Starts `count` clients on `addrs` (see `run_clients`).
    pub fn run(start: Instant, addrs: &[String], count: usize, timeout: Duration) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(Vec::new()));
        let acknowledged = Arc::new(AtomicU64::new(0));
        let threads = run_clients(
            addrs.to_vec(),
            count,
            start,
            Arc::clone(&stop),
            Arc::clone(&history),
            Arc::clone(&acknowledged),
            timeout,
        );
        Clients {
            start,
            stop,
            history,
            acknowledged,
            threads,
        }
    }

    /// Writes acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::SeqCst)
    }

    /// Adds an operation another client (the test itself) saw.
    pub fn record(&self, event: Event) {
        self.history.lock().unwrap().push(event);
    }

    /// Stops the clients and returns the history.
    pub fn stop(self) -> Vec<Event> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let history = self.history.lock().unwrap().clone();
        history
    }
}

/// Reads every client key through every running node into `history` (on `start`'s clock);
/// the nodes must agree. Joined to the clients' history, a lost acknowledged write fails
/// the check.
pub fn read_finals(cluster: &Cluster, start: Instant, history: &mut Vec<Event>) {
    let mut finals: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
    for (i, addr) in cluster.addrs.iter().enumerate() {
        if cluster.nodes[i].is_none() {
            continue;
        }
        let client = Client::connect(addr).unwrap();
        for k in 0..KEYS {
            let key = format!("k{k}").into_bytes();
            let invoked = now(start);
            let value = client.get(&key).unwrap_or_else(|e| {
                panic!(
                    "node {} could not read {key:?}: {e:?}\n{}",
                    i + 1,
                    cluster.views()
                )
            });
            if let Some(seen) = finals.get(&key) {
                assert_eq!(seen, &value, "nodes disagree on {key:?}");
            }
            finals.insert(key.clone(), value.clone());
            history.push(Event {
                key,
                op: Op::Get,
                outcome: Outcome::Value(value),
                invoked,
                returned: now(start),
            });
        }
    }
}

/// Panics, showing the key's operations, unless `history` is linearizable.
pub fn check_linearizable(history: &[Event]) {
    if let Err(violation) = kvs_lincheck::check(history) {
        panic!("not linearizable: {violation:?}");
    }
}

/// Runs clients against the nodes (each client on one node, moving on when it is down)
/// until `stop`; every operation they saw goes into `history`.
fn run_clients(
    addrs: Vec<String>,
    clients: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Event>>>,
    acknowledged: Arc<AtomicU64>,
    request_timeout: Duration,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (addrs, stop, history, acknowledged) = (
                addrs.clone(),
                Arc::clone(&stop),
                Arc::clone(&history),
                Arc::clone(&acknowledged),
            );
            std::thread::spawn(move || {
                let options = ClientOptions {
                    connect_timeout: Duration::from_millis(500),
                    request_timeout,
                    reconnect_backoff: Duration::from_millis(50),
                    ..ClientOptions::default()
                };
                let mut node = c % addrs.len();
                let mut client: Option<Client> = None;
                let mut seq = 0u64;
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1);
                while !stop.load(Ordering::SeqCst) {
                    let Some(conn) = client.as_ref() else {
                        match Client::connect_with(&addrs[node], options.clone()) {
                            Ok(conn) => client = Some(conn),
                            Err(_) => {
                                node = (node + 1) % addrs.len();
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                        continue;
                    };
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let key = format!("k{}", rng % KEYS).into_bytes();
                    let write = (rng >> 8).is_multiple_of(2);
                    let invoked = now(start);
                    let event = if write {
                        seq += 1;
                        let value = format!("c{c}-{seq}").into_bytes();
                        let result = conn.put(&key, &value);
                        let outcome = match &result {
                            Ok(_) => {
                                acknowledged.fetch_add(1, Ordering::SeqCst);
                                Some(Outcome::Done)
                            }
                            // Surely not done: left out of the history.
                            Err(ClientError::Server {
                                code: ErrorCode::NotLeader | ErrorCode::NoQuorum,
                                ..
                            })
                            | Err(ClientError::Connect { .. }) => None,
                            Err(_) => Some(Outcome::Unknown),
                        };
                        outcome.map(|outcome| Event {
                            key,
                            op: Op::Put(value),
                            outcome,
                            invoked,
                            returned: now(start),
                        })
                    } else {
                        match conn.get(&key) {
                            Ok(value) => Some(Event {
                                key,
                                op: Op::Get,
                                outcome: Outcome::Value(value),
                                invoked,
                                returned: now(start),
                            }),
                            Err(_) => None,
                        }
                    };
                    let failed = event.as_ref().is_none_or(|e| e.outcome == Outcome::Unknown);
                    if let Some(event) = event {
                        history.lock().unwrap().push(event);
                    }
                    if failed {
                        // The node may be down: try the next one.
                        client = None;
                        node = (node + 1) % addrs.len();
                    }
                }
            })
        })
        .collect()
}
