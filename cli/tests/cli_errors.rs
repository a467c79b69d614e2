//! The `kvs` CLI's own errors, with no server: it fails with a clear message and exit code 2.

use std::process::Command;

#[test]
fn no_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["--addr", &format!("127.0.0.1:{port}"), "get", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn bad_usage_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvs"))
        .args(["put", "only-a-key"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!out.stderr.is_empty());
}
