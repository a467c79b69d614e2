//! What a transaction locks, by name (ADR 0022, and ADR 0024 for documents): a key-value key,
//! or a collection's documents on one shard. The lock table knows only byte strings; a name
//! starts with a tag byte, so a key never stands for a collection nor a collection for a key,
//! and every key-value name sorts below every collection name (a scan's range with no end
//! stops at the last key, never taking in the collections).
//!
//! Everything that turns a key or a command into a lock name is here: the coordinators that
//! ask for locks (`txn`, `resp_multi`), and the shard gate that checks a commit or a write
//! outside transactions against them (`shard_txn`, prepared records held again).

use kvs_core::command::Command;
use kvs_core::doc::command::DocCommand;

/// The tag of a key-value key's name.
const KEY: u8 = b'k';
/// The tag of a collection's name: above every key's.
const COLLECTION: u8 = b'm';
const _: () = assert!(COLLECTION > KEY + 1);

/// The lock name of key-value key `key`.
pub fn key(key: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(1 + key.len());
    name.push(KEY);
    name.extend_from_slice(key);
    name
}

/// The lock names of key-value keys `[start, end)`; `None` end: to the last key.
pub fn key_range(start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Option<Vec<u8>>) {
    let end = match end {
        Some(end) => key(end),
        None => vec![KEY + 1],
    };
    (key(start), Some(end))
}

/// The lock name of collection `coll`'s documents (on the shard that keeps the lock).
pub fn collection(coll: &str) -> Vec<u8> {
    let mut name = Vec::with_capacity(1 + coll.len());
    name.push(COLLECTION);
    name.extend_from_slice(coll.as_bytes());
    name
}

/// The collection a document command changes: its documents, or what may be stored in them
/// (an index's definition, which a transaction's documents must keep to). An index build's
/// step changes neither: it only adds entries for documents already there.
fn written_collection(body: &[u8]) -> Option<String> {
    let command = DocCommand::decode(body).ok()?;
    match command {
        DocCommand::BuildIndex { .. } => None,
        command => Some(command.coll().to_string()),
    }
}

/// What a write or a transaction step locks: its names, each with whether it writes it (a
/// `Read` step only reads its key). A document command locks its collection.
pub fn of_command(command: &Command) -> Vec<(Vec<u8>, bool)> {
    match command.write() {
        Command::Document { body } => written_collection(body)
            .map(|coll| vec![(collection(&coll), true)])
            .unwrap_or_default(),
        Command::Read { key: k } => vec![(key(k), false)],
        other => other
            .step_keys()
            .into_iter()
            .map(|k| (key(k), true))
            .collect(),
    }
}

/// The names a prepared transaction's commands write or read, once each.
pub fn of_steps(commands: &[Command]) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = commands
        .iter()
        .flat_map(of_command)
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_collections_never_share_a_name_and_an_open_range_stops_at_the_keys() {
        // A key that spells a collection's name is still a key.
        assert_ne!(key(b"cpeople"), collection("people"));
        let (start, end) = key_range(b"", None);
        let end = end.unwrap();
        assert!(key(b"") >= start && key(&[0xFF; 8]) < end);
        assert!(collection("") >= end, "collections sort after every key");
    }

    #[test]
    fn a_command_locks_its_keys_or_its_collection() {
        let put = Command::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        };
        assert_eq!(of_command(&put), vec![(key(b"a"), true)]);
        let read = Command::Read { key: b"b".to_vec() };
        assert_eq!(of_command(&read), vec![(key(b"b"), false)]);
        let insert = DocCommand::Insert {
            coll: "people".into(),
            docs: Vec::new(),
        };
        let doc = Command::Document {
            body: insert.encode(),
        };
        assert_eq!(of_command(&doc), vec![(collection("people"), true)]);
        let build = DocCommand::BuildIndex {
            coll: "people".into(),
            name: "age_1".into(),
            batch: 10,
        };
        let build = Command::Document {
            body: build.encode(),
        };
        assert!(of_command(&build).is_empty());
        assert_eq!(
            of_steps(&[put.clone(), put, read]),
            vec![key(b"a"), key(b"b")]
        );
    }
}
