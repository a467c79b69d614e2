//! Real kvsd processes in a cluster on loopback: three nodes elect leaders, spread them,
//! replicate, forward requests to the leader from any node, survive kill -9 of a shard's
//! leader (writes go on after failover, the killed node catches up when it returns), and the
//! clients' history across all of it is linearizable (`kvs-lincheck`). Also: the cluster's
//! identity is kept in the data directory and a mismatched start is refused.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::cluster::{check_linearizable, now, read_finals, strs, Clients, Cluster};
use common::{kvsd_binary, Server};
use kvs_lincheck::{Event, Op, Outcome};
use kvs_wire::{Client, ClientError, ErrorCode};

/// The walk-through's heart and the failover: writes through every node, kill -9 of a
/// shard's leader, writes continue, the node returns and catches up, and the history of it
/// all is linearizable.
#[test]
fn three_nodes_replicate_fail_over_and_stay_linearizable() {
    replicate_fail_over_and_stay_linearizable(3);
}

/// The same with five nodes: a majority is three, and shard 0's leader is one of five.
#[test]
fn five_nodes_replicate_fail_over_and_stay_linearizable() {
    replicate_fail_over_and_stay_linearizable(5);
}

fn replicate_fail_over_and_stay_linearizable(size: usize) {
    let mut cluster = Cluster::start(size, 2);
    // Leaders spread: shard i prefers node (i mod n) + 1, which takes over once caught up.
    cluster.wait_for_preferred_leaders();

    // Any node takes any request, on either protocol: forwarded to the shard's leader.
    for (i, addr) in cluster.addrs.iter().enumerate() {
        let client = Client::connect(addr).unwrap();
        for shard_key in ["a", "b", "c", "d"] {
            let value = format!("from node {}", i + 1);
            client.put(shard_key.as_bytes(), value.as_bytes()).unwrap();
            let read = Client::connect(&cluster.addrs[(i + 1) % size]).unwrap();
            assert_eq!(
                read.get(shard_key.as_bytes()).unwrap(),
                Some(value.into_bytes())
            );
        }
    }
    let mut resp = std::net::TcpStream::connect(&cluster.resp_addrs[size - 1]).unwrap();
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
    let clients = Clients::run(start, &cluster.addrs, 6, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1500));
    let victim = cluster.wait_for_leaders()[0] as usize - 1;
    cluster.kill9(victim);
    let killed_at = now(start);
    let before_kill = clients.acknowledged();
    std::thread::sleep(Duration::from_secs(3));
    let during = clients.acknowledged() - before_kill;
    cluster.restart(victim);
    std::thread::sleep(Duration::from_secs(2));
    let mut history = clients.stop();
    assert!(
        before_kill > 20,
        "few writes before the kill: {before_kill}"
    );
    assert!(
        during > 20,
        "writes did not go on after the leader's kill: {during}"
    );
    let after_kill = history
        .iter()
        .filter(|e| e.invoked > killed_at && e.outcome == Outcome::Done)
        .count();
    assert!(after_kill > 0);

    // Every node, the restarted one included, catches up and reads the same final values;
    // those reads join the history, so a lost acknowledged write fails the check.
    cluster.wait_caught_up(victim);
    read_finals(&cluster, start, &mut history);
    check_linearizable(&history);
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

