//! A thousand clients at once against a real kvsd (issue 16): each has its own connection and
//! its own key, which only it writes, with increasing numbers; all of them also read each
//! other's keys. Every read must return a value that was written, no older than one already
//! acknowledged when the read was sent; at the end every acknowledged write is there.
//! Requests of all thousand connections are in flight at once (each thread sends on its
//! connections before it reads their replies).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::Server;
use kvs_wire::frame::{Decoded, FrameDecoder};
use kvs_wire::limits::FRAME_HEADER_SIZE;
use kvs_wire::{ErrorCode, Request, Response};

const CLIENTS: usize = 1000;
const THREADS: usize = 10;
const ROUNDS: u64 = 50;

fn key(client: usize) -> Vec<u8> {
    format!("client{client:04}").into_bytes()
}

/// Raises this process's open-file limit to its hard limit (a thousand sockets).
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write a live rlimit.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn read_reply(stream: &mut TcpStream) -> Response {
    let mut bytes = vec![0u8; FRAME_HEADER_SIZE];
    stream.read_exact(&mut bytes).unwrap();
    let (Ok(Decoded::Incomplete { wanted }) | Ok(Decoded::Frame { len: wanted, .. })) =
        FrameDecoder.decode(&bytes)
    else {
        panic!("a bad frame header");
    };
    bytes.resize(wanted, 0);
    stream.read_exact(&mut bytes[FRAME_HEADER_SIZE..]).unwrap();
    let Ok(Decoded::Frame { header, len }) = FrameDecoder.decode(&bytes) else {
        panic!("a bad frame");
    };
    Response::decode(&header, &bytes[FRAME_HEADER_SIZE..len]).unwrap()
}

/// `client:number`, the value a client writes.
fn parse(value: &[u8]) -> (usize, u64) {
    let text = std::str::from_utf8(value).unwrap();
    let (client, number) = text.split_once(':').expect("a value some client wrote");
    (client.parse().unwrap(), number.parse().unwrap())
}

#[test]
fn a_thousand_clients_read_only_what_was_written_and_lose_no_acknowledged_write() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let per_thread = CLIENTS / THREADS;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (addr, sent, acked) = (server.addr.clone(), Arc::clone(&sent), Arc::clone(&acked));
            std::thread::spawn(move || {
                let mine: Vec<usize> = (t * per_thread..(t + 1) * per_thread).collect();
                let mut streams: Vec<TcpStream> = mine
                    .iter()
                    .map(|_| TcpStream::connect(&addr).unwrap())
                    .collect();
                let mut seed = t as u64 * 7919 + 1;
                let mut reads = 0;
                for round in 1..=ROUNDS {
                    // Send on every connection, then read every reply.
                    let mut asked = Vec::with_capacity(per_thread);
                    for (slot, &client) in mine.iter().enumerate() {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let request = if (seed >> 33).is_multiple_of(2) {
                            sent[client].store(round, Ordering::SeqCst);
                            let value = format!("{client}:{round}").into_bytes();
                            asked.push((client, None));
                            Request::Put {
                                key: key(client),
                                value,
                            }
                        } else {
                            let other = (seed >> 40) as usize % CLIENTS;
                            asked.push((other, Some(acked[other].load(Ordering::SeqCst))));
                            Request::Get { key: key(other) }
                        };
                        let mut bytes = Vec::new();
                        request.encode(round, &mut bytes);
                        streams[slot].write_all(&bytes).unwrap();
                    }
                    for (slot, (target, floor)) in asked.into_iter().enumerate() {
                        let reply = read_reply(&mut streams[slot]);
                        match (floor, reply) {
                            (None, Response::Written { .. }) => {
                                acked[target].fetch_max(round, Ordering::SeqCst);
                            }
                            (Some(floor), Response::Value { value, .. }) => {
                                let (writer, number) = parse(&value);
                                assert_eq!(writer, target, "a value under another's key");
                                assert!(
                                    number >= floor,
                                    "read {number}, older than acknowledged {floor}"
                                );
                                assert!(
                                    number <= sent[target].load(Ordering::SeqCst),
                                    "a value never sent"
                                );
                                reads += 1;
                            }
                            (
                                Some(floor),
                                Response::Error {
                                    code: ErrorCode::NotFound,
                                    ..
                                },
                            ) => {
                                assert_eq!(floor, 0, "an acknowledged write was not found");
                                reads += 1;
                            }
                            (_, other) => panic!("unexpected reply {other:?}"),
                        }
                    }
                }
                reads
            })
        })
        .collect();
    let reads: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(reads > 1000, "{reads} reads checked");
    let client = server.client();
    let keys: Vec<Vec<u8>> = (0..CLIENTS).map(key).collect();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    for (i, found) in client.mget(&refs).unwrap().into_iter().enumerate() {
        let done = acked[i].load(Ordering::SeqCst);
        match found {
            Some((_, value)) => assert!(parse(&value).1 >= done, "client {i} lost a write"),
            None => assert_eq!(done, 0, "client {i}'s acknowledged writes are gone"),
        }
    }
    let info: serde_json::Value = serde_json::from_str(&client.info().unwrap()).unwrap();
    assert!(info["connections"].as_u64().unwrap() >= 1);
}
