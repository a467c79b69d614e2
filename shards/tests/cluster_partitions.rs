//! Network partitions of a real three-node cluster, made with iptables on loopback: each
//! node's peer links use an address of their own (127.0.1.N), and rules drop the packets
//! between two of them while clients (on 127.0.0.1) still reach every node. Checked: the
//! isolated leader's side answers NO_QUORUM (surely not done) within the request timeout,
//! the majority elects a leader and takes writes, the healed node catches up, and the
//! clients' history throughout is linearizable.
//!
//! Needs root and iptables (`.ci/run` installs it and runs these as root):
//! `cargo test -p kvs-shards --test cluster_partitions -- --ignored`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{check_linearizable, read_finals, Clients, Cluster};
use kvs_wire::{Client, ClientError, ClientOptions, ErrorCode, Request};

/// The iptables rules a test added, removed when it ends (even by a panic).
struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// Drops every packet between peer address `a` and each of `others`, both ways.
    fn cut(a: &str, others: &[&str]) -> Partition {
        let mut rules = Vec::new();
        for other in others {
            for (from, to) in [(a, *other), (*other, a)] {
                let rule: Vec<String> = ["INPUT", "-i", "lo", "-s", from, "-d", to, "-j", "DROP"]
                    .map(String::from)
                    .to_vec();
                let status = Command::new("iptables")
                    .arg("-I")
                    .args(&rule)
                    .status()
                    .expect("iptables runs (install it; run as root)");
                assert!(status.success(), "iptables -I {rule:?} failed");
                rules.push(rule);
            }
        }
        Partition { rules }
    }

    fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let _ = Command::new("iptables").arg("-D").args(&rule).status();
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

fn peer_ip(cluster: &Cluster, i: usize) -> String {
    cluster.peer_addrs[i].split(':').next().unwrap().to_string()
}

#[test]
#[ignore = "needs root and iptables: .ci/run runs it with --ignored"]
fn an_isolated_leader_steps_down_and_the_majority_goes_on() {
    let mut cluster = Cluster::start_on(3, 1, true);
    // The node cut off is the shard's preferred leader, so after the heal leadership moves
    // back to it while it catches up: the harder case for the links (ADR 0016).
    cluster.wait_for_preferred_leaders();
    let leader = cluster.wait_for_leaders()[0] as usize - 1;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let start = Instant::now();
    let clients = Clients::run(start, &cluster.addrs, 6, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(1000));

    let isolated_ip = peer_ip(&cluster, leader);
    let other_ips: Vec<String> = others.iter().map(|&i| peer_ip(&cluster, i)).collect();
    let mut partition = Partition::cut(
        &isolated_ip,
        &other_ips.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let cut_at = clients.acknowledged();
    // Past an election timeout the isolated leader has stepped down (check-quorum): a write
    // sent to it is refused as surely not done, within the request timeout.
    std::thread::sleep(Duration::from_millis(4000));
    let options = ClientOptions {
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let minority = Client::connect_with(&cluster.addrs[leader], options).unwrap();
    let asked = Instant::now();
    let answer = minority
        .submit(&Request::Put {
            key: b"k0".to_vec(),
            value: b"minority".to_vec(),
        })
        .unwrap()
        .wait();
    assert!(
        matches!(
            answer,
            Err(ClientError::Server {
                code: ErrorCode::NoQuorum,
                ..
            })
        ),
        "the isolated node answered {answer:?}"
    );
    assert!(asked.elapsed() < Duration::from_secs(5));
    // The majority took writes meanwhile.
    let during = clients.acknowledged() - cut_at;
    assert!(
        during > 10,
        "the majority took {during} writes while cut off"
    );
    let majority_leader = cluster.shards_seen_by(others[0]).unwrap()[0]["cluster"]["leader"]
        .as_u64()
        .unwrap();
    assert_ne!(majority_leader as usize - 1, leader);

    partition.heal();
    std::thread::sleep(Duration::from_secs(2));
    let mut history = clients.stop();
    cluster.wait_for_leaders();
    // Every node reads the same final values once healed (through the leader).
    read_finals(&cluster, start, &mut history);
    check_linearizable(&history);
    // The healed node caught up: it applied what the leader committed.
    cluster.wait_caught_up(leader);
    cluster.kill9(leader);
}
