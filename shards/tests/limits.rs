//! Connection limits with a real kvsd (issue 16): `--max-connections` tells one client too
//! many so in its protocol and closes it, without disturbing the others, and takes clients
//! again once some leave; `--idle-timeout` closes connections that stand still and keeps
//! those that talk; `--max-request-memory` keeps many half-sent large requests from growing
//! kvsd (they wait, unread) while small requests go on; every limit is in INFO.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Server;
use kvs_wire::frame::{Decoded, FrameDecoder};
use kvs_wire::limits::FRAME_HEADER_SIZE;
use kvs_wire::{ErrorCode, Request, Response};

/// Everything a connection receives until the server closes it (or `wait` passes).
fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

fn ping(stream: &mut TcpStream) -> bool {
    let mut bytes = Vec::new();
    Request::Ping.encode(1, &mut bytes);
    if stream.write_all(&bytes).is_err() {
        return false;
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = [0u8; FRAME_HEADER_SIZE];
    stream.read_exact(&mut reply).is_ok()
}

#[test]
fn one_client_too_many_is_told_so_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        2,
        &["--max-connections", "3", "--resp-listen", "127.0.0.1:0"],
    );
    let resp_addr = server.ready_address("resp=");
    // Server::start's own readiness check has closed its connection; wait until it is gone.
    let info = |client: &kvs_wire::Client| -> serde_json::Value {
        serde_json::from_str(&client.info().unwrap()).unwrap()
    };
    let first = server.client();
    assert_eq!(info(&first)["max_connections"], 3);
    assert!(info(&first)["idle_timeout_ms"].is_null());
    let deadline = Instant::now() + Duration::from_secs(10);
    while info(&first)["connections"] != 1 {
        assert!(Instant::now() < deadline, "connections never settled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = TcpStream::connect(&server.addr).unwrap();
    let mut third = TcpStream::connect(&resp_addr).unwrap();
    assert!(ping(&mut second));
    third.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut pong = [0u8; 7];
    third.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");

    // A fourth, native: an error frame that says why, then the end of the stream.
    let mut fourth = TcpStream::connect(&server.addr).unwrap();
    let (got, closed) = read_until_closed(&mut fourth, Duration::from_secs(5));
    assert!(closed, "the connection over the limit was left open");
    let Ok(Decoded::Frame { header, len }) = FrameDecoder.decode(&got) else {
        panic!("no frame: {got:?}");
    };
    let reply = Response::decode(&header, &got[FRAME_HEADER_SIZE..len]).unwrap();
    let Response::Error { code, message } = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(code, ErrorCode::ShuttingDown);
    assert!(message.contains("max number of clients"), "{message}");
    // ...and RESP.
    let mut fifth = TcpStream::connect(&resp_addr).unwrap();
    let (got, closed) = read_until_closed(&mut fifth, Duration::from_secs(5));
    assert!(closed);
    assert!(String::from_utf8_lossy(&got).starts_with("-ERR max number of clients reached"));
    // The library client names the reason too.
    let refused = kvs_wire::Client::connect(&server.addr).and_then(|c| c.ping());
    let error = refused
        .expect_err("a client over the limit was served")
        .to_string();
    assert!(error.contains("max number of clients"), "{error}");
    // The three go on.
    assert!(ping(&mut second));
    first.put(b"k", b"v").unwrap();
    // One leaves: a new client is taken.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = TcpStream::connect(&server.addr).unwrap();
        if ping(&mut again) {
            break;
        }
        assert!(Instant::now() < deadline, "no room came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_connections_are_closed_and_busy_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), 1, &["--idle-timeout", "400ms"]);
    let client = server.client();
    let info: serde_json::Value = serde_json::from_str(&client.info().unwrap()).unwrap();
    assert_eq!(info["idle_timeout_ms"], 400);
    let mut idle = TcpStream::connect(&server.addr).unwrap();
    let mut talking = TcpStream::connect(&server.addr).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(ping(&mut talking), "a connection that talks was closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(5));
    assert!(closed, "an idle connection stayed open");
    assert!(ping(&mut talking));
}

/// kvsd's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn half_sent_large_requests_wait_within_the_request_memory_and_small_ones_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), 1, &["--max-request-memory", "16MiB"]);
    let client = server.client();
    let info: serde_json::Value = serde_json::from_str(&client.info().unwrap()).unwrap();
    assert_eq!(info["max_request_memory"], 16u64 << 20);
    client.put(b"warm", &vec![1u8; 1 << 20]).unwrap();
    let before = rss(server.pid());

    // 60 clients each send a PUT declaring an 8 MiB value and 2 MiB of it, then stall.
    const CLIENTS: usize = 60;
    const SENT: usize = 2 << 20;
    let value = vec![7u8; 8 << 20];
    let mut frame = Vec::new();
    Request::Put {
        key: b"big".to_vec(),
        value,
    }
    .encode(9, &mut frame);
    let frame = std::sync::Arc::new(frame);
    let stalled: Vec<TcpStream> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let frame = std::sync::Arc::clone(&frame);
                let addr = server.addr.clone();
                scope.spawn(move || {
                    let mut stream = TcpStream::connect(&addr).unwrap();
                    stream
                        .set_write_timeout(Some(Duration::from_secs(3)))
                        .unwrap();
                    // Connections kvsd does not read block once the socket buffers fill.
                    let _ = stream.write_all(&frame[..SENT]);
                    stream
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss(server.pid()).saturating_sub(before);
    // Unbounded, the 60 receive buffers would hold 120 MiB; the budget lets two requests of
    // 8 MiB be received at a time.
    assert!(
        grown < 48 << 20,
        "kvsd grew by {} MiB with {CLIENTS} half-sent large requests",
        grown >> 20
    );
    // Small requests do not wait for the budget.
    let other = server.client();
    other.put(b"small", b"1").unwrap();
    assert_eq!(other.get(b"small").unwrap(), Some(b"1".to_vec()));
    // Once the stalled clients leave, their reservations go back: a large request goes.
    drop(stalled);
    std::thread::sleep(Duration::from_millis(200));
    let large = vec![3u8; 8 << 20];
    other.put(b"large", &large).unwrap();
    assert_eq!(other.get(b"large").unwrap().map(|v| v.len()), Some(8 << 20));
}
