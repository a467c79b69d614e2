//! The documents half of `kvsd --verify`: every document has exactly the index entries its
//! indexed fields imply, and every entry belongs to a document that implies it. It works on
//! the records the tree walk of `store::verify` collected, so it reads nothing itself.

use std::collections::HashMap;

use super::catalog::Collection;
use super::keys::id_of;
use crate::doc::binary;
use crate::doc::index_key;

/// Checks documents against their indexes (for `kvsd --verify`): every document has
/// exactly the entries its indexed fields imply (a building index: those up to where it
/// got), and every entry belongs to a document that implies it.
pub(in crate::store) fn check_documents(
    catalog: Vec<(Vec<u8>, Vec<u8>)>,
    documents: Vec<(Vec<u8>, Vec<u8>)>,
    mut entries: HashMap<Vec<u8>, Vec<u8>>,
    problems: &mut Vec<String>,
) {
    let mut by_id: HashMap<u32, Collection> = HashMap::new();
    for (key, bytes) in catalog {
        if key.len() == 1 {
            continue;
        }
        match binary::from_bytes(&bytes)
            .ok()
            .as_ref()
            .and_then(Collection::from_value)
        {
            Some(coll) => {
                by_id.insert(coll.id, coll);
            }
            None => problems.push(format!(
                "catalogue record {:?} does not decode",
                String::from_utf8_lossy(&key[1..])
            )),
        }
    }
    for (key, bytes) in documents {
        let Some(coll_id) = key
            .get(1..5)
            .and_then(|b| b.try_into().ok().map(u32::from_be_bytes))
        else {
            problems.push(format!("document key {key:02x?} is too short"));
            continue;
        };
        let Some(coll) = by_id.get(&coll_id) else {
            problems.push(format!("document of unknown collection id {coll_id}"));
            continue;
        };
        let id_key = &key[5..];
        let doc = match binary::from_bytes(&bytes) {
            Ok(doc) => doc,
            Err(e) => {
                problems.push(format!("{}: document {id_key:02x?}: {e}", coll.name));
                continue;
            }
        };
        if index_key::key(id_of(&doc)) != id_key {
            problems.push(format!(
                "{}: document {} is stored under another _id",
                coll.name,
                id_of(&doc)
            ));
        }
        for def in &coll.indexes {
            let Ok((expected, _)) = def.entries_of(&doc, id_key) else {
                problems.push(format!(
                    "{}: document {} has an index key too large for {}",
                    coll.name,
                    id_of(&doc),
                    def.name
                ));
                continue;
            };
            let covered = def.ready
                || def
                    .built_to
                    .as_ref()
                    .is_some_and(|to| id_key <= index_key::key(to).as_slice());
            for entry in expected {
                match entries.remove(&entry) {
                    Some(owner) if owner == id_key => {}
                    Some(_) => problems.push(format!(
                        "{}: index {} entry of document {} names another document",
                        coll.name,
                        def.name,
                        id_of(&doc)
                    )),
                    None if covered => problems.push(format!(
                        "{}: document {} lacks its entry in index {}",
                        coll.name,
                        id_of(&doc),
                        def.name
                    )),
                    None => {}
                }
            }
        }
    }
    let mut orphans: Vec<&Vec<u8>> = entries.keys().collect();
    orphans.sort();
    for key in orphans.into_iter().take(10) {
        problems.push(format!(
            "index entry {key:02x?} has no document that implies it"
        ));
    }
    if entries.len() > 10 {
        problems.push(format!("{} more orphan index entries", entries.len() - 10));
    }
}
