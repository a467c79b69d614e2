//! kvs-bench against a real kvsd: its errors name their cause, and a run that loses its
//! connections still reports what it measured.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::Server;

fn bench_binary() -> PathBuf {
    let path = std::path::Path::new(common::kvsd_binary()).with_file_name("kvs-bench");
    assert!(
        path.exists(),
        "{} is missing: build the workspace",
        path.display()
    );
    path
}

#[test]
fn a_refused_connection_names_the_address() {
    let port = common::free_port();
    let out = Command::new(bench_binary())
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--workload",
            "random-read",
        ])
        .args(["--no-load", "--duration", "1"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn a_failed_load_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1);
    let out = Command::new(bench_binary())
        .args([
            "--addr",
            &server.addr,
            "--workload",
            "write",
            "--records",
            "2",
        ])
        .args([
            "--value-size",
            "17000000",
            "--clients",
            "1",
            "--duration",
            "1",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
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
    let mut server = Server::start(dir.path(), 1);
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
