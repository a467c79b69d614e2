//! B+tree pages, extents, the free list and the meta page, as read from the page file. The
//! bytes are made into a whole page with the id asked for and a valid checksum, so the
//! decoders' own checks are reached (a bad checksum alone is refused at once).
#![no_main]

use kvs_core::store::page::{decode_extent, decode_free_list, decode_meta, decode_node};
use libfuzzer_sys::fuzz_target;

const PAGE_SIZE: usize = 4096;

/// `data` as page `id`: padded or cut to a page, its id in place, its checksum sealed.
fn page(data: &[u8], id: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    let n = data.len().min(PAGE_SIZE);
    page[..n].copy_from_slice(&data[..n]);
    page[4..12].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&page[4..]);
    page[0..4].copy_from_slice(&crc.to_le_bytes());
    page
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_node(data, 7);
    let _ = decode_node(&page(data, 7), 7);
    let _ = decode_free_list(&page(data, 8), 8);
    let _ = decode_meta(&page(data, 0), 0);
    let _ = decode_meta(&page(data, 1), 1);
    if data.len() >= 4 {
        let len = u32::from_le_bytes(data[..4].try_into().unwrap()) % (1 << 16);
        let _ = decode_extent(&data[4..], 9, len, 3);
    }
});