/// A leader paused with SIGSTOP while the others elect a new one and take writes must not
/// answer a read from its old state once it resumes: the read, sent to it while it was
/// paused, sees the write the new leader acknowledged. Clients run throughout, and the whole
/// history is checked.
#[test]
fn a_paused_leader_does_not_answer_from_its_old_state() {
    let cluster = Cluster::start(3, 1);
    let leader = cluster.wait_for_leaders()[0] as usize - 1;
    let start = Instant::now();
    let mut history = Vec::new();
    let key = b"k0".to_vec();
    let old = Client::connect(&cluster.addrs[leader]).unwrap();
    let invoked = now(start);
    old.put(&key, b"before").unwrap();
    history.push(Event {
        key: key.clone(),
        op: Op::Put(b"before".to_vec()),
        outcome: Outcome::Done,
        invoked,
        returned: now(start),
    });
    let others: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| cluster.addrs[i].clone())
        .collect();
    let clients = Clients::run(start, &others, 4, Duration::from_secs(3));

    cluster.signal(&[leader], "-STOP");
    // The others elect a leader and take a write (the client retries NO_QUORUM meanwhile).
    // A write forwarded to the paused leader before the others noticed has an unknown
    // outcome (TIMEOUT); it is sent again until one is acknowledged.
    let fresh = Client::connect(&others[0]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let invoked = now(start);
        let result = fresh.put(&key, b"after");
        let outcome = match &result {
            Ok(_) => Outcome::Done,
            Err(ClientError::Server {
                code: ErrorCode::Timeout | ErrorCode::OutcomeUnknown,
                ..
            })
            | Err(ClientError::Timeout(_)) => Outcome::Unknown,
            Err(error) => panic!("the write failed: {error}"),
        };
        clients.record(Event {
            key: key.clone(),
            op: Op::Put(b"after".to_vec()),
            outcome: outcome.clone(),
            invoked,
            returned: now(start),
        });
        if outcome == Outcome::Done {
            break;
        }
        assert!(Instant::now() < deadline, "no write was acknowledged");
    }
    // A read sent to the paused leader, which resumes with its old state in memory.
    let invoked = now(start);
    let pending = old
        .submit(&kvs_wire::Request::Get { key: key.clone() })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    cluster.signal(&[leader], "-CONT");
    let seen = match pending.wait() {
        Ok(kvs_wire::Response::Value { value, .. }) => Some(Some(value)),
        Err(ClientError::Server {
            code: ErrorCode::NotFound,
            ..
        }) => Some(None),
        // Refused (it no longer leads): nothing was read, which is allowed.
        Err(_) => None,
        Ok(other) => panic!("a GET answered {other:?}"),
    };
    if let Some(value) = seen.clone() {
        clients.record(Event {
            key: key.clone(),
            op: Op::Get,
            outcome: Outcome::Value(value),
            invoked,
            returned: now(start),
        });
    }
    // Once resumed it answers again, through the new leader.
    let again = old.get(&key).unwrap();
    assert!(again.is_some());
    std::thread::sleep(Duration::from_millis(500));
    history.extend(clients.stop());
    assert_ne!(
        seen,
        Some(Some(b"before".to_vec())),
        "the resumed leader answered from its old state"
    );
    check_linearizable(&history);
}

/// `--read-consistency stale`: a node that cannot reach a majority (the two others are
/// paused) still answers reads from its own replica, while a write there is refused with
/// NO_QUORUM (surely not done).
#[test]
fn stale_reads_are_answered_without_a_majority() {
    let cluster = Cluster::start_with(3, 1, false, &["--read-consistency", "stale"]);
    let leaders = cluster.wait_for_leaders();
    let client = Client::connect(&cluster.addrs[leaders[0] as usize - 1]).unwrap();
    client.put(b"k", b"v").unwrap();
    let alone = (leaders[0] as usize) % 3; // a node other than the leader
    let reader = Client::connect(&cluster.addrs[alone]).unwrap();
    // Replicated to every node soon after it was acknowledged.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.get(b"k").unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the follower never applied the write"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let paused: Vec<usize> = (0..3).filter(|&i| i != alone).collect();
    cluster.signal(&paused, "-STOP");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(reader.get(b"k").unwrap(), Some(b"v".to_vec()));
    let refused = reader
        .submit(&kvs_wire::Request::Put {
            key: b"k".to_vec(),
            value: b"w".to_vec(),
        })
        .unwrap()
        .wait();
    cluster.signal(&paused, "-CONT");
    assert!(
        matches!(
            refused,
            Err(ClientError::Server {
                code: ErrorCode::NoQuorum,
                ..
            })
        ),
        "a write without a majority answered {refused:?}"
    );
}

