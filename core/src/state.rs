//! The state machine a shard's log is applied to.
//!
//! [`StateMachine`] is the seam between Raft and storage: Raft hands it committed batches in
//! log order, the request path reads from it. [`MemStore`] keeps everything in an ordered map
//! rebuilt from the log at start; the paged B+tree replaces it behind the same trait.
//!
//! Versions (ADR 0023): every command takes `max(last version + 1, its batch's floor)`, and all
//! of its writes share it; the floor comes from the proposing node's hybrid clock and is in
//! the entry. Replay applies the same entries in the same order, so versions are
//! deterministic and survive restarts.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::command::{decode_batch_meta, BatchDecodeError, Command};
use crate::doc::command::DocErrorKind;
pub use crate::result::CommandResult;
use crate::sessions::SessionRecord;

/// A value and the version of the write that stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub version: u64,
    pub value: Vec<u8>,
}

/// A shard's replicated state.
pub trait StateMachine {
    /// Applies the batch entry at log `index`; returns one result per command. Entries are
    /// applied exactly once each, in index order.
    fn apply(&mut self, index: u64, batch: &[u8]) -> Result<Vec<CommandResult>, BatchDecodeError>;
    /// Records that `index` (an entry without commands, such as a leader's no-op) is applied.
    fn skip(&mut self, index: u64);
    fn get(&self, key: &[u8]) -> Option<Versioned>;
    /// Up to `limit` pairs with keys in `[start, end)`, in key order.
    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)>;
    fn applied_index(&self) -> u64;
    fn key_count(&self) -> u64;
}

/// The in-memory state machine: an ordered map.
#[derive(Debug, Default)]
pub struct MemStore {
    map: BTreeMap<Vec<u8>, Versioned>,
    applied_index: u64,
    last_version: u64,
    /// The version of the command being applied.
    command_version: Option<u64>,
    /// Client sessions' records (ADR 0018), as the paged store keeps them in its tree.
    sessions: BTreeMap<u64, SessionRecord>,
    /// Prepared transactions' commands and recorded decisions (ADR 0022).
    prepared: BTreeMap<u64, Vec<Command>>,
    decided: BTreeMap<u64, (bool, u64)>,
}

impl MemStore {
    pub fn new() -> Self {
        MemStore::default()
    }

    /// The version a write of the current command takes.
    fn next_version(&mut self) -> u64 {
        self.command_version
            .expect("writes happen inside a command being applied")
    }

    /// Moves the current command (or transaction part) to `version`, which may lie below
    /// the last one (a participant's part of a transaction decided elsewhere).
    fn fix_version(&mut self, version: u64) {
        self.last_version = self.last_version.max(version);
        self.command_version = Some(version);
    }

