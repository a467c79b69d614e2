//! Crash and shutdown tests against real kvsd processes: every acknowledged write survives
//! kill -9 and SIGTERM; torn tails are cut, corruption is refused by name.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use kvs_wire::{Client, Request, Response};

type Acked = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// Streams pipelined puts (windows of 256) until the connection breaks or `stop` is set;
/// records every acknowledged pair.
fn write_stream(addr: String, writer: usize, acked: Acked, stop: Arc<AtomicBool>) {
    let client = Client::connect(&addr).unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let requests: Vec<Request> = (0..256)
            .map(|n| Request::Put {
                key: format!("w{writer}-{:08}", i + n).into_bytes(),
                value: format!("value-{writer}-{}-{}", i + n, "x".repeat((n % 50) as usize))
                    .into_bytes(),
            })
            .collect();
        i += 256;
        let Ok(pendings) = client.submit_many(&requests) else {
            return;
        };
        for (request, pending) in requests.into_iter().zip(pendings) {
            match pending.wait() {
                Ok(Response::Written { .. }) => {
                    let Request::Put { key, value } = request else {
                        unreachable!()
                    };
                    acked.lock().unwrap().insert(key, value);
                }
                Ok(other) => panic!("unexpected reply {other:?}"),
                Err(_) => return,
            }
        }
    }
}

fn verify_all(server: &Server, acked: &Acked) {
    let client = server.client();
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty());
    let keys: Vec<&Vec<u8>> = acked.keys().collect();
    for chunk in keys.chunks(1000) {
        let keys: Vec<&[u8]> = chunk.iter().map(|k| k.as_slice()).collect();
        let values = client.mget(&keys).unwrap();
        for (key, value) in keys.iter().zip(values) {
            let got = value.map(|(_, v)| v);
            assert_eq!(
                got.as_ref(),
                acked.get(*key),
                "key {}",
                String::from_utf8_lossy(key)
            );
        }
    }
}

/// Starts `count` writer threads streaming pipelined puts at `server`.
fn start_writers(
    server: &Server,
    count: usize,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..count)
        .map(|w| {
            let (addr, acked, stop) = (server.addr.clone(), Arc::clone(acked), Arc::clone(stop));
            std::thread::spawn(move || write_stream(addr, w, acked, stop))
        })
        .collect()
}

fn kill9_during_pipelined_writes(shards: u32) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), shards);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&server, 3, &acked, &stop);
    std::thread::sleep(Duration::from_millis(700));
    server.kill9();
    for writer in writers {
        writer.join().unwrap();
    }
    let count = acked.lock().unwrap().len();
    assert!(
        count > 1000,
        "only {count} writes acknowledged before the kill"
    );
    let server = Server::start(dir.path(), shards);
    verify_all(&server, &acked);
}

#[test]
fn kill9_during_pipelined_writes_loses_nothing_one_shard() {
    kill9_during_pipelined_writes(1);
}

#[test]
fn kill9_during_pipelined_writes_loses_nothing_two_shards() {
    kill9_during_pipelined_writes(2);
}

#[test]
fn sigterm_finishes_in_flight_work_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 2);
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&server, 2, &acked, &stop);
    std::thread::sleep(Duration::from_millis(500));
    let (status, stderr) = server.terminate();
    assert!(
        status.success(),
        "kvsd exited with {status} after SIGTERM: {stderr}"
    );
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.join().unwrap();
    }
    let server = Server::start(dir.path(), 2);
    verify_all(&server, &acked);
}

#[test]
fn torn_tail_is_cut_and_the_rest_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 1);
    let client = server.client();
    for i in 0..50 {
        client.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    drop(client);
    assert!(server.terminate().0.success());
    // A crash in the middle of writing a group: where the next group would go (the first
    // all-zero block of the preallocated segment) lies a header promising more than is there.
    let segment = common::segment_files(&dir.path().join("shard-000"))
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = (4096..bytes.len())
        .step_by(4096)
        .find(|&at| bytes[at..at + 32].iter().all(|&b| b == 0))
        .unwrap();
    bytes[end..end + 4].copy_from_slice(b"KVSG");
    bytes[end + 100..end + 200].fill(0x5A);
    bytes[end + 4096 + 7] = 0x33; // and a stray block after it
    std::fs::write(&segment, &bytes).unwrap();
    let server = Server::start(dir.path(), 1);
    let client = server.client();
    for i in 0..50 {
        assert_eq!(
            client.get(format!("k{i}").as_bytes()).unwrap().as_deref(),
            Some(&b"v"[..])
        );
    }
    client.put(b"after", b"tear").unwrap();
    assert_eq!(client.get(b"after").unwrap().as_deref(), Some(&b"tear"[..]));
}