/// Given the cluster's nodes, the client sends each key straight to its shard's leader: a
/// hundred writes and reads through it are not forwarded by any node. Through one node
/// only, the same requests are forwarded whenever that node does not lead the key's shard.
#[test]
fn the_cluster_aware_client_sends_each_key_to_its_leader() {
    let cluster = Cluster::start(3, 2);
    cluster.wait_for_preferred_leaders();
    let forwarded = || -> u64 {
        (0..3)
            .map(|i| {
                cluster
                    .shards_seen_by(i)
                    .unwrap()
                    .iter()
                    .map(|s| s["cluster"]["forwarded"].as_u64().unwrap())
                    .sum::<u64>()
            })
            .sum()
    };
    let all = cluster.addrs.join(",");
    let client = Client::connect(&all).unwrap();
    let before = forwarded();
    for i in 0..100 {
        let key = format!("key{i}");
        client.put(key.as_bytes(), b"v").unwrap();
        assert_eq!(client.get(key.as_bytes()).unwrap(), Some(b"v".to_vec()));
    }
    assert_eq!(forwarded(), before, "the client's requests were forwarded");
    // Through the third node alone (it leads neither shard), every request is forwarded.
    let one = Client::connect(&cluster.addrs[2]).unwrap();
    let before = forwarded();
    for i in 0..10 {
        one.put(format!("key{i}").as_bytes(), b"w").unwrap();
    }
    assert_eq!(forwarded() - before, 10);
}

/// A follower that was down while the others checkpointed and deleted the log it needed is
/// caught up by a snapshot (the leader's checkpoint, streamed in chunks), then follows the
/// log again, survives kill -9 after the install, and holds every acknowledged write: read
/// from it alone, with stale reads, once the others are paused.
#[test]
fn a_follower_gone_long_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start_with(
        3,
        1,
        false,
        &["--read-consistency", "stale", "--checkpoint-interval", "1"],
    );
    cluster.wait_for_preferred_leaders(); // shard 0 on node 1: node 3 follows
    cluster.kill9(2);
    let value = |i: usize| format!("value-{i}-{}", "x".repeat(200)).into_bytes();
    let put_all = |cluster: &Cluster, keys: std::ops::Range<usize>| {
        let client = Client::connect(&cluster.addrs[0]).unwrap();
        for i in keys {
            client.put(format!("k{i}").as_bytes(), &value(i)).unwrap();
        }
    };
    put_all(&cluster, 0..2000);
    // Checkpoints (every second) delete the log; restarted, the others keep in memory only
    // the entries after their checkpoints, so node 3 cannot be sent what it missed.
    std::thread::sleep(Duration::from_millis(2500));
    for i in [0, 1] {
        cluster.kill9(i);
        cluster.restart(i);
    }
    cluster.wait_for_leaders();
    cluster.restart(2);
    cluster.wait_caught_up(2);
    let installed = |cluster: &Cluster| -> u64 {
        cluster.shards_seen_by(2).unwrap()[0]["cluster"]["snapshots_installed"]
            .as_u64()
            .unwrap()
    };
    assert!(
        installed(&cluster) >= 1,
        "node 3 caught up without a snapshot"
    );
    // After the snapshot it follows the log, and a crash keeps what it installed.
    put_all(&cluster, 2000..2100);
    cluster.wait_caught_up(2);
    cluster.kill9(2);
    cluster.restart(2);
    cluster.wait_caught_up(2);
    cluster.signal(&[0, 1], "-STOP");
    let reader = Client::connect(&cluster.addrs[2]).unwrap();
    let missing: Vec<usize> = (0..2100)
        .filter(|&i| reader.get(format!("k{i}").as_bytes()).unwrap() != Some(value(i)))
        .collect();
    cluster.signal(&[0, 1], "-CONT");
    assert!(
        missing.is_empty(),
        "node 3 lacks {} acknowledged writes, e.g. k{}",
        missing.len(),
        missing[0]
    );
}

