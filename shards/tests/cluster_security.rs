//! Authenticated links between nodes (ADR 0027, docs/security.md) with real kvsd processes:
//! a cluster over mutual TLS replicates, and a node whose certificate another authority
//! signed cannot join until it has the cluster's; a cluster with a secret replicates, and a
//! node with another secret, or a caller that speaks the peer protocol without proving the
//! secret, is kept out.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::certs::{Authority, Usage};
use common::cluster::Cluster;
use kvs_shards::cluster::codec::{decode_frame, encode_frame, PeerFrame};
use kvs_wire::Client;

/// Writes `count` keys through node 0 (forwarded to their leaders) and checks every node
/// has them once caught up.
fn writes_reach_every_node(cluster: &Cluster, prefix: &str, count: usize) {
    let client = Client::connect(&cluster.addrs[0]).unwrap();
    for i in 0..count {
        client
            .put(format!("{prefix}{i}").as_bytes(), b"replicated")
            .unwrap();
    }
    for node in 0..cluster.nodes.len() {
        cluster.wait_caught_up(node);
        let client = Client::connect(&cluster.addrs[node]).unwrap();
        for i in 0..count {
            assert_eq!(
                client.get(format!("{prefix}{i}").as_bytes()).unwrap(),
                Some(b"replicated".to_vec()),
                "node {} key {prefix}{i}",
                node + 1
            );
        }
    }
}

/// Waits until node `i`'s log says `text`.
fn wait_for_log(cluster: &Cluster, i: usize, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.nodes[i].as_ref().unwrap().stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "node {} never logged {text:?}:\n{}",
            i + 1,
            cluster.nodes[i].as_ref().unwrap().stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether node `i` knows a leader for every shard.
fn knows_leaders(cluster: &Cluster, i: usize) -> bool {
    cluster.shards_seen_by(i).is_some_and(|shards| {
        shards
            .iter()
            .all(|s| s["cluster"]["leader"].as_u64().is_some())
    })
}

/// Replaces node `i` with one started with `flags` instead of the cluster's.
fn restart_with(cluster: &mut Cluster, i: usize, flags: Vec<String>) {
    cluster.kill9(i);
    cluster.extra = flags;
    let server = cluster.spawn(i, &[]);
    cluster.nodes[i] = Some(server);
}

fn strings(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|f| f.to_string()).collect()
}

fn peer_tls_flags(cert: &(std::path::PathBuf, std::path::PathBuf), ca: &Path) -> Vec<String> {
    strings(&[
        "--peer-tls-cert",
        cert.0.to_str().unwrap(),
        "--peer-tls-key",
        cert.1.to_str().unwrap(),
        "--peer-tls-ca",
        ca.to_str().unwrap(),
    ])
}

#[test]
fn peer_links_speak_mutual_tls_and_refuse_a_certificate_of_another_authority() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "cluster-ca");
    let cert = ca.issue(dir.path(), "peer", Usage::Peer);
    let flags = peer_tls_flags(&cert, &ca.file);
    let mut cluster = Cluster::start_with(3, 2, false, &common::cluster::strs(&flags));
    cluster.wait_for_leaders();
    writes_reach_every_node(&cluster, "tls-", 200);
    // Large values and small ones at once from every node: full TLS records followed by
    // small ones on the links (what once overflowed rustls's received plaintext).
    std::thread::scope(|scope| {
        for (t, addr) in cluster.addrs.iter().enumerate() {
            scope.spawn(move || {
                let client = Client::connect(addr).unwrap();
                for i in 0..40 {
                    client
                        .put(format!("big-{t}-{i}").as_bytes(), &vec![t as u8; 100_000])
                        .unwrap();
                    for j in 0..20 {
                        client
                            .put(format!("small-{t}-{i}-{j}").as_bytes(), b"s")
                            .unwrap();
                    }
                }
            });
        }
    });
    for node in 0..3 {
        cluster.wait_caught_up(node);
    }
    let client = Client::connect(&cluster.addrs[2]).unwrap();
    assert_eq!(client.get(b"big-0-39").unwrap(), Some(vec![0; 100_000]));
    assert_eq!(client.get(b"small-1-39-19").unwrap(), Some(b"s".to_vec()));

    // Plaintext on a TLS peer listener: cut off, never welcomed.
    let mut hello = Vec::new();
    encode_frame(
        &PeerFrame::Hello {
            cluster_id: 1,
            node_id: 2,
            shard_count: 2,
            core: 0,
            client_addr: "127.0.0.1:1".into(),
            resp_addr: String::new(),
            nonce: vec![0; 16],
        },
        &mut hello,
    );
    let mut raw = TcpStream::connect(&cluster.peer_addrs[0]).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&hello).unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"KVSP"),
        "a plaintext caller got a peer frame back: {answer:?}"
    );
    wait_for_log(&cluster, 0, "the TLS handshake failed");

    // Node 3 with a certificate another authority signed: neither side takes the other.
    let stranger = Authority::new(dir.path(), "stranger-ca");
    let foreign = stranger.issue(dir.path(), "foreign", Usage::Peer);
    restart_with(&mut cluster, 2, peer_tls_flags(&foreign, &stranger.file));
    cluster.nodes[2].as_ref().unwrap().wait_ready();
    wait_for_log(&cluster, 0, "the TLS handshake failed");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !knows_leaders(&cluster, 2),
        "a node with a foreign certificate joined its groups:\n{}",
        cluster.views()
    );
    // The two others go on.
    let client = Client::connect(&cluster.addrs[0]).unwrap();
    client.put(b"while-out", b"1").unwrap();

    // With the cluster's certificate again it catches up.
    restart_with(&mut cluster, 2, flags);
    cluster.nodes[2].as_ref().unwrap().wait_ready();
    cluster.wait_caught_up(2);
    let client = Client::connect(&cluster.addrs[2]).unwrap();
    assert_eq!(client.get(b"while-out").unwrap(), Some(b"1".to_vec()));
}

