//! `kvs-read-floor` against a real client: a GET answers with the first bytes of the page its
//! key hashes to, read from the file; PING answers; anything else is refused by name.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kvs_wire::{Client, ErrorCode};

const PAGE: usize = 4096;
const PAGES: usize = 16;

struct Floor(Child);

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn page_bytes(page: usize) -> Vec<u8> {
    (0..PAGE).map(|j| ((page * 7 + j) % 251) as u8).collect()
}

#[test]
fn a_get_answers_with_the_page_its_key_hashes_to() {
    // The target directory is on a disk (O_DIRECT is refused by tmpfs).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("pages.dat");
    let bytes: Vec<u8> = (0..PAGES).flat_map(page_bytes).collect();
    std::fs::write(&file, bytes).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _floor = Floor(
        Command::new(PathBuf::from(env!("CARGO_BIN_EXE_kvs-read-floor")))
            .args([
                "--listen",
                &addr,
                "--value-size",
                "100",
                "--submit",
                "eager",
            ])
            .arg("--file")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = (0..100)
        .find_map(|_| {
            Client::connect(&addr).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(50));
                None
            })
        })
        .expect("the floor server listens");
    client.ping().unwrap();
    for i in 0..40u32 {
        let key = format!("user{i:012}");
        let page = (fnv1a(key.as_bytes()) % PAGES as u64) as usize;
        let value = client.get(key.as_bytes()).unwrap().expect("a value");
        assert_eq!(value, page_bytes(page)[..100], "key {key}");
    }
    let refused = client.put(b"k", b"v").unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::BadRequest), "{refused}");
}
