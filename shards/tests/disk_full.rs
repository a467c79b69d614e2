//! Disk full against a real kvsd on a real, small filesystem (a tmpfs mounted for the test,
//! which supports O_DIRECT): writes fail with DISK_FULL, reads keep working, nothing
//! acknowledged is lost, and the shard takes writes again once space is freed, with no
//! restart. Mounting needs root, so the test is ignored by a plain `cargo test`; `.ci/run`
//! (which runs as root) runs it with `--ignored`, and run that way without root it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use kvs_wire::ErrorCode;

/// A tmpfs of `size` mounted for the life of the value.
struct SmallDisk {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let parent = tempfile::tempdir().ok()?;
        let dir = parent.path().join("fs");
        std::fs::create_dir(&dir).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .ok()?
            .success();
        mounted.then_some(SmallDisk {
            dir,
            _parent: parent,
        })
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn value_for(i: u64) -> Vec<u8> {
    format!("{i:016x}").repeat(64).into_bytes() // 1 KiB
}

#[test]
#[ignore = "mounts a tmpfs, which needs root: .ci/run runs it with --ignored"]
fn a_full_disk_refuses_writes_keeps_reads_and_heals_when_space_is_freed() {
    let disk = SmallDisk::mount("112m")
        .expect("cannot mount a tmpfs: this test needs root (run it as root, as .ci/run does)");
    // Leave room for the first 64 MiB log segment and a little more, then fill the rest.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![1u8; 36 << 20]).unwrap();
    let data = disk.path().join("data");
    let flags = ["--cache-size", "4MiB", "--checkpoint-interval", "1"];
    let mut server = Server::start_with(&data, 1, &flags);
    let client = server.client();

    let mut acked = Vec::new();
    let mut full_at = None;
    for i in 0..200_000u64 {
        match client.put(format!("k{i:08}").as_bytes(), &value_for(i)) {
            Ok(_) => acked.push(i),
            Err(e) => {
                assert_eq!(
                    e.code(),
                    Some(ErrorCode::DiskFull),
                    "the error names the cause: {e}"
                );
                full_at = Some(i);
                break;
            }
        }
    }
    let full_at = full_at.expect("the small filesystem filled up");
    assert!(acked.len() > 1000, "only {} writes fitted", acked.len());
    // Writes keep failing with DISK_FULL; reads go on.
    let again = client.put(b"after", b"x").unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::DiskFull));
    for &i in acked.iter().step_by(97) {
        assert_eq!(
            client.get(format!("k{i:08}").as_bytes()).unwrap(),
            Some(value_for(i))
        );
    }

    // Free space: the shard reopens by itself and takes writes again.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.put(b"healed", b"yes") {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::DiskFull), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "the shard did not take writes again"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    assert_eq!(client.get(b"healed").unwrap(), Some(b"yes".to_vec()));
    // The write refused at the moment the disk filled never appears.
    assert_eq!(
        client.get(format!("k{full_at:08}").as_bytes()).unwrap(),
        None
    );

    // Nothing acknowledged was lost, through a kill -9 as well.
    drop(client);
    server.kill9();
    let server = Server::start_with(&data, 1, &flags);
    let client = server.client();
    for &i in &acked {
        assert_eq!(
            client.get(format!("k{i:08}").as_bytes()).unwrap(),
            Some(value_for(i)),
            "key {i}"
        );
    }
    assert_eq!(client.get(b"healed").unwrap(), Some(b"yes".to_vec()));
}
