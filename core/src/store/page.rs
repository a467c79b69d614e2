//! The page file's byte layout: page headers, B+tree nodes, value extents, free-list pages
//! and the two meta pages. `docs/storage.md` draws the same layout.
//!
//! Every page starts with a 32-byte header:
//!
//! | bytes  | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..4   | CRC32C of bytes 4..end (end: the page, or the whole extent)  |
//! | 4..12  | page id (its offset is id × 4096)                            |
//! | 12     | page type                                                    |
//! | 13..16 | zero                                                         |
//! | 16..24 | LSN: the log index of the last change                        |
//! | 24..32 | epoch: the checkpoint epoch the page was written in          |
//!
//! Decoding never trusts the bytes: every length is checked, and a bad checksum, a wrong page
//! id or a malformed body is a [`PageError`], not a panic.

use crate::limits::TREE_KEY_SIZE_MAX;

pub use super::key::Key;

pub const PAGE_SIZE: usize = 4096;
pub const HEADER_SIZE: usize = 32;
/// Page ids 0 and 1 are the meta pages; tree pages start at 2.
pub const META_PAGES: u64 = 2;
/// An entry whose key and value take more than this goes to an extent, so that any node of
/// two or more entries can be split into halves that each fit a page.
pub const INLINE_ENTRY_MAX: usize = 1536;
/// A node smaller than this after a delete is merged with or refilled from a sibling.
pub const UNDERFLOW_BYTES: usize = PAGE_SIZE / 4;
/// Extent data starts after the header and a 4-byte length.
pub const EXTENT_DATA_OFFSET: usize = HEADER_SIZE + 4;
const META_MAGIC: &[u8; 8] = b"KVSPAGE1";
/// 2: keys carry a space prefix (key-value pairs, documents, index entries, catalogue).
const FORMAT_VERSION: u32 = 2;

const _: () = assert!(TREE_KEY_SIZE_MAX + 64 < INLINE_ENTRY_MAX);
const _: () = assert!(HEADER_SIZE + 4 + 2 * (INLINE_ENTRY_MAX + 16) <= PAGE_SIZE);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageType {
    Meta = 1,
    Leaf = 2,
    Inner = 3,
    Extent = 4,
    FreeList = 5,
}

