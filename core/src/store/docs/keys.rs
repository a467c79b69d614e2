//! Where documents, index entries and catalogue records sit in the tree (the layout drawn in
//! [`super`]'s documentation), the key ranges reads and deletes walk, and the `_id` a
//! document is keyed by. Every other layer builds its keys here, so the layout is code once.

use crate::doc::index_key;
use crate::doc::plan::KeyRange;
use crate::doc::value::Value;
use crate::store::{SPACE_CATALOG, SPACE_DOC, SPACE_INDEX};

/// The first key of collection `id`'s documents.
pub fn doc_prefix(id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + 16);
    k.push(SPACE_DOC);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn doc_key(coll: u32, id_key: &[u8]) -> Vec<u8> {
    let mut k = doc_prefix(coll);
    k.extend_from_slice(id_key);
    k
}

/// The first key of index `id`'s entries.
pub fn index_prefix(id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + 32);
    k.push(SPACE_INDEX);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub(super) fn catalog_key(name: &str) -> Vec<u8> {
    let mut k = vec![SPACE_CATALOG];
    k.extend_from_slice(name.as_bytes());
    k
}

/// The smallest key above every key starting with `prefix`. Every prefix here starts with
/// its space's byte (never 0xFF), so there is one.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    crate::doc::plan::prefix_end(prefix).expect("a key prefix starts with its space byte")
}

/// Ranges of keys after `prefix` as ranges of tree keys.
pub(super) fn under(prefix: &[u8], ranges: &[KeyRange]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let with_prefix = |tail: &[u8]| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(tail);
        k
    };
    ranges
        .iter()
        .map(|(start, end)| {
            let end = match end {
                Some(end) => with_prefix(end),
                None => prefix_end(prefix),
            };
            (with_prefix(start), end)
        })
        .collect()
}

/// The key just after `key` (no key lies between them).
pub(super) fn just_after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// The `_id` of a stored document.
pub(super) fn id_of(doc: &Value) -> &Value {
    doc.get("_id").unwrap_or(&Value::Null)
}

/// Describes the owner of an index entry (its `_id` key) for an error message.
pub(super) fn index_key_owner(id_key: &[u8]) -> String {
    index_key::decode(id_key)
        .map(|v| v.to_string())
        .unwrap_or_else(|| format!("(key {id_key:02x?})"))
}
