//! Idempotent writes against real kvsd processes (ADR 0018): a ONCE sent again is applied
//! once and answered alike, on one node and through another node of a cluster, and the
//! client sends a write again when its reply is lost (a proxy cuts the connection after the
//! server answered) without applying it twice.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::cluster::Cluster;
use common::Server;
use kvs_wire::{Client, ClientError, ErrorCode, Request, Response};

fn once(session: u64, seq: u64, acked_below: u64, request: Request) -> Request {
    Request::Once {
        session,
        seq,
        acked_below,
        request: Box::new(request),
    }
}

fn put(key: &str, value: &str) -> Request {
    Request::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn send(client: &Client, request: &Request) -> Result<Response, ClientError> {
    client.submit(request).and_then(|pending| pending.wait())
}

#[test]
fn a_once_sent_twice_is_applied_once_and_answered_alike() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    let first = send(&client, &once(7, 1, 1, put("a", "1"))).unwrap();
    let Response::Written { version } = first else {
        panic!("a PUT's reply: {first:?}");
    };
    // The same write again: the same answer, and the key was not written twice.
    assert_eq!(send(&client, &once(7, 1, 1, put("a", "1"))).unwrap(), first);
    assert_eq!(
        client.get_versioned(b"a").unwrap(),
        Some((version, b"1".to_vec()))
    );
    // A CAS that succeeded is not refused when it comes again (its version moved on).
    let cas = Request::Cas {
        key: b"a".to_vec(),
        expected_version: version,
        value: Some(b"2".to_vec()),
    };
    let cas_reply = send(&client, &once(7, 2, 1, cas.clone())).unwrap();
    assert!(matches!(cas_reply, Response::Written { .. }));
    assert_eq!(send(&client, &once(7, 2, 1, cas)).unwrap(), cas_reply);
    // MPUT over both shards: each shard keeps its part's answer.
    let mput = Request::MPut {
        pairs: (0..8)
            .map(|i| (format!("m{i}").into_bytes(), b"x".to_vec()))
            .collect(),
    };
    let mput_reply = send(&client, &once(7, 3, 1, mput.clone())).unwrap();
    assert_eq!(send(&client, &once(7, 3, 1, mput)).unwrap(), mput_reply);
    // Another session's write 1 is its own.
    let other = send(&client, &once(8, 1, 1, put("a", "3"))).unwrap();
    assert_ne!(other, first);
    // Session 7 has the replies below 3: a write 1 now may or may not be applied, and the
    // server says so rather than apply it again.
    match send(&client, &once(7, 1, 3, put("a", "1"))) {
        Err(ClientError::Server {
            code: ErrorCode::OutcomeUnknown,
            ..
        }) => {}
        other => panic!("an acknowledged write sent again: {other:?}"),
    }
    assert_eq!(client.get(b"a").unwrap(), Some(b"3".to_vec()));
    // A ONCE of a read is refused as a bad request, and the connection goes on.
    let read = once(7, 4, 1, Request::Get { key: b"a".to_vec() });
    assert!(matches!(
        send(&client, &read),
        Err(ClientError::Invalid(_) | ClientError::Server { .. })
    ));
    client.ping().unwrap();
}

/// A proxy that passes bytes both ways, except that on its first connection it drops the
/// first reply and closes: the client's write was applied, and its answer lost.
fn lossy_proxy(server: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            let mut upstream = TcpStream::connect(&server).unwrap();
            let (mut client_in, mut upstream_out) =
                (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut upstream_out);
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    let n = match upstream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if first {
                        // The reply is lost with the connection.
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    if client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[test]
fn a_write_whose_reply_is_lost_is_sent_again_and_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1);
    let plain_options = kvs_wire::ClientOptions {
        write_once: false,
        ..kvs_wire::ClientOptions::default()
    };
    let direct = Client::connect_with(&server.addr, plain_options.clone()).unwrap();
    let before = direct.put(b"n", b"0").unwrap();
    let (proxy, connections) = lossy_proxy(server.addr.clone());
    // Connecting sends nothing: the first reply on the proxy's first connection is the
    // write's. A CAS from `before`: applied a second time, it would find the key at the
    // first application's version and answer VERSION_MISMATCH.
    let client = Client::connect(&proxy).unwrap();
    let version = client.cas(b"n", before, Some(b"1")).unwrap();
    assert!(
        connections.load(Ordering::SeqCst) >= 2,
        "the client sent the write again on a new connection"
    );
    assert!(version > before);
    assert_eq!(
        direct.get_versioned(b"n").unwrap(),
        Some((version, b"1".to_vec()))
    );
    // Without ONCE the same loss is an unknown outcome, reported as such.
    let (proxy, _) = lossy_proxy(server.addr.clone());
    let plain = Client::connect_with(&proxy, plain_options).unwrap();
    assert!(matches!(
        plain.put(b"n", b"2"),
        Err(ClientError::Disconnected(_))
    ));
}

#[test]
fn a_once_retried_through_another_node_is_applied_once() {
    let cluster = Cluster::start(3, 1);
    cluster.wait_for_preferred_leaders(); // shard 0 on node 1
    let leader = Client::connect(&cluster.addrs[0]).unwrap();
    let follower = Client::connect(&cluster.addrs[2]).unwrap();
    let first = send(&leader, &once(99, 1, 1, put("k", "v"))).unwrap();
    // Sent again through node 3, which forwards to the leader: the replicated record
    // answers it.
    assert_eq!(
        send(&follower, &once(99, 1, 1, put("k", "v"))).unwrap(),
        first
    );
    let Response::Written { version } = first else {
        panic!("a PUT's reply: {first:?}");
    };
    assert_eq!(
        follower.get_versioned(b"k").unwrap(),
        Some((version, b"v".to_vec()))
    );
}
