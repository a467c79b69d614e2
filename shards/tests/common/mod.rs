//! Helpers for integration tests: real kvsd processes on scratch directories and free ports.

#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kvs_wire::Client;

pub fn kvsd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_kvsd")
}

/// The `kvs` CLI, built next to kvsd by `cargo test --workspace`.
pub fn kvs_binary() -> PathBuf {
    let path = Path::new(kvsd_binary()).with_file_name("kvs");
    assert!(
        path.exists(),
        "{} is missing: run the workspace tests (cargo test --workspace)",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A kvsd process. Killed (SIGKILL) when dropped, unless it already exited.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    pub data_dir: PathBuf,
    pub shards: u32,
}

impl Server {
    /// Starts kvsd and waits until it answers PING.
    pub fn start(data_dir: &Path, shards: u32) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        let server = Server::spawn(data_dir, shards, &addr);
        server.wait_ready();
        server
    }

    pub fn spawn(data_dir: &Path, shards: u32, addr: &str) -> Server {
        let child = Command::new(kvsd_binary())
            .args([
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--listen",
                addr,
                "--shards",
                &shards.to_string(),
            ])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvsd starts");
        Server {
            child: Some(child),
            addr: addr.to_string(),
            data_dir: data_dir.to_path_buf(),
            shards,
        }
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(client) = Client::connect(&self.addr) {
                if client.ping().is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "kvsd on {} did not become ready",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.addr).expect("connect to kvsd")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// kill -9: the process gets no chance to do anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit; returns the status and what kvsd wrote to stderr.
    pub fn terminate(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            assert!(
                Instant::now() < deadline,
                "kvsd did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a kvsd that is expected to exit on its own (a failed start).
    pub fn wait_exit(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "kvsd did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