    fn apply_command(&mut self, command: Command) -> CommandResult {
        match command {
            Command::Put { key, value } => {
                let version = self.next_version();
                self.map.insert(key, Versioned { version, value });
                CommandResult::Written { version }
            }
            Command::Delete { key } => CommandResult::Deleted {
                existed: self.map.remove(&key).is_some(),
            },
            Command::Cas {
                key,
                expected_version,
                value,
            } => {
                let current = self.map.get(&key).map_or(0, |v| v.version);
                if current != expected_version {
                    return CommandResult::VersionMismatch { current };
                }
                match value {
                    Some(value) => {
                        let version = self.next_version();
                        self.map.insert(key, Versioned { version, value });
                        CommandResult::Written { version }
                    }
                    None => {
                        self.map.remove(&key);
                        CommandResult::Written { version: 0 }
                    }
                }
            }
            Command::PutMany { pairs } => {
                let versions = pairs
                    .into_iter()
                    .map(|(key, value)| {
                        let version = self.next_version();
                        self.map.insert(key, Versioned { version, value });
                        version
                    })
                    .collect();
                CommandResult::WrittenMany { versions }
            }
            Command::Increment { key, delta } => {
                let current = match self.map.get(&key) {
                    None => 0,
                    Some(v) => match std::str::from_utf8(&v.value)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => {
                            return CommandResult::Refused {
                                reason: "value is not an integer or out of range".into(),
                            }
                        }
                    },
                };
                let Some(value) = current.checked_add(delta) else {
                    return CommandResult::Refused {
                        reason: "increment or decrement would overflow".into(),
                    };
                };
                let version = self.next_version();
                self.map.insert(
                    key,
                    Versioned {
                        version,
                        value: value.to_string().into_bytes(),
                    },
                );
                CommandResult::Integer { value }
            }
            Command::Append { key, value } => {
                let mut joined = self
                    .map
                    .get(&key)
                    .map(|v| v.value.clone())
                    .unwrap_or_default();
                if joined.len() + value.len() > crate::limits::VALUE_SIZE_MAX {
                    return CommandResult::Refused {
                        reason: "the value would exceed 16 MiB".into(),
                    };
                }
                joined.extend_from_slice(&value);
                let length = joined.len() as i64;
                let version = self.next_version();
                self.map.insert(
                    key,
                    Versioned {
                        version,
                        value: joined,
                    },
                );
                CommandResult::Integer { value: length }
            }
            Command::GetAndPut { key, value } => {
                let version = self.next_version();
                let previous = self
                    .map
                    .insert(key, Versioned { version, value })
                    .map(|v| v.value);
                CommandResult::Replaced { previous }
            }
            // Placement is the paged store's (and the cluster's) business; the model keeps
            // key-value pairs only.
            Command::SetPreferredLeader { .. } => CommandResult::Written { version: 0 },
            Command::Once {
                session,
                seq,
                acked_below,
                at_ms,
                command,
            } => {
                let mut record = self.sessions.remove(&session).unwrap_or_default();
                let result = match record.before_apply(session, seq, acked_below, at_ms) {
                    Some(answer) => answer,
                    None => {
                        let result = self.apply_command(*command);
                        record.record(seq, result.clone());
                        result
                    }
                };
                self.sessions.insert(session, record);
                result
            }
            Command::ExpireSessions { before_ms } => {
                let before = self.sessions.len();
                self.sessions.retain(|_, record| record.at_ms >= before_ms);
                CommandResult::Integer {
                    value: (before - self.sessions.len()) as i64,
                }
            }
            // The model keeps key-value pairs only; documents live in the paged store.
            Command::Document { .. } => CommandResult::DocumentRefused {
                kind: DocErrorKind::BadRequest,
                message: "the in-memory model holds no documents".into(),
            },
            Command::PutIfExists { key, value } => {
                if !self.map.contains_key(&key) {
                    return CommandResult::Skipped;
                }
                let version = self.next_version();
                self.map.insert(key, Versioned { version, value });
                CommandResult::Written { version }
            }
            Command::Read { key } => CommandResult::Value {
                found: self.map.get(&key).map(|v| (v.version, v.value.clone())),
            },
            Command::Txn { commands, .. } => self.apply_steps(commands),
            Command::TxnPrepare { txn, commands, .. } => {
                if matches!(self.decided.get(&txn), Some((false, _))) {
                    return CommandResult::Decided {
                        commit: false,
                        version: 0,
                    };
                }
                self.prepared.insert(txn, commands);
                CommandResult::Decided {
                    commit: true,
                    version: self.next_version(),
                }
            }
            Command::TxnDecide {
                txn,
                commit,
                at_least,
            } => {
                if let Some(&(commit, version)) = self.decided.get(&txn) {
                    return CommandResult::Decided { commit, version };
                }
                let version = if commit {
                    let version = self.next_version().max(at_least);
                    self.fix_version(version);
                    version
                } else {
                    0
                };
                self.decided.insert(txn, (commit, version));
                match self.finish_prepared(txn, commit) {
                    Some(result @ CommandResult::Many { .. }) => result,
                    _ => CommandResult::Decided { commit, version },
                }
            }
            Command::TxnResolve {
                txn,
                commit,
                version,
            } => {
                if commit && version != 0 {
                    self.fix_version(version);
                }
                self.finish_prepared(txn, commit)
                    .unwrap_or(CommandResult::Decided { commit, version })
            }
            Command::TxnForget { txn } => {
                self.decided.remove(&txn);
                CommandResult::Skipped
            }
        }
    }

    fn apply_steps(&mut self, commands: Vec<Command>) -> CommandResult {
        CommandResult::Many {
            version: self.next_version(),
            results: commands
                .into_iter()
                .map(|c| self.apply_command(c))
                .collect(),
        }
    }

    fn finish_prepared(&mut self, txn: u64, commit: bool) -> Option<CommandResult> {
        let commands = self.prepared.remove(&txn)?;
        Some(if commit {
            self.apply_steps(commands)
        } else {
            CommandResult::Decided {
                commit: false,
                version: 0,
            }
        })
    }
}

