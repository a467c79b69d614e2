//! kvs wire protocol v1 and the Rust client library.
//!
//! The protocol is specified byte by byte in `docs/protocol.md`. This crate holds the
//! sans-IO codec ([`frame`], [`message`]) shared by the server and every client, the
//! key-to-shard hash ([`shard_for_key`]) that both sides must agree on, and a blocking,
//! pipelining [`client::Client`]. It depends on nothing else in the workspace.
//!
//! Encoding a request and decoding it back, as the server does:
//!
//! ```
//! use kvs_wire::frame::{Decoded, FrameDecoder};
//! use kvs_wire::limits::FRAME_HEADER_SIZE;
//! use kvs_wire::Request;
//!
//! let mut bytes = Vec::new();
//! Request::Put { key: b"k".to_vec(), value: b"v".to_vec() }.encode(7, &mut bytes);
//! let Ok(Decoded::Frame { header, len }) = FrameDecoder.decode(&bytes) else { panic!() };
//! assert_eq!(header.request_id, 7);
//! let request = Request::decode_body(header.opcode, &bytes[FRAME_HEADER_SIZE..len]).unwrap();
//! assert_eq!(request, Request::Put { key: b"k".to_vec(), value: b"v".to_vec() });
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
pub mod backup;
pub mod client;
mod client_documents;
pub mod documents;
pub mod error_code;
pub mod frame;
pub mod isolation;
pub mod limits;
pub mod message;
pub mod resp;
pub mod routes;
mod session;
pub mod tls;
pub mod txn_client;

pub use client::{Client, ClientError, ClientOptions};
pub use frame::{Frame, FrameDecoder, FrameError, Header};
pub use message::{DecodeError, ErrorCode, Isolation, Opcode, Request, Response};
pub use txn_client::Transaction;

/// FNV-1a, 64-bit: the stable hash that places a key on a shard.
///
/// It is part of the on-disk and on-wire contract: changing it moves keys between shards,
/// so it is written out here rather than borrowed from a library whose output may change.
pub fn key_hash(key: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// The shard that owns `key` in a node with `shard_count` shards: `fnv1a64(key) % shard_count`.
///
/// ```
/// use kvs_wire::shard_for_key;
/// assert_eq!(shard_for_key(b"user:1", 1), 0);
/// let shard = shard_for_key(b"user:1", 4);
/// assert!(shard < 4);
/// assert_eq!(shard, shard_for_key(b"user:1", 4)); // stable: the same everywhere
/// ```
pub fn shard_for_key(key: &[u8], shard_count: u32) -> u32 {
    assert!(shard_count > 0, "a node has at least one shard");
    if shard_count == 1 {
        // Every key is the one shard's: no hash (a per-request cost on one-shard nodes).
        return 0;
    }
    (key_hash(key) % u64::from(shard_count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_published_vectors() {
        // Test vectors from the FNV reference (empty string, "a", "foobar").
        assert_eq!(key_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(key_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shards_spread_keys() {
        let mut counts = [0u32; 4];
        for i in 0..10_000 {
            counts[shard_for_key(format!("key-{i}").as_bytes(), 4) as usize] += 1;
        }
        for count in counts {
            assert!((2_000..3_000).contains(&count), "uneven spread: {counts:?}");
        }
    }
}