impl PageType {
    fn from_byte(b: u8) -> Option<PageType> {
        Some(match b {
            1 => PageType::Meta,
            2 => PageType::Leaf,
            3 => PageType::Inner,
            4 => PageType::Extent,
            5 => PageType::FreeList,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("page {page}: {detail}")]
pub struct PageError {
    pub page: u64,
    pub detail: String,
}

fn err(page: u64, detail: impl Into<String>) -> PageError {
    PageError {
        page,
        detail: detail.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u64,
    pub page_type: PageType,
    pub lsn: u64,
    pub epoch: u64,
}

/// Writes the header fields; the checksum is filled in by [`seal_checksum`].
fn put_header(page: &mut [u8], h: &Header) {
    page[4..12].copy_from_slice(&h.id.to_le_bytes());
    page[12] = h.page_type as u8;
    page[13..16].fill(0);
    page[16..24].copy_from_slice(&h.lsn.to_le_bytes());
    page[24..32].copy_from_slice(&h.epoch.to_le_bytes());
}

fn seal_checksum(bytes: &mut [u8]) {
    let crc = crc32c::crc32c(&bytes[4..]);
    bytes[0..4].copy_from_slice(&crc.to_le_bytes());
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks the checksum and that the page is the one asked for; returns its header.
pub fn check_header(bytes: &[u8], expected_id: u64) -> Result<Header, PageError> {
    if bytes.len() < PAGE_SIZE {
        return Err(err(
            expected_id,
            format!("short read: {} bytes", bytes.len()),
        ));
    }
    let stored = u32_at(bytes, 0);
    let actual = crc32c::crc32c(&bytes[4..]);
    if stored != actual {
        return Err(err(
            expected_id,
            format!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"),
        ));
    }
    let id = u64_at(bytes, 4);
    if id != expected_id {
        return Err(err(
            expected_id,
            format!("holds page {id} (misdirected write)"),
        ));
    }
    let page_type = PageType::from_byte(bytes[12])
        .ok_or_else(|| err(expected_id, format!("unknown page type {}", bytes[12])))?;
    Ok(Header {
        id,
        page_type,
        lsn: u64_at(bytes, 16),
        epoch: u64_at(bytes, 24),
    })
}

/// Where a value lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Inline(Vec<u8>),
    /// `pages` contiguous pages from `first`, holding `len` bytes written at log index `lsn`.
    Extent {
        first: u64,
        pages: u32,
        len: u32,
        lsn: u64,
    },
}

/// A leaf entry. Entries sort by key alone, and a key has one entry: `version` is the key's
/// current version (from the shard's counter, what CAS compares), and a write replaces the
/// entry. No older versions are kept, so there are no snapshot reads; MVCC is future work
/// (transactions), and would need the tree to order and search by version too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    pub version: u64,
    pub value: Value,
}

impl Entry {
    pub fn encoded_len(&self) -> usize {
        2 + 1
            + 8
            + self.key.len()
            + match &self.value {
                Value::Inline(v) => 4 + v.len(),
                Value::Extent { .. } => 8 + 4 + 4 + 8,
            }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Leaf(Vec<Entry>),
    /// `keys[i]` separates `children[i]` (keys below it) from `children[i + 1]`.
    Inner {
        keys: Vec<Key>,
        children: Vec<u64>,
    },
}

/// Bytes a decoded node takes in memory: its vectors' capacity and what its keys and values
/// hold on the heap (rounded to the allocator's 16-byte classes). Measured against the 4 KiB
/// of its page: 0.6x for leaves of 1000-byte values, 1.4-1.9x for leaves of short keys and
/// empty values (index entries), so the pool budgets by this, not by pages.
pub fn node_memory(node: &Node) -> usize {
    match node {
        Node::Leaf(entries) => {
            entries.capacity() * std::mem::size_of::<Entry>()
                + entries
                    .iter()
                    .map(|e| {
                        e.key.heap_bytes()
                            + match &e.value {
                                Value::Inline(v) => v.capacity().div_ceil(16) * 16,
                                Value::Extent { .. } => 0,
                            }
                    })
                    .sum::<usize>()
        }
        Node::Inner { keys, children } => {
            keys.capacity() * std::mem::size_of::<Key>()
                + keys.iter().map(Key::heap_bytes).sum::<usize>()
                + children.capacity() * std::mem::size_of::<u64>()
        }
    }
}

/// Bytes a node takes on its page, header included.
pub fn node_size(node: &Node) -> usize {
    HEADER_SIZE
        + 4
        + match node {
            Node::Leaf(entries) => entries.iter().map(Entry::encoded_len).sum::<usize>(),
            Node::Inner { keys, .. } => 8 + keys.iter().map(|k| 2 + k.len() + 8).sum::<usize>(),
        }
}

pub fn encode_node(node: &Node, id: u64, lsn: u64, epoch: u64, page: &mut [u8]) {
    debug_assert!(node_size(node) <= PAGE_SIZE, "node overflows its page");
    page[..PAGE_SIZE].fill(0);
    let page_type = match node {
        Node::Leaf(_) => PageType::Leaf,
        Node::Inner { .. } => PageType::Inner,
    };
    put_header(
        page,
        &Header {
            id,
            page_type,
            lsn,
            epoch,
        },
    );
    let mut at = HEADER_SIZE;
    let mut put = |bytes: &[u8]| {
        page[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    match node {
        Node::Leaf(entries) => {
            put(&(entries.len() as u32).to_le_bytes());
            for e in entries {
                put(&(e.key.len() as u16).to_le_bytes());
                match &e.value {
                    Value::Inline(v) => {
                        put(&[0]);
                        put(&e.version.to_le_bytes());
                        put(&e.key);
                        put(&(v.len() as u32).to_le_bytes());
                        put(v);
                    }
                    Value::Extent {
                        first,
                        pages,
                        len,
                        lsn,
                    } => {
                        put(&[1]);
                        put(&e.version.to_le_bytes());
                        put(&e.key);
                        put(&first.to_le_bytes());
                        put(&pages.to_le_bytes());
                        put(&len.to_le_bytes());
                        put(&lsn.to_le_bytes());
                    }
                }
            }
        }
        Node::Inner { keys, children } => {
            put(&(keys.len() as u32).to_le_bytes());
            put(&children[0].to_le_bytes());
            for (key, child) in keys.iter().zip(&children[1..]) {
                put(&(key.len() as u16).to_le_bytes());
                put(key);
                put(&child.to_le_bytes());
            }
        }
    }
    seal_checksum(&mut page[..PAGE_SIZE]);
}

/// A bounds-checked reader over a page body.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    page: u64,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PageError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                err(
                    self.page,
                    format!("body overruns the page at byte {}", self.at),
                )
            })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PageError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PageError> {
        Ok(u16_at(self.take(2)?, 0))
    }
    fn u32(&mut self) -> Result<u32, PageError> {
        Ok(u32_at(self.take(4)?, 0))
    }
    fn u64(&mut self) -> Result<u64, PageError> {
        Ok(u64_at(self.take(8)?, 0))
    }
}

/// Decodes a tree page (after [`check_header`]); returns the node and its header.
pub fn decode_node(bytes: &[u8], id: u64) -> Result<(Node, Header), PageError> {
    let header = check_header(bytes, id)?;
    let mut r = Reader {
        bytes: &bytes[..PAGE_SIZE],
        at: HEADER_SIZE,
        page: id,
    };
    let count = r.u32()? as usize;
    let node = match header.page_type {
        PageType::Leaf => {
            let mut entries = Vec::with_capacity(count.min(PAGE_SIZE / 16));
            for _ in 0..count {
                let key_len = r.u16()? as usize;
                let kind = r.u8()?;
                let version = r.u64()?;
                let key = r.take(key_len)?.to_vec();
                let value = match kind {
                    0 => {
                        let len = r.u32()? as usize;
                        Value::Inline(r.take(len)?.to_vec())
                    }
                    1 => Value::Extent {
                        first: r.u64()?,
                        pages: r.u32()?,
                        len: r.u32()?,
                        lsn: r.u64()?,
                    },
                    other => return Err(err(id, format!("unknown value kind {other}"))),
                };
                let key = Key::from(key);
                if let Some(last) = entries.last() {
                    let last: &Entry = last;
                    if last.key >= key {
                        return Err(err(id, "leaf keys out of order"));
                    }
                }
                entries.push(Entry {
                    key,
                    version,
                    value,
                });
            }
            Node::Leaf(entries)
        }
        PageType::Inner => {
            if count == 0 {
                return Err(err(id, "inner node without keys"));
            }
            let mut keys = Vec::with_capacity(count.min(PAGE_SIZE / 10));
            let mut children = Vec::with_capacity(count.min(PAGE_SIZE / 10) + 1);
            children.push(r.u64()?);
            for _ in 0..count {
                let len = r.u16()? as usize;
                let key = Key::new(r.take(len)?);
                if keys.last().is_some_and(|last: &Key| *last >= key) {
                    return Err(err(id, "inner keys out of order"));
                }
                keys.push(key);
                children.push(r.u64()?);
            }
            Node::Inner { keys, children }
        }
        other => return Err(err(id, format!("expected a tree page, found {other:?}"))),
    };
    Ok((node, header))
}

/// Pages an extent of `len` value bytes takes.
pub fn extent_pages(len: usize) -> u32 {
    (EXTENT_DATA_OFFSET + len).div_ceil(PAGE_SIZE) as u32
}

/// Encodes `value` as an extent starting at page `first` into `out` (a whole number of pages).
pub fn encode_extent(value: &[u8], first: u64, lsn: u64, epoch: u64, out: &mut [u8]) {
    let total = extent_pages(value.len()) as usize * PAGE_SIZE;
    out[..total].fill(0);
    put_header(
        out,
        &Header {
            id: first,
            page_type: PageType::Extent,
            lsn,
            epoch,
        },
    );
    out[HEADER_SIZE..EXTENT_DATA_OFFSET].copy_from_slice(&(value.len() as u32).to_le_bytes());
    out[EXTENT_DATA_OFFSET..EXTENT_DATA_OFFSET + value.len()].copy_from_slice(value);
    seal_checksum(&mut out[..total]);
}

/// Checks an extent read back from disk against what its leaf entry says; returns the value.
pub fn decode_extent(bytes: &[u8], first: u64, len: u32, lsn: u64) -> Result<Vec<u8>, PageError> {
    let total = extent_pages(len as usize) as usize * PAGE_SIZE;
    if bytes.len() < total {
        return Err(err(
            first,
            format!("short extent read: {} bytes", bytes.len()),
        ));
    }
    let bytes = &bytes[..total];
    let stored = u32_at(bytes, 0);
    if stored != crc32c::crc32c(&bytes[4..]) {
        return Err(err(first, "extent checksum mismatch"));
    }
    let id = u64_at(bytes, 4);
    if id != first || bytes[12] != PageType::Extent as u8 {
        return Err(err(first, "not the extent the leaf points to"));
    }
    if u64_at(bytes, 16) != lsn || u32_at(bytes, HEADER_SIZE) != len {
        return Err(err(first, "extent was rewritten (stale pointer)"));
    }
    Ok(bytes[EXTENT_DATA_OFFSET..EXTENT_DATA_OFFSET + len as usize].to_vec())
}

/// Page ids one free-list page holds.
pub const FREE_IDS_PER_PAGE: usize = (PAGE_SIZE - HEADER_SIZE - 12) / 8;

/// Encodes a free-list page: `ids`, and the next page of the list (0 for none).
pub fn encode_free_list(ids: &[u64], id: u64, next: u64, epoch: u64, page: &mut [u8]) {
    assert!(ids.len() <= FREE_IDS_PER_PAGE);
    page[..PAGE_SIZE].fill(0);
    put_header(
        page,
        &Header {
            id,
            page_type: PageType::FreeList,
            lsn: 0,
            epoch,
        },
    );
    page[HEADER_SIZE..HEADER_SIZE + 8].copy_from_slice(&next.to_le_bytes());
    page[HEADER_SIZE + 8..HEADER_SIZE + 12].copy_from_slice(&(ids.len() as u32).to_le_bytes());
    for (i, free) in ids.iter().enumerate() {
        let at = HEADER_SIZE + 12 + i * 8;
        page[at..at + 8].copy_from_slice(&free.to_le_bytes());
    }
    seal_checksum(&mut page[..PAGE_SIZE]);
}

/// Decodes a free-list page: its ids and the next page.
pub fn decode_free_list(bytes: &[u8], id: u64) -> Result<(Vec<u64>, u64), PageError> {
    let header = check_header(bytes, id)?;
    if header.page_type != PageType::FreeList {
        return Err(err(
            id,
            format!("expected a free-list page, found {:?}", header.page_type),
        ));
    }
    let next = u64_at(bytes, HEADER_SIZE);
    let count = u32_at(bytes, HEADER_SIZE + 8) as usize;
    if count > FREE_IDS_PER_PAGE {
        return Err(err(id, format!("free-list count {count} too large")));
    }
    let ids = (0..count)
        .map(|i| u64_at(bytes, HEADER_SIZE + 12 + i * 8))
        .collect();
    Ok((ids, next))
}

/// The state a checkpoint records. Meta pages 0 and 1 alternate: checkpoint `seq` goes to
/// page `seq % 2`, so a torn meta write leaves the previous checkpoint intact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub shard: u32,
    /// Checkpoint sequence number, which is also the epoch it sealed.
    pub seq: u64,
    /// The last log entry wholly reflected in the tree...
    pub applied_index: u64,
    pub applied_term: u64,
    /// ...and how many commands of the entry after it are too (a checkpoint can fall between
    /// two commands of one batch).
    pub partial_commands: u32,
    pub last_version: u64,
    pub key_count: u64,
    /// Root page, or 0 for an empty tree.
    pub root: u64,
    pub height: u32,
    /// Pages in the file (the next page id to hand out past the free list).
    pub page_count: u64,
    pub free_head: u64,
    pub free_count: u64,
    /// Raft's term and vote when the checkpoint was taken (its log may be deleted).
    pub raft_term: u64,
    pub raft_vote: u64,
    /// Documents in the tree (key space 2); None in a checkpoint written before kvs counted
    /// them (its bytes there are zero: no marker).
    pub doc_count: Option<u64>,
}

/// Precedes `Meta::doc_count` in a meta page that records it.
const DOC_COUNT_MARKER: u32 = 0x444f_4353;

pub fn encode_meta(meta: &Meta, page: &mut [u8]) {
    page[..PAGE_SIZE].fill(0);
    let id = meta.seq % 2;
    put_header(
        page,
        &Header {
            id,
            page_type: PageType::Meta,
            lsn: meta.applied_index,
            epoch: meta.seq,
        },
    );
    let mut at = HEADER_SIZE;
    let mut put = |bytes: &[u8]| {
        page[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(META_MAGIC);
    put(&FORMAT_VERSION.to_le_bytes());
    put(&meta.shard.to_le_bytes());
    put(&meta.seq.to_le_bytes());
    put(&meta.applied_index.to_le_bytes());
    put(&meta.applied_term.to_le_bytes());
    put(&meta.partial_commands.to_le_bytes());
    put(&meta.height.to_le_bytes());
    put(&meta.last_version.to_le_bytes());
    put(&meta.key_count.to_le_bytes());
    put(&meta.root.to_le_bytes());
    put(&meta.page_count.to_le_bytes());
    put(&meta.free_head.to_le_bytes());
    put(&meta.free_count.to_le_bytes());
    put(&meta.raft_term.to_le_bytes());
    put(&meta.raft_vote.to_le_bytes());
    if let Some(count) = meta.doc_count {
        put(&DOC_COUNT_MARKER.to_le_bytes());
        put(&count.to_le_bytes());
    }
    seal_checksum(&mut page[..PAGE_SIZE]);
}

pub fn decode_meta(bytes: &[u8], id: u64) -> Result<Meta, PageError> {
    let header = check_header(bytes, id)?;
    if header.page_type != PageType::Meta {
        return Err(err(id, "not a meta page"));
    }
    let mut r = Reader {
        bytes: &bytes[..PAGE_SIZE],
        at: HEADER_SIZE,
        page: id,
    };
    if r.take(8)? != META_MAGIC {
        return Err(err(id, "bad meta magic"));
    }
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(err(
            id,
            format!("page format version {version}, expected {FORMAT_VERSION}"),
        ));
    }
    let meta = Meta {
        shard: r.u32()?,
        seq: r.u64()?,
        applied_index: r.u64()?,
        applied_term: r.u64()?,
        partial_commands: r.u32()?,
        height: r.u32()?,
        last_version: r.u64()?,
        key_count: r.u64()?,
        root: r.u64()?,
        page_count: r.u64()?,
        free_head: r.u64()?,
        free_count: r.u64()?,
        raft_term: r.u64()?,
        raft_vote: r.u64()?,
        doc_count: match r.u32()? {
            DOC_COUNT_MARKER => Some(r.u64()?),
            _ => None,
        },
    };
    if meta.seq % 2 != id {
        return Err(err(
            id,
            format!("checkpoint {} in the wrong meta slot", meta.seq),
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_leaf() -> Node {
        Node::Leaf(vec![
            Entry {
                key: Key::new(b"a"),
                version: 7,
                value: Value::Inline(b"one".to_vec()),
            },
            Entry {
                key: Key::new(b"b"),
                version: 9,
                value: Value::Extent {
                    first: 40,
                    pages: 3,
                    len: 9000,
                    lsn: 12,
                },
            },
        ])
    }

    #[test]
    fn nodes_round_trip_and_detect_damage() {
        let mut page = vec![0u8; PAGE_SIZE];
        for node in [
            sample_leaf(),
            Node::Inner {
                keys: vec![Key::new(b"m"), Key::new(b"t")],
                children: vec![5, 6, 7],
            },
        ] {
            encode_node(&node, 33, 100, 4, &mut page);
            let (back, header) = decode_node(&page, 33).unwrap();
            assert_eq!(back, node);
            assert_eq!((header.lsn, header.epoch), (100, 4));
            assert!(decode_node(&page, 34).is_err(), "wrong page id");
            let mut torn = page.clone();
            torn[HEADER_SIZE + 6] ^= 0x20;
            assert!(decode_node(&torn, 33).is_err(), "torn page");
        }
    }

    #[test]
    fn meta_and_free_list_round_trip() {
        let meta = Meta {
            shard: 1,
            seq: 5,
            applied_index: 99,
            applied_term: 2,
            partial_commands: 3,
            last_version: 1000,
            key_count: 10,
            root: 17,
            height: 2,
            page_count: 64,
            free_head: 20,
            free_count: 4,
            raft_term: 2,
            raft_vote: 1,
            doc_count: Some(7),
        };
        let mut page = vec![0u8; PAGE_SIZE];
        encode_meta(&meta, &mut page);
        assert_eq!(decode_meta(&page, 1).unwrap(), meta);
        assert!(decode_meta(&page, 0).is_err());
        encode_free_list(&[3, 4, 9], 20, 0, 5, &mut page);
        assert_eq!(decode_free_list(&page, 20).unwrap(), (vec![3, 4, 9], 0));
    }

    #[test]
    fn extents_round_trip_and_reject_stale_pointers() {
        let value: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let pages = extent_pages(value.len());
        let mut bytes = vec![0u8; pages as usize * PAGE_SIZE];
        encode_extent(&value, 50, 8, 1, &mut bytes);
        assert_eq!(
            decode_extent(&bytes, 50, value.len() as u32, 8).unwrap(),
            value
        );
        assert!(decode_extent(&bytes, 50, value.len() as u32, 9).is_err());
        assert!(decode_extent(&bytes, 51, value.len() as u32, 8).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn decoding_random_pages_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..PAGE_SIZE),
            kind in 0u8..7,
        ) {
            let mut page = vec![0u8; PAGE_SIZE];
            page[HEADER_SIZE..HEADER_SIZE + body.len().min(PAGE_SIZE - HEADER_SIZE)]
                .copy_from_slice(&body[..body.len().min(PAGE_SIZE - HEADER_SIZE)]);
            page[4..12].copy_from_slice(&9u64.to_le_bytes());
            page[12] = kind;
            seal_checksum(&mut page);
            let _ = decode_node(&page, 9);
            let _ = decode_free_list(&page, 9);
            let _ = decode_meta(&page, 1);
        }
    }
}
