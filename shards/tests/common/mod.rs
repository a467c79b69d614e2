//! Helpers for integration tests: real kvsd processes on scratch directories and free ports.

#![allow(dead_code)]

pub mod certs;
pub mod cluster;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvs_wire::Client;

pub fn kvsd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_kvsd")
}

/// The `kvs` CLI (crate `kvs-cli`), built next to kvsd by `cargo test --workspace`. A test
/// cannot ask cargo for another package's binary, so it is looked for beside kvsd.
pub fn kvs_binary() -> PathBuf {
    let path = Path::new(kvsd_binary()).with_file_name("kvs");
    assert!(
        path.exists(),
        "{} is missing: run the workspace tests (cargo test --workspace), or build it first \
         (cargo build -p kvs-cli)",
        path.display()
    );
    path
}

/// Runs the `kvs` CLI against `server`: (exit code, stdout, stderr).
pub fn kvs(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(kvs_binary())
        .arg("--addr")
        .arg(&server.addr)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the `kvs` CLI in batch mode against `server` with `input` on stdin (written from
/// a thread, so a large input cannot block on a full pipe): (success, stdout).
pub fn kvs_batch(server: &Server, input: String) -> (bool, String) {
    let mut child = Command::new(kvs_binary())
        .arg("--addr")
        .arg(&server.addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(input.as_bytes()).unwrap()
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `kvsd --verify` on a data directory: (clean, report).
pub fn verify_data_dir(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(kvsd_binary())
        .args(["--verify", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports for nodes that must keep their address across restarts.
///
/// They come from below the kernel's ephemeral range (`ip_local_port_range`): a port the
/// kernel picked (`127.0.0.1:0`) is one it may hand again to any outgoing connection once a
/// node is killed, and then the node cannot listen there when it restarts. Below that range
/// only tests choose ports; a counter shared by this process's tests never offers one twice,
/// and each port is checked by binding it.
pub fn free_ports<const N: usize>() -> [u16; N] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = 10_000u32;
    assert!(
        ephemeral_start > low + 1000,
        "the ephemeral range leaves no room below it"
    );
    let span = ephemeral_start - low;
    // Each test process starts at its own place, so two processes rarely meet.
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    std::array::from_fn(|_| {
        for _ in 0..span {
            let port = low + NEXT.fetch_add(1, Ordering::Relaxed) % span;
            if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
        panic!("no free port below the ephemeral range")
    })
}

/// A kvsd process. Killed (SIGKILL) when dropped, unless it already exited.
pub struct Server {
    child: Option<Child>,
    /// Everything kvsd wrote to stderr so far, read continuously so a full pipe never
    /// blocks it.
    stderr: Arc<Mutex<String>>,
    pub addr: String,
    pub data_dir: PathBuf,
    pub shards: u32,
}

impl Server {
    /// Starts kvsd and waits until it answers PING.
    /// Starts kvsd on a port the kernel picks (`--listen 127.0.0.1:0`, read back from its
    /// ready line, so no two tests can race for a port) and waits until it answers PING.
    pub fn start(data_dir: &Path, shards: u32) -> Server {
        Server::start_with(data_dir, shards, &[])
    }

    /// Like `start`, with more flags for kvsd.
    pub fn start_with(data_dir: &Path, shards: u32, flags: &[&str]) -> Server {
        let mut server = Server::spawn_with(data_dir, shards, "127.0.0.1:0", flags);
        server.addr = server.ready_address("listen=");
        server.wait_ready();
        server
    }

    /// Waits for kvsd's "kvsd is ready" log line and returns the address after `field`.
    pub fn ready_address(&self, field: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let stderr = self.stderr.lock().unwrap();
                if let Some(line) = stderr.lines().find(|l| l.contains("kvsd is ready")) {
                    let at =
                        line.find(field).expect("the ready line names the address") + field.len();
                    return line[at..].split_whitespace().next().unwrap().to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "kvsd did not get ready; its stderr:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn spawn(data_dir: &Path, shards: u32, addr: &str) -> Server {
        Server::spawn_with(data_dir, shards, addr, &[])
    }

    pub fn spawn_with(data_dir: &Path, shards: u32, addr: &str, flags: &[&str]) -> Server {
        let mut child = Command::new(kvsd_binary())
            .args([
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--listen",
                addr,
                "--shards",
                &shards.to_string(),
                "--log-level",
                "warn,kvs_shards::node=info",
            ])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvsd starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Server {
            child: Some(child),
            stderr,
            addr: addr.to_string(),
            data_dir: data_dir.to_path_buf(),
            shards,
        }
    }

    /// Waits until this process says it is ready (its own log line, so never another node
    /// that answers on the same address) and then answers a ping.
    pub fn wait_ready(&self) {
        let listen = self.ready_address("listen=");
        assert_eq!(listen, self.addr, "kvsd listens elsewhere than asked");
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

    /// What kvsd wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
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
        let pid = self.pid().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        self.wait_exit()
    }

    /// Waits (up to 30 s) for kvsd to exit; returns the status and what it wrote to stderr.
    pub fn wait_exit(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // The reader thread sees the pipe close right after the exit.
                std::thread::sleep(Duration::from_millis(50));
                return (status, self.stderr.lock().unwrap().clone());
            }
            assert!(
                Instant::now() < deadline,
                "kvsd did not exit within 30 s; its stderr:\n{}",
                self.stderr.lock().unwrap()
            );
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

/// A shard directory's log segments, oldest first.
pub fn segment_files(shard_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}