impl StateMachine for MemStore {
    fn apply(&mut self, index: u64, batch: &[u8]) -> Result<Vec<CommandResult>, BatchDecodeError> {
        assert!(
            index > self.applied_index,
            "entry {index} applied twice or out of order"
        );
        let (commands, meta) = decode_batch_meta(batch)?;
        let results = commands
            .into_iter()
            .map(|c| {
                self.last_version = (self.last_version + 1).max(meta.floor);
                self.command_version = Some(self.last_version);
                let result = self.apply_command(c);
                self.command_version = None;
                result
            })
            .collect();
        self.applied_index = index;
        Ok(results)
    }

    fn skip(&mut self, index: u64) {
        assert!(
            index > self.applied_index,
            "entry {index} applied twice or out of order"
        );
        self.applied_index = index;
    }

    fn get(&self, key: &[u8]) -> Option<Versioned> {
        self.map.get(key).cloned()
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let upper = match end {
            Some(end) if end <= start => return Vec::new(),
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.map
            .range::<[u8], _>((Bound::Included(start), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }

    fn applied_index(&self) -> u64 {
        self.applied_index
    }

    fn key_count(&self) -> u64 {
        self.map.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::BatchEncoder;
    use proptest::prelude::*;

    fn batch(commands: &[Command]) -> Vec<u8> {
        let mut encoder = BatchEncoder::new();
        for c in commands {
            encoder.push(c);
        }
        encoder.finish()
    }

    fn put(k: &str, v: &str) -> Command {
        Command::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn put_get_delete_scan() {
        let mut store = MemStore::new();
        let results = store
            .apply(1, &batch(&[put("b", "2"), put("a", "1"), put("c", "3")]))
            .unwrap();
        assert_eq!(results[0], CommandResult::Written { version: 1 });
        assert_eq!(
            store.get(b"a").unwrap(),
            Versioned {
                version: 2,
                value: b"1".to_vec()
            }
        );
        let results = store
            .apply(2, &batch(&[Command::Delete { key: b"b".to_vec() }]))
            .unwrap();
        assert_eq!(results, vec![CommandResult::Deleted { existed: true }]);
        assert_eq!(store.get(b"b"), None);
        assert_eq!(store.scan(b"", None, 10).len(), 2);
        assert_eq!(
            store.scan(b"b", None, 10),
            vec![(b"c".to_vec(), b"3".to_vec())]
        );
        assert_eq!(
            store.scan(b"a", Some(b"c"), 10),
            vec![(b"a".to_vec(), b"1".to_vec())]
        );
        assert_eq!(store.scan(b"c", Some(b"a"), 10), vec![]);
        assert_eq!(store.key_count(), 2);
        assert_eq!(store.applied_index(), 2);
    }

    #[test]
    fn compare_and_set() {
        let mut store = MemStore::new();
        let cas = |expected, value: Option<&str>| Command::Cas {
            key: b"k".to_vec(),
            expected_version: expected,
            value: value.map(|v| v.as_bytes().to_vec()),
        };
        let r = store
            .apply(1, &batch(&[cas(0, Some("a")), cas(0, Some("b"))]))
            .unwrap();
        assert_eq!(
            r,
            vec![
                CommandResult::Written { version: 1 },
                CommandResult::VersionMismatch { current: 1 }
            ]
        );
        // Every command takes a version, a refused one too (the second CAS took 2).
        let r = store
            .apply(2, &batch(&[cas(1, Some("c")), cas(3, None)]))
            .unwrap();
        assert_eq!(
            r,
            vec![
                CommandResult::Written { version: 3 },
                CommandResult::Written { version: 0 }
            ]
        );
        assert_eq!(store.get(b"k"), None);
    }

    #[test]
    fn read_modify_write_commands() {
        let mut store = MemStore::new();
        let key = || b"n".to_vec();
        let r = store
            .apply(
                1,
                &batch(&[
                    Command::Increment {
                        key: key(),
                        delta: 5,
                    },
                    Command::Increment {
                        key: key(),
                        delta: -7,
                    },
                    Command::Append {
                        key: b"s".to_vec(),
                        value: b"ab".to_vec(),
                    },
                    Command::Append {
                        key: b"s".to_vec(),
                        value: b"c".to_vec(),
                    },
                    Command::GetAndPut {
                        key: b"s".to_vec(),
                        value: b"x".to_vec(),
                    },
                    Command::GetAndPut {
                        key: b"t".to_vec(),
                        value: b"y".to_vec(),
                    },
                    Command::PutIfExists {
                        key: b"u".to_vec(),
                        value: b"z".to_vec(),
                    },
                    Command::PutIfExists {
                        key: b"t".to_vec(),
                        value: b"z".to_vec(),
                    },
                    Command::Increment {
                        key: b"s".to_vec(),
                        delta: 1,
                    },
                    Command::Increment {
                        key: key(),
                        delta: i64::MAX,
                    },
                    Command::Increment {
                        key: key(),
                        delta: i64::MIN,
                    },
                    Command::Increment {
                        key: key(),
                        delta: i64::MIN,
                    },
                ]),
            )
            .unwrap();
        assert_eq!(r[0], CommandResult::Integer { value: 5 });
        assert_eq!(r[1], CommandResult::Integer { value: -2 });
        assert_eq!(r[2], CommandResult::Integer { value: 2 });
        assert_eq!(r[3], CommandResult::Integer { value: 3 });
        assert_eq!(
            r[4],
            CommandResult::Replaced {
                previous: Some(b"abc".to_vec())
            }
        );
        assert_eq!(r[5], CommandResult::Replaced { previous: None });
        assert_eq!(r[6], CommandResult::Skipped);
        assert!(matches!(r[7], CommandResult::Written { .. }));
        assert!(matches!(r[8], CommandResult::Refused { .. }), "{:?}", r[8]);
        assert_eq!(
            r[9],
            CommandResult::Integer {
                value: i64::MAX - 2
            }
        );
        assert_eq!(r[10], CommandResult::Integer { value: -3 });
        assert!(
            matches!(r[11], CommandResult::Refused { .. }),
            "overflow is refused"
        );
        assert_eq!(store.get(b"n").unwrap().value, b"-3");
        assert_eq!(store.get(b"u"), None);
        assert_eq!(store.get(b"t").unwrap().value, b"z");
    }

    proptest! {
        /// The store agrees with a plain map under any sequence of puts and deletes.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..2, 0u8..16, any::<u8>()), 1..200)) {
            let mut store = MemStore::new();
            let mut model = BTreeMap::new();
            for (i, (op, key, value)) in ops.into_iter().enumerate() {
                let key = vec![key];
                let command = if op == 0 {
                    model.insert(key.clone(), vec![value]);
                    Command::Put { key, value: vec![value] }
                } else {
                    model.remove(&key);
                    Command::Delete { key }
                };
                store.apply(i as u64 + 1, &batch(&[command])).unwrap();
            }
            let scanned = store.scan(b"", None, usize::MAX);
            let expected: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(scanned, expected);
        }
    }
}
