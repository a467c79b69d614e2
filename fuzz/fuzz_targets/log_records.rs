//! The log as recovery reads it from disk: segment headers, group headers, records, and the
//! command batches inside them.
#![no_main]

use kvs_core::command::{decode_batch_meta, decode_steps};
use kvs_core::log::format::{decode_group_header, decode_records, decode_segment_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_segment_header(data);
    if let Some(header) = decode_group_header(data) {
        let _ = decode_records(&header, data);
    }
    let _ = decode_batch_meta(data);
    let _ = decode_steps(data);
});