/// Sends `frames` to node `i`'s peer listener as a caller claiming to be node 2, and
/// returns the welcome and whether the link was then closed on it.
fn impostor(cluster: &Cluster, i: usize, cluster_id: u64, then: &[PeerFrame]) -> (PeerFrame, bool) {
    let mut out = Vec::new();
    encode_frame(
        &PeerFrame::Hello {
            cluster_id,
            node_id: 2,
            shard_count: 1,
            core: 0,
            client_addr: "127.0.0.1:1".into(),
            resp_addr: String::new(),
            nonce: vec![5; 16],
        },
        &mut out,
    );
    let mut raw = TcpStream::connect(&cluster.peer_addrs[i]).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&out).unwrap();
    let mut buffer = Vec::new();
    let welcome = loop {
        let mut chunk = [0u8; 4096];
        let n = raw.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a welcome");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some((frame, _)) = decode_frame(&buffer).unwrap() {
            break frame;
        }
    };
    let mut out = Vec::new();
    for frame in then {
        encode_frame(frame, &mut out);
    }
    let _ = raw.write_all(&out);
    // A link that is taken stays open (the caller sends, the node reads); a refused one is
    // closed within the handshake timeout.
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = [0u8; 64];
    let closed = match raw.read(&mut rest) {
        Ok(n) => n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (welcome, closed)
}

#[test]
fn a_cluster_secret_keeps_out_nodes_and_callers_that_cannot_prove_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a secret the three nodes share\n").unwrap();
    let flags = strings(&["--cluster-secret-file", secret.to_str().unwrap()]);
    let mut cluster = Cluster::start_with(3, 1, false, &common::cluster::strs(&flags));
    cluster.wait_for_leaders();
    writes_reach_every_node(&cluster, "secret-", 100);

    // A caller that knows the cluster id and a member's id but not the secret: welcomed
    // with the node's proof (which tells it nothing of the secret), then cut off.
    let shards = cluster.shards_seen_by(0).unwrap();
    let cluster_id =
        u64::from_str_radix(shards[0]["cluster"]["cluster_id"].as_str().unwrap(), 16).unwrap();
    for then in [
        vec![PeerFrame::Raft(Vec::new())],
        vec![PeerFrame::Proof { proof: vec![0; 32] }],
    ] {
        let (welcome, closed) = impostor(&cluster, 0, cluster_id, &then);
        match welcome {
            PeerFrame::Welcome { node_id, proof, .. } => {
                assert_eq!(node_id, 1);
                assert_eq!(proof.len(), 32, "the node proves the secret");
            }
            other => panic!("expected a welcome, got {other:?}"),
        }
        assert!(
            closed,
            "a caller without the secret kept its link ({then:?})"
        );
    }
    wait_for_log(&cluster, 0, "did not prove the cluster secret");

    // Node 3 with another secret cannot join; with the cluster's it catches up.
    let other = dir.path().join("other");
    std::fs::write(&other, "another secret, not this cluster's").unwrap();
    restart_with(
        &mut cluster,
        2,
        strings(&["--cluster-secret-file", other.to_str().unwrap()]),
    );
    cluster.nodes[2].as_ref().unwrap().wait_ready();
    wait_for_log(&cluster, 0, "before its proof of the cluster secret");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !knows_leaders(&cluster, 2),
        "a node with another secret joined its groups:\n{}",
        cluster.views()
    );
    Client::connect(&cluster.addrs[0])
        .unwrap()
        .put(b"while-out", b"1")
        .unwrap();
    restart_with(&mut cluster, 2, flags);
    cluster.nodes[2].as_ref().unwrap().wait_ready();
    cluster.wait_caught_up(2);
    let client = Client::connect(&cluster.addrs[2]).unwrap();
    assert_eq!(client.get(b"while-out").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn a_peer_listener_beyond_loopback_needs_authenticated_links_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(common::kvsd_binary())
        .args([
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "1",
            "--peer-listen",
            "0.0.0.0:0",
            "--initial-cluster",
            "1=10.0.0.1:7100,2=10.0.0.2:7100,3=10.0.0.3:7100",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not authenticated") && stderr.contains("--cluster-secret-file"),
        "{stderr}"
    );
}
