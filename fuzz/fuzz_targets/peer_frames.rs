//! Frames between the nodes of a cluster (Raft messages, forwarded requests, snapshots).
#![no_main]

use kvs_shards::cluster::codec::decode_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((_, used))) = decode_frame(&data[at..]) {
        assert!(used > 0, "a frame of no bytes");
        at += used;
    }
});
