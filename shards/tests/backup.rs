//! Backup and restore with real processes: `kvs backup` while writers keep writing, `kvsd
//! --restore-from` into a new data directory, and every key and document compared; a backup
//! from a three-node cluster; a flipped byte and a backup killed midway, both refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{kvs, kvs_binary, kvsd_binary, Server};
use kvs_wire::Client;

/// `kvs --addr ADDR backup --to DIR`: (exit code, stderr).
fn backup(addr: &str, dir: &Path) -> (i32, String) {
    let out = Command::new(kvs_binary())
        .args(["--addr", addr, "backup", "--to", dir.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `kvs backup verify DIR`: (exit code, stdout).
fn verify(dir: &Path) -> (i32, String) {
    let out = Command::new(kvs_binary())
        .args(["backup", "verify", dir.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
    )
}

/// `kvsd --restore-from BACKUP --data-dir NEW`: (exit code, stderr).
fn restore(backup: &Path, new: &Path) -> (i32, String) {
    let out = Command::new(kvsd_binary())
        .args(["--restore-from", backup.to_str().unwrap()])
        .args(["--data-dir", new.to_str().unwrap()])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Every pair a node holds, by SCAN.
fn all_pairs(client: &Client) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut pairs = BTreeMap::new();
    let mut start = Vec::new();
    loop {
        let (page, next) = client.scan(&start, None, 1000).unwrap();
        pairs.extend(page);
        match next {
            Some(next) => start = next,
            None => return pairs,
        }
    }
}

#[test]
fn a_backup_taken_under_writes_restores_every_acknowledged_key_and_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("source"), 2);
    let client = server.client();
    for i in 0..2000 {
        client
            .put(
                format!("before{i:05}").as_bytes(),
                format!("value {i}").as_bytes(),
            )
            .unwrap();
    }
    // Values over a page, so extents are backed up too.
    client.put(b"large", &vec![7u8; 200_000]).unwrap();
    let docs: Vec<serde_json::Value> = (0..300)
        .map(|i| serde_json::json!({"_id": i, "name": format!("n{i}"), "age": i % 90}))
        .collect();
    client.insert("people", &docs).unwrap();
    client
        .create_index("people", &serde_json::json!({"age": 1}), None, false)
        .unwrap();

    // Writers go on through the whole backup; each remembers what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(BTreeMap::new()));
    let writer = {
        let (stop, written, addr) = (Arc::clone(&stop), Arc::clone(&written), server.addr.clone());
        std::thread::spawn(move || {
            let client = Client::connect(&addr).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("during{i:06}"), format!("v{i}"));
                client.put(key.as_bytes(), value.as_bytes()).unwrap();
                written
                    .lock()
                    .unwrap()
                    .insert(key.into_bytes(), value.into_bytes());
                i += 1;
            }
        })
    };
    // Until the writer has a few writes acknowledged (not a fixed wait: on a loaded machine
    // 200 ms once saw ten or fewer).
    let deadline = Instant::now() + Duration::from_secs(60);
    while written.lock().unwrap().len() <= 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let acknowledged_before: BTreeMap<Vec<u8>, Vec<u8>> = written.lock().unwrap().clone();
    let backup_dir = dir.path().join("backup");
    let (code, stderr) = backup(&server.addr, &backup_dir);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("backup: 2 shards"), "{stderr}");
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let all_written = written.lock().unwrap().clone();
    assert!(
        acknowledged_before.len() > 10,
        "the writer ran before the backup"
    );
    assert_eq!(
        verify(&backup_dir),
        (0, format!("{}: backup is whole\n", backup_dir.display()))
    );

    let new = dir.path().join("restored");
    let (code, stderr) = restore(&backup_dir, &new);
    assert_eq!(code, 0, "{stderr}");
    let restored = Server::start(&new, 2);
    let restored_client = restored.client();
    let pairs = all_pairs(&restored_client);
    let source = all_pairs(&client);
    for (key, value) in &source {
        if !key.starts_with(b"during") {
            assert_eq!(
                pairs.get(key),
                Some(value),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }
    for (key, value) in &acknowledged_before {
        assert_eq!(
            pairs.get(key),
            Some(value),
            "acknowledged before the backup began"
        );
    }
    for (key, value) in &pairs {
        if key.starts_with(b"during") {
            assert_eq!(all_written.get(key), Some(value), "only what was written");
        }
    }
    let found = restored_client
        .find(
            "people",
            &serde_json::json!({"filter": {"age": {"$lt": 10}}}),
        )
        .unwrap();
    assert_eq!(found.len(), 300 / 90 * 10 + 10);
    assert_eq!(
        restored_client
            .count("people", &serde_json::json!({}))
            .unwrap(),
        300
    );
    let explained = restored_client
        .explain("people", &serde_json::json!({"filter": {"age": 5}}))
        .unwrap();
    assert!(
        explained.to_string().contains("age_1"),
        "the index came back: {explained}"
    );
    // The restored node takes writes and keeps them.
    restored_client.put(b"after", b"restore").unwrap();
    assert_eq!(
        restored_client.get(b"after").unwrap().as_deref(),
        Some(&b"restore"[..])
    );
}

#[test]
fn a_damaged_or_unfinished_backup_is_refused_and_nothing_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("source"), 2);
    let client = server.client();
    // Enough pages that the backup takes many chunks.
    for i in 0..200 {
        client
            .put(format!("k{i}").as_bytes(), &vec![i as u8; 60_000])
            .unwrap();
    }
    let good = dir.path().join("good");
    assert_eq!(backup(&server.addr, &good).0, 0);

    // A flipped byte in a shard file.
    let flipped = dir.path().join("flipped");
    std::fs::create_dir(&flipped).unwrap();
    for entry in std::fs::read_dir(&good).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), flipped.join(entry.file_name())).unwrap();
    }
    let victim = flipped.join("shard-001.pages");
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&victim, bytes).unwrap();
    let (code, out) = verify(&flipped);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("shard-001.pages: damaged"), "{out}");
    let new = dir.path().join("new");
    let (code, stderr) = restore(&flipped, &new);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("shard-001.pages: damaged"), "{stderr}");
    assert!(!new.exists(), "nothing restored");

    // A backup killed while it streams: no manifest, so nothing accepts it.
    let killed = dir.path().join("killed");
    let mut child = Command::new(kvs_binary())
        .args([
            "--addr",
            &server.addr,
            "backup",
            "--to",
            killed.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !killed.join("shard-000.pages.partial").exists()
        && !killed.join("shard-000.pages").exists()
    {
        assert!(Instant::now() < deadline, "the backup never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, out) = verify(&killed);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("MANIFEST.json: missing"), "{out}");
    let (code, stderr) = restore(&killed, &new);
    assert_eq!(code, 1, "{stderr}");
    assert!(!new.exists());
    // The good backup still restores, and the node is unharmed by the abandoned one.
    assert_eq!(restore(&good, &new).0, 0);
    let (code, _, stderr) = kvs(&server, &["put", "still", "here"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_cluster_is_backed_up_from_each_shards_leader_and_restores_as_one_node() {
    let cluster = Cluster::start(3, 2);
    cluster.wait_for_leaders();
    let client = Client::connect(&cluster.addrs[0]).unwrap();
    for i in 0..500 {
        client
            .put(format!("c{i:04}").as_bytes(), format!("v{i}").as_bytes())
            .unwrap();
    }
    let backup_dir = cluster.dir.path().join("backup");
    // Asked of one node; each shard comes from whichever node leads it.
    let (code, stderr) = backup(&cluster.addrs[1], &backup_dir);
    assert_eq!(code, 0, "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(backup_dir.join("MANIFEST.json")).unwrap())
            .unwrap();
    assert!(manifest["cluster_id"].is_string(), "{manifest}");
    let new = cluster.dir.path().join("restored");
    let (code, stderr) = restore(&backup_dir, &new);
    assert_eq!(code, 0, "{stderr}");
    let restored = Server::start(&new, 2);
    let pairs = all_pairs(&restored.client());
    assert_eq!(pairs.len(), 500);
    assert_eq!(
        pairs.get(&b"c0123"[..]).map(Vec::as_slice),
        Some(&b"v123"[..])
    );
}

#[test]
fn a_backup_seeds_a_new_three_node_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let source = Server::start(&dir.path().join("source"), 2);
    let client = source.client();
    for i in 0..300 {
        client
            .put(format!("s{i:03}").as_bytes(), format!("v{i}").as_bytes())
            .unwrap();
    }
    let backup_dir = dir.path().join("backup");
    assert_eq!(backup(&source.addr, &backup_dir).0, 0);

    // Every member restored from the same backup, with its own identity.
    let ports = common::free_ports::<6>();
    let peers: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", ports[3 + i]))
        .collect();
    let members = (0..3)
        .map(|i| format!("{}={}", i + 1, peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let flags = |i: usize| -> Vec<String> {
        vec![
            "--node-id".into(),
            (i + 1).to_string(),
            "--peer-listen".into(),
            peers[i].clone(),
            "--initial-cluster".into(),
            members.clone(),
        ]
    };
    let data = |i: usize| dir.path().join(format!("node{}", i + 1));
    for i in 0..3 {
        let out = Command::new(kvsd_binary())
            .args(["--restore-from", backup_dir.to_str().unwrap()])
            .args(["--data-dir", data(i).to_str().unwrap()])
            .args(flags(i))
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("as node {} of the cluster", i + 1)),
            "{stderr}"
        );
    }
    let nodes: Vec<Server> = (0..3)
        .map(|i| {
            let flags = flags(i);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            Server::spawn_with(&data(i), 2, &format!("127.0.0.1:{}", ports[i]), &flags)
        })
        .collect();
    for node in &nodes {
        node.wait_ready();
    }
    // Every node answers every key (reads go to each shard's leader), and takes writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        let client = node.client();
        loop {
            match client.get(b"s123") {
                Ok(value) => {
                    assert_eq!(value.as_deref(), Some(&b"v123"[..]));
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "no answer: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let first = nodes[0].client();
    first.put(b"new", b"after the seed").unwrap();
    assert_eq!(all_pairs(&nodes[2].client()).len(), 301);
}