#[test]
fn corruption_before_the_tail_stops_startup_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 1);
    let client = server.client();
    for i in 0..20 {
        client
            .put(format!("k{i}").as_bytes(), b"some value")
            .unwrap();
    }
    drop(client);
    assert!(server.terminate().0.success());
    let segment = common::segment_files(&dir.path().join("shard-000"))
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[4096 + 50] ^= 0xFF; // inside the first group, with many groups after it
    std::fs::write(&segment, &bytes).unwrap();
    let mut server = Server::spawn(dir.path(), 1, &format!("127.0.0.1:{}", common::free_port()));
    let (status, stderr) = server.wait_exit();
    assert!(!status.success());
    assert!(
        stderr.contains(&segment.display().to_string()),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("offset 4096"), "stderr: {stderr}");
}

#[test]
fn the_shard_count_of_a_data_directory_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 2);
    assert!(server.terminate().0.success());
    let mut server = Server::spawn(dir.path(), 1, &format!("127.0.0.1:{}", common::free_port()));
    let (status, stderr) = server.wait_exit();
    assert!(!status.success());
    assert!(stderr.contains("created with 2 shards"), "stderr: {stderr}");
}

#[test]
fn two_servers_cannot_share_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _server = Server::start(dir.path(), 1);
    let mut second = Server::spawn(dir.path(), 1, &format!("127.0.0.1:{}", common::free_port()));
    let (status, stderr) = second.wait_exit();
    assert!(!status.success());
    assert!(
        stderr.contains("in use by another kvsd"),
        "stderr: {stderr}"
    );
}

/// A port is one kvsd's alone: another process can neither take a share of its connections
/// (by binding the port with SO_REUSEPORT, as a second kvsd on the port once could) nor start
/// a second kvsd on it. Connections that reached another process would read and write
/// another node's data.
#[test]
fn a_listening_port_belongs_to_one_process() {
    use socket2::{Domain, Protocol, Socket, Type};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();

    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_reuse_port(true).unwrap();
    let shared = socket.bind(&addr.into()).and_then(|()| socket.listen(16));
    assert!(
        shared.is_err(),
        "another socket joined kvsd's port {addr} with SO_REUSEPORT"
    );

    let other = tempfile::tempdir().unwrap();
    let mut second = Server::spawn(other.path(), 1, &server.addr);
    let (status, stderr) = second.wait_exit();
    assert!(!status.success());
    assert!(stderr.contains("cannot listen"), "stderr: {stderr}");
    server.client().ping().unwrap();
}

/// The production write path (not the simulator) syncs every commit group: the ring counts
/// the commit-group writes it saw complete with `RWF_DSYNC` (durable when they complete), and
/// there are never fewer than the groups the log wrote (and acknowledged). Remove the sync from the commit and this fails — as does the
/// log's own check, which stops the shard.
#[test]
fn every_acknowledged_commit_group_was_fdatasynced_on_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    for i in 0..300 {
        client
            .put(format!("k{i}").as_bytes(), b"durable")
            .expect("an acknowledged put");
    }
    let info: serde_json::Value = serde_json::from_str(&client.info().unwrap()).unwrap();
    let mut groups = 0;
    for shard in info["shard"].as_array().unwrap() {
        let written = shard["log_groups_written"].as_u64().unwrap();
        let synced = shard["log_synced_writes_completed"].as_u64().unwrap();
        assert!(
            synced >= written,
            "shard {}: {written} commit groups written, {synced} syncs completed on the ring",
            shard["shard"]
        );
        groups += written;
    }
    assert!(groups >= 300, "300 sequential puts took {groups} groups");
}