/// A leader whose followers stop answering (SIGSTOP) steps down (check-quorum), and a write
/// it took just before cannot commit: it answers that write TIMEOUT (outcome unknown) itself
/// once it has not led for a while, not after the client's own timeout, and not only once
/// the others return.
#[test]
fn a_leader_cut_off_answers_its_stranded_write_timeout() {
    let cluster = Cluster::start(3, 1);
    cluster.wait_for_preferred_leaders(); // shard 0 on node 1
    let options = kvs_wire::ClientOptions {
        request_timeout: Duration::from_secs(60),
        write_once: false,
        ..kvs_wire::ClientOptions::default()
    };
    let client = Client::connect_with(&cluster.addrs[0], options).unwrap();
    client.ping().unwrap();
    cluster.signal(&[1, 2], "-STOP");
    let answer = client
        .submit(&kvs_wire::Request::Put {
            key: b"stranded".to_vec(),
            value: b"v".to_vec(),
        })
        .and_then(|pending| pending.wait());
    cluster.signal(&[1, 2], "-CONT");
    assert!(
        matches!(
            answer,
            Err(ClientError::Server {
                code: ErrorCode::Timeout,
                ..
            })
        ),
        "the stranded write was answered {answer:?}"
    );
}

/// A follower that missed more entries than the leader keeps in memory (1024 behind its
/// applied index), but not so many that a checkpoint passed them, is sent the entries read
/// back from the leader's log segments: no snapshot, and nothing missing.
#[test]
fn a_follower_briefly_gone_is_sent_entries_read_back_from_the_leaders_log() {
    let mut cluster = Cluster::start_with(3, 1, false, &["--checkpoint-interval", "3600"]);
    cluster.wait_for_preferred_leaders(); // shard 0 on node 1: node 3 follows
    cluster.kill9(2);
    let value = |i: usize| format!("value-{i}-{}", "y".repeat(300)).into_bytes();
    let client = Client::connect(&cluster.addrs[0]).unwrap();
    for i in 0..3000 {
        client.put(format!("k{i}").as_bytes(), &value(i)).unwrap();
    }
    cluster.restart(2);
    cluster.wait_caught_up(2);
    let cluster_info = |i: usize| cluster.shards_seen_by(i).unwrap()[0]["cluster"].clone();
    let read_back = cluster_info(0)["entries_read_back"].as_u64().unwrap();
    assert!(
        read_back >= 1000,
        "the leader read back {read_back} entries for node 3"
    );
    assert_eq!(cluster_info(2)["snapshots_installed"].as_u64(), Some(0));
    let reader = Client::connect(&cluster.addrs[2]).unwrap();
    let missing: Vec<usize> = (0..3000)
        .filter(|&i| reader.get_stale(format!("k{i}").as_bytes()).unwrap() != Some(value(i)))
        .collect();
    assert!(
        missing.is_empty(),
        "node 3 lacks {} acknowledged writes, e.g. k{}",
        missing.len(),
        missing[0]
    );
}

