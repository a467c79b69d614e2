//! Connection limits with a real kvsd (issue 16): `--max-connections` tells one client too
//! many so in its protocol and closes it, without disturbing the others, and takes clients
//! again once some leave; `--idle-timeout` closes connections that stand still and keeps
//! those that talk; both limits are in INFO.

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
