//! A first program against kvsd: `cargo run --example quickstart -- 127.0.0.1:7070`.
//!
//! Writes, reads, compare-and-set, pipelining and a scan, with the typed errors.

use kvs_wire::{Client, ClientError, ErrorCode, Request, Response};

fn main() -> Result<(), ClientError> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let client = Client::connect(&addr)?;

    // A put returns once the write is on disk; the version identifies this write.
    let version = client.put(b"example:greeting", b"hello")?;
    println!("put -> version {version}");
    println!(
        "get -> {:?}",
        client.get(b"example:greeting")?.map(String::from_utf8)
    );

    // Optimistic concurrency: replace only if nobody wrote in between.
    client.cas(b"example:greeting", version, Some(b"hello again"))?;
    match client.cas(b"example:greeting", version, Some(b"stale")) {
        Err(e) if e.code() == Some(ErrorCode::VersionMismatch) => {
            println!("stale cas refused: {e}")
        }
        other => println!("unexpected: {other:?}"),
    }

    // Pipelining: many requests in one write, replies matched by request id.
    let requests: Vec<Request> = (0..100)
        .map(|i| Request::Put {
            key: format!("example:{i:03}").into_bytes(),
            value: vec![b'x'; 10],
        })
        .collect();
    let mut written = 0;
    for pending in client.submit_many(&requests)? {
        if let Response::Written { .. } = pending.wait()? {
            written += 1;
        }
    }
    println!("pipelined {written} puts");

    // A scan, in key order across all shards, page by page.
    let (page, next) = client.scan(b"example:", Some(b"example:;"), 5)?;
    for (key, value) in &page {
        println!(
            "{} = {}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(value)
        );
    }
    println!("more after this page: {}", next.is_some());
    Ok(())
}
