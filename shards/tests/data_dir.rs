//! The data directory guards itself (issue 12): after kill -9 with writes not yet
//! checkpointed, each way of losing a piece of the directory makes kvsd refuse to start,
//! naming the piece, and `kvsd --verify` says the same; a start that cannot listen leaves no
//! directory behind; no shard serves while another failed to open.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::{verify_data_dir, Server};
use kvs_wire::Client;

/// A 2-shard data directory holding `keys` acknowledged keys, left by kill -9 (the log holds
/// them; no checkpoint on the way out).
fn crashed_dir(keys: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 2);
    let client = server.client();
    for i in 0..keys {
        client
            .put(format!("key{i}").as_bytes(), b"acknowledged")
            .unwrap();
    }
    drop(client);
    server.kill9();
    dir
}

/// Starts kvsd on `dir` with `shards` and expects it to refuse; returns its stderr. Checks
/// that no request was answered meanwhile.
fn refused(dir: &Path, shards: u32) -> String {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Server::spawn(dir, shards, &addr);
    let mut answered = false;
    for _ in 0..40 {
        if let Ok(client) = Client::connect(&addr) {
            answered |= client.ping().is_ok();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let (status, stderr) = server.wait_exit();
    assert!(!status.success(), "kvsd started; stderr:\n{stderr}");
    assert!(!answered, "kvsd answered a request before refusing");
    stderr
}

fn verify_finds(dir: &Path, wanted: &str) {
    let (clean, report) = verify_data_dir(dir);
    assert!(!clean, "verify said clean:\n{report}");
    assert!(report.contains("PROBLEM"), "{report}");
    assert!(report.contains(wanted), "wanted {wanted:?} in:\n{report}");
}

#[test]
fn a_deleted_log_segment_stops_startup_and_verify() {
    let dir = crashed_dir(300);
    let (clean, report) = verify_data_dir(dir.path());
    assert!(clean, "{report}");
    let segment = common::segment_files(&dir.path().join("shard-000"))
        .pop()
        .unwrap();
    std::fs::remove_file(&segment).unwrap();
    let stderr = refused(dir.path(), 2);
    assert!(stderr.contains(&segment.display().to_string()), "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");
    verify_finds(dir.path(), "missing");
}

#[test]
fn a_truncated_log_stops_startup_wherever_it_is_cut() {
    for cut in [4096 * 3, 0, 4096 * 2 + 1000] {
        let dir = crashed_dir(300);
        let segment = common::segment_files(&dir.path().join("shard-000"))
            .pop()
            .unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.set_len(cut).unwrap();
        drop(file);
        let stderr = refused(dir.path(), 2);
        assert!(stderr.contains("cut short"), "cut at {cut}: {stderr}");
        assert!(!stderr.contains("torn log tail"), "{stderr}");
        verify_finds(dir.path(), "cut short");
    }
}

#[test]
fn a_deleted_shard_directory_stops_startup() {
    let dir = crashed_dir(200);
    std::fs::remove_dir_all(dir.path().join("shard-001")).unwrap();
    let stderr = refused(dir.path(), 2);
    assert!(stderr.contains("shard-001 is missing"), "{stderr}");
    assert!(
        !dir.path().join("shard-001").exists(),
        "nothing was recreated"
    );
    verify_finds(dir.path(), "shard-001 is missing");
}

#[test]
fn a_deleted_node_file_is_not_rewritten_with_another_shard_count() {
    let dir = crashed_dir(200);
    std::fs::remove_file(dir.path().join("NODE")).unwrap();
    let stderr = refused(dir.path(), 4);
    assert!(stderr.contains("NODE is missing"), "{stderr}");
    assert!(
        stderr.contains("shards 2"),
        "it says what to restore: {stderr}"
    );
    assert!(!dir.path().join("NODE").exists());
    assert!(!dir.path().join("shard-002").exists());
    // Restored as the message says, the directory serves every key again.
    std::fs::write(dir.path().join("NODE"), "format 1\nshards 2\n").unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    for i in 0..200 {
        assert!(client.get(format!("key{i}").as_bytes()).unwrap().is_some());
    }
}

#[test]
fn a_corrupt_log_record_fails_verify_as_it_fails_startup() {
    let dir = crashed_dir(300);
    let segment = common::segment_files(&dir.path().join("shard-000"))
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[4096 + 60] ^= 0xFF; // the first group, with many after it
    std::fs::write(&segment, &bytes).unwrap();
    let stderr = refused(dir.path(), 2);
    assert!(stderr.contains("corrupt log"), "{stderr}");
    verify_finds(dir.path(), "corrupt log");
}

#[test]
fn a_start_that_cannot_listen_leaves_no_data_directory() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("new");
    let mut server = Server::spawn(&dir, 2, &addr);
    let (status, stderr) = server.wait_exit();
    assert!(!status.success());
    assert!(stderr.contains("cannot listen"), "{stderr}");
    assert!(!dir.exists(), "a half-made data directory was left");
}
