//! kvs-bench against a real kvsd: its errors name their cause, and a run that loses its
//! connections still reports what it measured.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn bench_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvs-bench"))
}

/// kvsd, built beside kvs-bench by the workspace's tests (its own package's tests build it).
fn kvsd_binary() -> PathBuf {
    let path = bench_binary().with_file_name("kvsd");
    assert!(
        path.exists(),
        "{} is missing: run the workspace tests (cargo test --workspace)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs kvs-bench to its end: whether it succeeded, and its stderr.
fn run_bench(args: &[&str]) -> (bool, String) {
    let out = Command::new(bench_binary())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A kvsd of one shard on a port the kernel picked; killed when dropped.
struct Server {
    child: Option<Child>,
    addr: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut child = Command::new(kvsd_binary())
            .args([
                "--data-dir",
                dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--shards", "1", "--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut addr = None;
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(at) = line.find("listen=") {
                let rest = &line[at + "listen=".len()..];
                addr = Some(rest.split_whitespace().next().unwrap().to_string());
                break;
            }
        }
        Server {
            child: Some(child),
            addr: addr.expect("kvsd said where it listens"),
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[test]
fn a_refused_connection_names_the_address() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (ok, err) = run_bench(&[
        "--addr",
        &addr,
        "--workload",
        "random-read",
        "--no-load",
        "--duration",
        "1",
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn a_failed_load_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (ok, err) = run_bench(&[
        "--addr",
        &server.addr,
        "--workload",
        "write",
        "--records",
        "2",
        "--value-size",
        "17000000",
        "--clients",
        "1",
        "--duration",
        "1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("2 inserts failed during the load phase"),
        "{err}"
    );
    assert!(err.contains("TOO_LARGE"), "{err}");
    assert!(err.contains("16 MiB"), "{err}");
}

#[test]
fn a_run_that_loses_its_server_still_reports_what_it_measured() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let json = dir.path().join("r.json");
    let child = Command::new(bench_binary())
        .args([
            "--addr",
            &server.addr,
            "--workload",
            "ycsb-b",
            "--records",
            "1000",
        ])
        .args(["--clients", "4", "--duration", "30", "--json"])
        .arg(&json)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server.kill9();
    let out = child.wait_with_output().unwrap();
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(err.contains("4 of 4 connections broke"), "{err}");
    assert!(
        stdout.contains("throughput"),
        "the report is printed: {stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
}
