//! Point-in-time recovery with real processes: kvsd archiving its log segments
//! (`--archive-dir`), a backup, writes before and after a known moment, and `kvsd
//! --restore-from BACKUP --archive-dir DIR --until TIME` bringing back exactly the writes
//! before it; a damaged archived segment refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{kvs_binary, kvsd_binary, Server};

fn backup(addr: &str, dir: &Path) {
    let out = Command::new(kvs_binary())
        .args(["--addr", addr, "backup", "--to", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kvsd --restore-from BACKUP --data-dir NEW ARGS...`: (exit code, stderr).
fn restore(backup: &Path, new: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(kvsd_binary())
        .args(["--restore-from", backup.to_str().unwrap()])
        .args(["--data-dir", new.to_str().unwrap()])
        .args(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Now, as RFC 3339 with milliseconds.
fn now_rfc3339() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    kvs_wire::backup::rfc3339_ms(ms)
}

fn put_all(server: &Server, prefix: &str, count: usize) {
    let client = server.client();
    for i in 0..count {
        client
            .put(format!("{prefix}{i:03}").as_bytes(), prefix.as_bytes())
            .unwrap();
    }
}

/// Writes a key a few times, each past a checkpoint (`--checkpoint-interval 1`): each
/// checkpoint closes the segment written since, and the next one archives it.
fn let_the_archive_catch_up(server: &Server) {
    let client = server.client();
    for round in 0..3 {
        // Keys on every shard.
        for key in 0..8 {
            client
                .put(
                    format!("filler{key}").as_bytes(),
                    format!("{round}").as_bytes(),
                )
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(1300));
    }
}

fn archived_segments(archive: &Path) -> Vec<PathBuf> {
    let mut segments = Vec::new();
    for shard in std::fs::read_dir(archive).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                segments.push(path);
            }
        }
    }
    segments.sort();
    segments
}

#[test]
fn a_restore_replays_the_archive_up_to_a_moment_between_two_writes() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let server = Server::start_with(
        &dir.path().join("source"),
        2,
        &[
            "--archive-dir",
            archive.to_str().unwrap(),
            "--checkpoint-interval",
            "1",
        ],
    );
    put_all(&server, "base", 40);
    let base = dir.path().join("base-backup");
    backup(&server.addr, &base);
    put_all(&server, "before", 40);
    std::thread::sleep(Duration::from_millis(200));
    let moment = now_rfc3339();
    std::thread::sleep(Duration::from_millis(200));
    put_all(&server, "after", 40);
    let_the_archive_catch_up(&server);
    assert!(
        !archived_segments(&archive).is_empty(),
        "segments were archived"
    );

    let new = dir.path().join("to-the-moment");
    let (code, stderr) = restore(
        &base,
        &new,
        &[
            "--archive-dir",
            archive.to_str().unwrap(),
            "--until",
            &moment,
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("entries replayed from the archive"),
        "{stderr}"
    );
    let restored = Server::start(&new, 2);
    let client = restored.client();
    for i in 0..40 {
        let get = |prefix: &str| client.get(format!("{prefix}{i:03}").as_bytes()).unwrap();
        assert_eq!(get("base").as_deref(), Some(&b"base"[..]), "in the backup");
        assert_eq!(
            get("before").as_deref(),
            Some(&b"before"[..]),
            "before the moment"
        );
        assert_eq!(get("after"), None, "after the moment");
    }
    drop(restored);

    // Without --until: everything archived.
    let everything = dir.path().join("everything");
    let (code, stderr) = restore(
        &base,
        &everything,
        &["--archive-dir", archive.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    let restored = Server::start(&everything, 2);
    let client = restored.client();
    for i in 0..40 {
        assert_eq!(
            client
                .get(format!("after{i:03}").as_bytes())
                .unwrap()
                .as_deref(),
            Some(&b"after"[..])
        );
    }
    // The restored node takes writes, and its log goes on from the replayed entries.
    client.put(b"new", b"write").unwrap();
    drop(client);
    drop(restored);
    let restarted = Server::start(&everything, 2);
    assert_eq!(
        restarted.client().get(b"new").unwrap().as_deref(),
        Some(&b"write"[..])
    );
}

#[test]
fn a_damaged_archived_segment_stops_the_restore() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let server = Server::start_with(
        &dir.path().join("source"),
        1,
        &[
            "--archive-dir",
            archive.to_str().unwrap(),
            "--checkpoint-interval",
            "1",
        ],
    );
    let base = dir.path().join("base-backup");
    backup(&server.addr, &base);
    put_all(&server, "k", 100);
    let_the_archive_catch_up(&server);
    let segments = archived_segments(&archive);
    let victim = segments.last().expect("an archived segment");
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 1;
    std::fs::write(victim, bytes).unwrap();
    let new = dir.path().join("new");
    let (code, stderr) = restore(&base, &new, &["--archive-dir", archive.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(name) && stderr.contains("damaged"),
        "{stderr}"
    );
    assert!(!new.exists(), "nothing restored");

    // A segment missing from the middle of the archive: a gap, reported.
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[at] ^= 1;
    std::fs::write(victim, bytes).unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    let middle = &segments[segments.len() - 2];
    std::fs::remove_file(middle).unwrap();
    let (code, stderr) = restore(&base, &new, &["--archive-dir", archive.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("a segment is missing") || stderr.contains("are missing"),
        "{stderr}"
    );
    assert!(!new.exists(), "nothing restored");
}
