//! The HTTP endpoint of `kvsd --metrics-listen` (docs/operations.md): `GET /metrics` (the
//! Prometheus text format), `GET /health` (200 while the node serves) and `GET /ready` (200
//! once every local shard has recovered and, in a cluster, knows its leader; 503 with a JSON
//! reason otherwise).
//!
//! It runs on a thread of its own, not on a shard's executor: a scrape is rare, and a slow
//! or hostile HTTP client must cost a shard nothing. Connections are served one at a time,
//! each closed after its answer, with short timeouts; a request is at most 8 KiB.

use crate::metrics::NodeMetrics;
use crate::metrics_export::{disk_space, ProcessFigures, Scrape};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest request head read.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send its request, or to take the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a scrape waits for the shard loops to publish fresh figures.
const SHARD_FIGURES_WAIT: Duration = Duration::from_secs(1);
/// How often the accept loop looks for a connection or for the node's end.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Whether the node is ready, or why not.
pub type Readiness = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the endpoint answers from.
pub struct EndpointState {
    pub metrics: Arc<NodeMetrics>,
    /// Set once every shard has recovered and the node serves; cleared when it stops.
    pub serving: AtomicBool,
    /// The node's stop flag: set, the node is no longer healthy.
    pub stop: Arc<AtomicBool>,
    /// Set when the node has finished: the endpoint's thread ends.
    pub finished: AtomicBool,
    /// Beyond `serving`: in a cluster, whether every local shard knows its leader.
    pub readiness: Readiness,
    pub connections: Box<dyn Fn() -> u64 + Send + Sync>,
    pub data_dir: PathBuf,
}

/// Serves the endpoint on `listener` from a thread of its own until `state.finished`.
pub fn spawn(
    listener: TcpListener,
    state: Arc<EndpointState>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("kvs-metrics".into())
        .spawn(move || {
            while !state.finished.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => serve(stream, &state),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(ACCEPT_POLL)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        std::thread::sleep(ACCEPT_POLL);
                    }
                }
            }
        })
}

fn serve(mut stream: TcpStream, state: &EndpointState) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    let (status, content_type, body) = answer(&head, state);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head_only = head.starts_with("HEAD ");
    let mut reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        reply.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&reply);
}

/// The request's head (up to the blank line), or None if the client sent none in time.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= REQUEST_BYTES_MAX {
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// (status, content type, body) for a request head.
fn answer(head: &str, state: &EndpointState) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return (400, TEXT, "bad request\n".into());
    };
    let path = target.split('?').next().unwrap_or_default();
    if !matches!(path, "/metrics" | "/health" | "/ready") {
        return (
            404,
            TEXT,
            "not found: try /metrics, /health or /ready\n".into(),
        );
    }
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET and HEAD\n".into());
    }
    let stopping = state.stop.load(Ordering::SeqCst);
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            scrape(state),
        ),
        "/health" if stopping => (503, TEXT, "stopping\n".into()),
        "/health" => (200, TEXT, "ok\n".into()),
        _ => {
            let not_ready = if stopping {
                Some("stopping".to_string())
            } else if !state.serving.load(Ordering::SeqCst) {
                Some("starting: shards are recovering".to_string())
            } else {
                (state.readiness)().err()
            };
            match not_ready {
                None => (200, JSON, "{\"ready\":true}\n".into()),
                Some(reason) => (
                    503,
                    JSON,
                    format!(
                        "{}\n",
                        serde_json::json!({ "ready": false, "reason": reason })
                    ),
                ),
            }
        }
    }
}

/// Asks every shard loop for fresh figures, waits for them (a second at most), and
/// encodes the scrape.
fn scrape(state: &EndpointState) -> String {
    let cores = &state.metrics.cores;
    let asked: Vec<u64> = cores.iter().map(|core| core.want_info()).collect();
    let deadline = Instant::now() + SHARD_FIGURES_WAIT;
    let fresh = |i: usize| cores[i].info_generation() > asked[i];
    while !(0..cores.len()).all(fresh) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    Scrape {
        metrics: Arc::clone(&state.metrics),
        shards: (0..cores.len())
            .map(|i| (cores[i].info(), !fresh(i)))
            .collect(),
        connections: (state.connections)(),
        process: ProcessFigures::read(),
        disk: disk_space(&state.data_dir),
    }
    .encode()
}