/// `kvs cluster transfer-leader SHARD NODE` moves a shard's leadership by hand, and it
/// stays: placement does not move it back, and the preference (kept in the shard's
/// replicated state) outlives the new leader's restart. A node or shard that is not one is
/// refused with a clear error.
#[test]
fn kvs_cluster_transfer_leader_moves_a_shard_for_good() {
    let mut cluster = Cluster::start(3, 2);
    cluster.wait_for_preferred_leaders(); // shard 0 on node 1, shard 1 on node 2
    let addrs = cluster.addrs.join(",");
    let kvs = |args: &[&str]| {
        let out = std::process::Command::new(common::kvs_binary())
            .arg("--addr")
            .arg(&addrs)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = kvs(&["cluster", "transfer-leader", "0", "3"]);
    assert!(ok, "transfer-leader failed: {stderr}");
    assert_eq!(stdout.trim(), "OK");
    assert_eq!(cluster.wait_for_leaders(), vec![3, 2]);
    // Placement runs every 2 s: the hand-made choice is the preference now.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cluster.wait_for_leaders(), vec![3, 2]);
    cluster.kill9(2);
    cluster.restart(2);
    cluster.wait_caught_up(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.wait_for_leaders() != vec![3, 2] {
        assert!(
            Instant::now() < deadline,
            "leadership did not go back to node 3 after its restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, _, stderr) = kvs(&["cluster", "transfer-leader", "0", "9"]);
    assert!(!ok && stderr.contains("node 9 is not a member"), "{stderr}");
    let (ok, _, stderr) = kvs(&["cluster", "transfer-leader", "7", "1"]);
    assert!(!ok && stderr.contains("no shard 7"), "{stderr}");
}

/// A stale read asked per request (`get --stale`, `Client::get_stale`) is answered by the
/// node asked from its own replica, on a node that otherwise reads through the leader:
/// while the other two are paused, a linearizable read there fails with NO_QUORUM and a
/// stale one answers.
#[test]
fn a_stale_read_per_request_needs_no_majority() {
    let cluster = Cluster::start(3, 1);
    let leaders = cluster.wait_for_leaders();
    let client = Client::connect(&cluster.addrs[leaders[0] as usize - 1]).unwrap();
    client.put(b"k", b"v").unwrap();
    let alone = (leaders[0] as usize) % 3; // a follower
    let reader = Client::connect(&cluster.addrs[alone]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.get_stale(b"k").unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the follower never applied the write"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let paused: Vec<usize> = (0..3).filter(|&i| i != alone).collect();
    cluster.signal(&paused, "-STOP");
    std::thread::sleep(Duration::from_secs(2));
    let stale = reader.get_stale(b"k");
    let cli = std::process::Command::new(common::kvs_binary())
        .args(["--addr", &cluster.addrs[alone], "get", "--stale", "k"])
        .output()
        .unwrap();
    let linearizable = reader
        .submit(&kvs_wire::Request::Get { key: b"k".to_vec() })
        .unwrap()
        .wait();
    cluster.signal(&paused, "-CONT");
    assert_eq!(stale.unwrap(), Some(b"v".to_vec()));
    assert_eq!(String::from_utf8_lossy(&cli.stdout).trim(), "v");
    assert!(
        matches!(
            linearizable,
            Err(ClientError::Server {
                code: ErrorCode::NoQuorum,
                ..
            })
        ),
        "a linearizable read without a majority answered {linearizable:?}"
    );
}

/// Leader leases (ADR 0019): reads sent to the leader are answered from its lease once a
/// quorum confirmed it (counted in INFO), and with `--read-lease off` every read asks the
/// quorum; both answer what was written.
#[test]
fn reads_use_the_leader_lease_unless_it_is_off() {
    for (flags, leased) in [(&[][..], true), (&["--read-lease", "off"][..], false)] {
        let cluster = Cluster::start_with(3, 1, false, flags);
        let leader = cluster.wait_for_leaders()[0] as usize - 1;
        let client = Client::connect(&cluster.addrs[leader]).unwrap();
        client.put(b"k", b"v").unwrap();
        for _ in 0..200 {
            assert_eq!(client.get(b"k").unwrap(), Some(b"v".to_vec()));
        }
        let by_lease = cluster.shards_seen_by(leader).unwrap()[0]["cluster"]["reads_by_lease"]
            .as_u64()
            .unwrap();
        if leased {
            assert!(by_lease > 100, "{by_lease} of 200 reads used the lease");
        } else {
            assert_eq!(by_lease, 0, "a lease was used with --read-lease off");
        }
    }
}
