//! Real kvsd processes in a cluster on loopback: three nodes elect leaders, spread them,
//! replicate, forward requests to the leader from any node, survive kill -9 of a shard's
//! leader (writes go on after failover, the killed node catches up when it returns), and the
//! clients' history across all of it is linearizable (`kvs-lincheck`). Also: the cluster's
//! identity is kept in the data directory and a mismatched start is refused.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_ports, kvsd_binary, Server};
use kvs_lincheck::{Event, Op, Outcome};
use kvs_wire::{Client, ClientError, ClientOptions, ErrorCode};

/// A cluster of kvsd processes, each with its own data directory under one scratch dir.
struct Cluster {
    nodes: Vec<Option<Server>>,
    addrs: Vec<String>,
    resp_addrs: Vec<String>,
    peer_addrs: Vec<String>,
    dir: tempfile::TempDir,
    shards: u32,
}

impl Cluster {
    fn start(size: usize, shards: u32) -> Cluster {
        let ports: Vec<u16> = free_ports::<15>().to_vec();
        let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
        let mut cluster = Cluster {
            nodes: Vec::new(),
            addrs: (0..size).map(addr).collect(),
            resp_addrs: (0..size).map(|i| addr(5 + i)).collect(),
            peer_addrs: (0..size).map(|i| addr(10 + i)).collect(),
            dir: tempfile::tempdir().unwrap(),
            shards,
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

    fn members(&self) -> String {
        self.peer_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}", i + 1))
    }

    /// Starts node `i` (0-based; its id is i + 1) with the cluster's flags and `extra`.
    fn spawn(&self, i: usize, extra: &[&str]) -> Server {
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
        flags.extend_from_slice(extra);
        Server::spawn_with(&self.data_dir(i), self.shards, &self.addrs[i], &flags)
    }

    fn restart(&mut self, i: usize) {
        let server = self.spawn(i, &[]);
        server.wait_ready();
        self.nodes[i] = Some(server);
    }

    fn kill9(&mut self, i: usize) {
        self.nodes[i].take().expect("the node runs").kill9();
    }

    /// Each shard's leader as node `i` sees it, with its INFO.
    fn shards_seen_by(&self, i: usize) -> Option<Vec<serde_json::Value>> {
        let client = Client::connect(&self.addrs[i]).ok()?;
        let info: serde_json::Value = serde_json::from_str(&client.info().ok()?).ok()?;
        Some(info["shard"].as_array()?.clone())
    }

    /// Waits until every running node knows a leader for every shard, and they agree;
    /// returns the leaders by shard.
    fn wait_for_leaders(&self) -> Vec<u64> {
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
                "the nodes did not agree on leaders"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Nanoseconds since the test's clock started: the time every client records.
fn now(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
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
                    request_timeout: Duration::from_secs(3),
                    reconnect_backoff: Duration::from_millis(50),
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
                    let key = format!("k{}", rng % 4).into_bytes();
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

/// The walk-through's heart and the failover: writes through every node, kill -9 of a
/// shard's leader, writes continue, the node returns and catches up, and the history of it
/// all is linearizable.
#[test]
fn three_nodes_replicate_fail_over_and_stay_linearizable() {
    let mut cluster = Cluster::start(3, 2);
    let leaders = cluster.wait_for_leaders();
    // Leaders spread: shard i prefers node (i mod 3) + 1, which takes over once caught up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut leaders_now = leaders;
    while leaders_now != vec![1, 2] {
        assert!(
            Instant::now() < deadline,
            "leaders did not move to their preferred nodes: {leaders_now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        leaders_now = cluster.wait_for_leaders();
    }

    // Any node takes any request, on either protocol: forwarded to the shard's leader.
    for (i, addr) in cluster.addrs.iter().enumerate() {
        let client = Client::connect(addr).unwrap();
        for shard_key in ["a", "b", "c", "d"] {
            let value = format!("from node {}", i + 1);
            client.put(shard_key.as_bytes(), value.as_bytes()).unwrap();
            let read = Client::connect(&cluster.addrs[(i + 1) % 3]).unwrap();
            assert_eq!(
                read.get(shard_key.as_bytes()).unwrap(),
                Some(value.into_bytes())
            );
        }
    }
    let mut resp = std::net::TcpStream::connect(&cluster.resp_addrs[2]).unwrap();
    resp.write_all(
        b"*3\r\n$3\r\nSET\r\n$4\r\nuser\r\n$5\r\nalice\r\n*2\r\n$3\r\nGET\r\n$4\r\nuser\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"alice\r\n") {
        let mut chunk = [0u8; 64];
        let n = resp.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "RESP answered {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(answer, b"+OK\r\n$5\r\nalice\r\n");

    // Concurrent clients through the kill -9 of shard 0's leader and its return.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let clients = run_clients(
        cluster.addrs.clone(),
        6,
        start,
        Arc::clone(&stop),
        Arc::clone(&history),
        Arc::clone(&acknowledged),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let victim = cluster.wait_for_leaders()[0] as usize - 1;
    cluster.kill9(victim);
    let killed_at = now(start);
    let before_kill = acknowledged.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    let during = acknowledged.load(Ordering::SeqCst) - before_kill;
    cluster.restart(victim);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }
    assert!(
        before_kill > 20,
        "few writes before the kill: {before_kill}"
    );
    assert!(
        during > 20,
        "writes did not go on after the leader's kill: {during}"
    );
    let after_kill = history
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.invoked > killed_at && e.outcome == Outcome::Done)
        .count();
    assert!(after_kill > 0);

    // Every node, the restarted one included, catches up and reads the same final values;
    // those reads join the history, so a lost acknowledged write fails the check.
    let leaders = cluster.wait_for_leaders();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader_commit: Vec<u64> = (0..cluster.shards as usize)
            .map(|s| {
                let shards = cluster.shards_seen_by(leaders[s] as usize - 1).unwrap();
                shards[s]["commit_index"].as_u64().unwrap()
            })
            .collect();
        let victim_applied: Vec<u64> = cluster
            .shards_seen_by(victim)
            .unwrap()
            .iter()
            .map(|s| s["applied_index"].as_u64().unwrap())
            .collect();
        if victim_applied
            .iter()
            .zip(&leader_commit)
            .all(|(applied, commit)| applied >= commit)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted node did not catch up: applied {victim_applied:?}, leaders' commit {leader_commit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut history = history.lock().unwrap().clone();
    let mut finals: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    for addr in &cluster.addrs {
        let client = Client::connect(addr).unwrap();
        for k in 0..4 {
            let key = format!("k{k}").into_bytes();
            let invoked = now(start);
            let value = client.get(&key).unwrap();
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
    if let Err(violation) = kvs_lincheck::check(&history) {
        panic!("not linearizable: {violation:?}");
    }
}

/// A cluster's data directory keeps its identity: another --node-id is refused, another
/// --initial-cluster is ignored with a log line, and a single node's data directory does not
/// join a cluster.
#[test]
fn a_data_directory_keeps_its_cluster() {
    let mut cluster = Cluster::start(3, 1);
    cluster.wait_for_leaders();
    cluster.kill9(0);
    let dir = cluster.data_dir(0);
    let other_members = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";
    let flags = |id: &str, members: &str| -> Vec<String> {
        [
            "--node-id",
            id,
            "--peer-listen",
            &cluster.peer_addrs[0],
            "--initial-cluster",
            members,
        ]
        .map(String::from)
        .to_vec()
    };

    let wrong_id = flags("2", &cluster.members());
    let mut refused = Server::spawn_with(&dir, 1, &cluster.addrs[0], &strs(&wrong_id));
    let (status, stderr) = refused.wait_exit();
    assert!(!status.success());
    assert!(stderr.contains("belongs to node 1"), "{stderr}");

    let other = flags("1", other_members);
    let restarted = Server::spawn_with(&dir, 1, &cluster.addrs[0], &strs(&other));
    restarted.wait_ready();
    assert!(
        restarted.stderr().contains("--initial-cluster ignored"),
        "{}",
        restarted.stderr()
    );
    // It runs as the member its directory records: the cluster still has three voters.
    cluster.nodes[0] = Some(restarted);
    cluster.wait_for_leaders();

    let single = tempfile::tempdir().unwrap();
    let mut one = Server::start(single.path(), 1);
    one.terminate();
    let out = std::process::Command::new(kvsd_binary())
        .args(["--data-dir", single.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--node-id", "1"])
        .args(["--initial-cluster", other_members])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("single node's data"), "{stderr}");
}
