//! The paged store against real kvsd processes: data far larger than `--cache-size`
//! survives kill -9 and SIGTERM, scans stay ordered, large values round-trip, and
//! `kvsd --verify` finds the page files clean (and reports a damaged one).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{verify_data_dir, Server};
use kvs_wire::{Request, Response};

/// A value derivable from its key's number, so any key can be checked alone.
fn value_for(n: u64) -> Vec<u8> {
    format!("{n:016x}").repeat(64).into_bytes() // 1 KiB
}

fn key_for(n: u64) -> Vec<u8> {
    format!("key-{n:08}").into_bytes()
}

/// Loads 1 KiB values in pipelined windows until stopped; records what was acknowledged.
fn load(addr: String, from: u64, acked: Arc<Mutex<BTreeMap<u64, ()>>>, stop: Arc<AtomicBool>) {
    let client = kvs_wire::Client::connect(&addr).unwrap();
    let mut next = from;
    while !stop.load(Ordering::SeqCst) {
        // Spread keys over the key space, so inserts land all over the tree.
        let numbers: Vec<u64> = (next..next + 256).map(|i| (i * 7919) % 1_000_003).collect();
        next += 256;
        let requests: Vec<Request> = numbers
            .iter()
            .map(|&n| Request::Put {
                key: key_for(n),
                value: value_for(n),
            })
            .collect();
        let Ok(pendings) = client.submit_many(&requests) else {
            return;
        };
        for (n, pending) in numbers.into_iter().zip(pendings) {
            match pending.wait() {
                Ok(Response::Written { .. }) => {
                    acked.lock().unwrap().insert(n, ());
                }
                Ok(other) => panic!("unexpected reply {other:?}"),
                Err(_) => return,
            }
        }
    }
}

fn check_all(server: &Server, acked: &BTreeMap<u64, ()>) {
    let client = server.client();
    let numbers: Vec<u64> = acked.keys().copied().collect();
    for chunk in numbers.chunks(500) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|&n| key_for(n)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let values = client.mget(&refs).unwrap();
        for (&n, value) in chunk.iter().zip(values) {
            assert_eq!(value.map(|(_, v)| v), Some(value_for(n)), "key {n}");
        }
    }
}

#[test]
fn data_far_larger_than_the_cache_survives_kill9_and_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB of cache for the node; the load writes tens of MiB.
    let flags = ["--cache-size", "2MiB", "--checkpoint-interval", "1"];
    let mut server = Server::start_with(dir.path(), 2, &flags);
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..2)
        .map(|i| {
            let (addr, acked, stop) = (server.addr.clone(), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || load(addr, i * 10_000_000, acked, stop))
        })
        .collect();
    // Until well past the cache, then kill -9 in the middle of the stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 30_000 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill9();
    for loader in loaders {
        loader.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 20_000,
        "only {} puts acknowledged",
        acked.len()
    );
    let pages: u64 = (0..2)
        .map(|s| {
            std::fs::metadata(dir.path().join(format!("shard-{s:03}/pages.db")))
                .map_or(0, |m| m.len())
        })
        .sum();
    assert!(
        pages > 10 * 2 * 1024 * 1024,
        "page files ({pages} bytes) are far larger than the cache"
    );

    let mut server = Server::start_with(dir.path(), 2, &flags);
    check_all(&server, &acked);
    // An ordered scan across both shards from the middle of the key space.
    let client = server.client();
    let start = key_for(500_000);
    let (pairs, _) = client.scan(&start, None, 200).unwrap();
    assert_eq!(pairs.len(), 200);
    // Writes in flight at the kill may be there too (durable, never acknowledged); every
    // acknowledged key in the scanned range must be.
    let numbers: Vec<u64> = pairs
        .iter()
        .map(|(k, v)| {
            let n: u64 = String::from_utf8_lossy(&k[4..]).parse().unwrap();
            assert_eq!(v, &value_for(n), "value of key {n}");
            n
        })
        .collect();
    assert!(numbers[0] >= 500_000);
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "scan is in key order"
    );
    let last = *numbers.last().unwrap();
    for (&n, _) in acked.range(500_000..=last) {
        assert!(
            numbers.contains(&n),
            "acknowledged key {n} missing from the scan"
        );
    }
    drop(client);
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr}");

    let (clean, report) = verify_data_dir(dir.path());
    assert!(clean, "verify found problems:\n{report}");
    assert!(report.contains("verify: clean"), "{report}");

    // After a clean stop, the restart has nothing to replay, and the data is all there.
    let server = Server::start_with(dir.path(), 2, &flags);
    check_all(&server, &acked);
}

#[test]
fn large_values_round_trip_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(dir.path(), 1, &["--cache-size", "1MiB"]);
    let client = server.client();
    let sizes = [0usize, 1, 1500, 4096, 100_000, 4 << 20, 16 << 20];
    for (i, &size) in sizes.iter().enumerate() {
        let value: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
        client.put(format!("big-{i}").as_bytes(), &value).unwrap();
    }
    // Overwrite one large value with a small one and another small one with a large one.
    client.put(b"big-5", b"small now").unwrap();
    client.put(b"big-1", &vec![9u8; 300_000]).unwrap();
    drop(client);
    server.kill9();
    let server = Server::start_with(dir.path(), 1, &["--cache-size", "1MiB"]);
    let client = server.client();
    for (i, &size) in sizes.iter().enumerate() {
        let got = client.get(format!("big-{i}").as_bytes()).unwrap();
        let expected: Vec<u8> = match i {
            5 => b"small now".to_vec(),
            1 => vec![9u8; 300_000],
            _ => (0..size).map(|b| (b * 31 + i) as u8).collect(),
        };
        assert_eq!(got.map(|v| v.len()), Some(expected.len()), "value {i}");
        assert_eq!(
            client.get(format!("big-{i}").as_bytes()).unwrap(),
            Some(expected)
        );
    }
}

#[test]
fn verify_reports_a_damaged_page_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 1);
    let client = server.client();
    for chunk in 0..20u64 {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = (chunk * 100..chunk * 100 + 100)
            .map(|n| (key_for(n), value_for(n)))
            .collect();
        let refs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        client.mput(&refs).unwrap();
    }
    drop(client);
    let (status, _) = server.terminate();
    assert!(status.success());
    assert!(verify_data_dir(dir.path()).0);
    // Flip a byte in every tree page after the meta pages: the checker must say which.
    let path = dir.path().join("shard-000/pages.db");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * 4096 + 200] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let (clean, report) = verify_data_dir(dir.path());
    assert!(!clean, "{report}");
    assert!(report.contains("PROBLEM"), "{report}");
}
