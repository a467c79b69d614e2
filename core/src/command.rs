//! Commands carried by Raft entries, and their byte encoding.
//!
//! A normal Raft entry's data is one *batch*: every write that reached the shard while the
//! previous batch was being made durable. Layout (all integers little-endian; `bytes` is a
//! u32 length then the bytes):
//!
//! ```text
//! batch   := count:u32 command{count}
//! command := 1 key:bytes value:bytes                      PUT
//!          | 2 key:bytes                                  DELETE
//!          | 3 key:bytes expected:u64 0                   CAS delete
//!          | 3 key:bytes expected:u64 1 value:bytes       CAS write
//!          | 4 count:u32 (key:bytes value:bytes){count}   PUT_MANY (applied atomically)
//!          | 5 key:bytes delta:i64                        INCREMENT (decimal integer value)
//!          | 6 key:bytes value:bytes                      APPEND
//!          | 7 key:bytes value:bytes                      GET_AND_PUT (returns the old value)
//!          | 8 key:bytes value:bytes                      PUT_IF_EXISTS
//!          | 9 body:bytes                                 DOCUMENT (a `doc::command::DocCommand`)
//!          | 10 node:u64                                  SET_PREFERRED_LEADER
//!          | 11 session:u64 seq:u64 acked_below:u64 at_ms:u64 command
//!                                                         ONCE (a key-value write, ADR 0018)
//!          | 12 before_ms:u64                             EXPIRE_SESSIONS
//! ```
//!
//! Keys here are the user's keys; the store places them in its key-value space.

use crate::limits::{DOC_COMMAND_SIZE_MAX, KEY_SIZE_MAX, VALUE_SIZE_MAX};

/// One write to a shard's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Applies only when the key's version equals `expected_version` (0: key absent).
    Cas {
        key: Vec<u8>,
        expected_version: u64,
        value: Option<Vec<u8>>,
    },
    /// Several puts applied atomically.
    PutMany {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Adds `delta` to the key's value read as a decimal i64 (a missing key is 0).
    Increment {
        key: Vec<u8>,
        delta: i64,
    },
    /// Appends `value` to the key's value (a missing key is empty).
    Append {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Stores `value` and returns the value it replaced.
    GetAndPut {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Stores `value` only when the key exists.
    PutIfExists {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// A document write: a `doc::command::DocCommand` in its logged form.
    Document {
        body: Vec<u8>,
    },
    /// Records which member of the shard's Raft group should lead it (`kvs cluster
    /// transfer-leader`): kept in the shard's state, so every replica, a restarted node and
    /// a snapshot's receiver agree on it.
    SetPreferredLeader {
        node: u64,
    },
    /// A client's key-value write tagged with its session and sequence number (ADR 0018):
    /// applied at most once for each (session, seq); a retry gets the first application's
    /// result. `acked_below`: the client has every reply to the seqs below it, so their
    /// results may be forgotten. `at_ms`: the wall clock of the node that took the request,
    /// for expiry.
    Once {
        session: u64,
        seq: u64,
        acked_below: u64,
        at_ms: u64,
        command: Box<Command>,
    },
    /// Forgets the sessions last heard from before `before_ms` (ADR 0018).
    ExpireSessions {
        before_ms: u64,
    },
    /// A read of a key, inside a [`Command::Txn`] only: it sees the writes before it in the
    /// same transaction (Redis's EXEC runs its queued GETs this way).
    Read {
        key: Vec<u8>,
    },
    /// A transaction's part on one shard committed at once (ADR 0022): `commands`
    /// (key-value writes and reads) applied in order as one command, then the shard
    /// releases the transaction's locks.
    Txn {
        txn: u64,
        /// How many locks the transaction's coordinator took on this shard: the leader
        /// proposes the entry only if it holds that many (none lost with a leader change).
        locks: u32,
        commands: Vec<Command>,
    },
    /// Two-phase commit, phase one: the shard keeps `commands` (not applied) until the
    /// decision, which is recorded on shard `primary`. `coordinator`: the node that runs
    /// the transaction; `deadline_ms`: after it, anyone may decide to abort.
    TxnPrepare {
        txn: u64,
        /// As `Txn`'s.
        locks: u32,
        primary: u32,
        coordinator: u64,
        deadline_ms: u64,
        commands: Vec<Command>,
    },
    /// The decision, on the primary shard: the first one applied wins and every later one
    /// is answered with it; a commit also applies the primary's own prepared commands.
    /// `at_least`: the lowest commit version the coordinator accepts (above every
    /// participant's prepare, ADR 0023), 0 for a recovery's abort.
    TxnDecide {
        txn: u64,
        commit: bool,
        at_least: u64,
    },
    /// Phase two on a participant: applies (commit) or drops what it prepared. A commit's
    /// writes take exactly `version`, the one the primary decided at, so every shard holds
    /// the transaction at one version.
    TxnResolve {
        txn: u64,
        commit: bool,
        version: u64,
    },
    /// Drops the primary's decision record once every participant resolved.
    TxnForget {
        txn: u64,
    },
}

/// A batch entry that does not decode. Entries are checksummed, so this means a bug or a
/// format mismatch, never a torn write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed command batch: {0}")]
pub struct BatchDecodeError(pub String);

impl Command {
    /// Whether it is a write of the key-value space (what a [`Command::Once`] may carry).
    pub fn is_key_value_write(&self) -> bool {
        matches!(
            self,
            Command::Put { .. }
                | Command::Delete { .. }
                | Command::Cas { .. }
                | Command::PutMany { .. }
                | Command::Increment { .. }
                | Command::Append { .. }
                | Command::GetAndPut { .. }
                | Command::PutIfExists { .. }
        )
    }

    /// The write itself: the command a [`Command::Once`] carries, else this one.
    pub fn write(&self) -> &Command {
        match self {
            Command::Once { command, .. } => command,
            command => command,
        }
    }

    /// [`Command::write`], to change.
    pub fn write_mut(&mut self) -> &mut Command {
        match self {
            Command::Once { command, .. } => command,
            command => command,
        }
    }

    /// Bytes this command adds to a batch.
    pub fn encoded_len(&self) -> usize {
        match self {
            Command::Put { key, value } => 1 + 8 + key.len() + value.len(),
            Command::Delete { key } => 1 + 4 + key.len(),
            Command::Cas { key, value, .. } => {
                1 + 4 + key.len() + 8 + 1 + value.as_ref().map_or(0, |v| 4 + v.len())
            }
            Command::PutMany { pairs } => {
                1 + 4
                    + pairs
                        .iter()
                        .map(|(k, v)| 8 + k.len() + v.len())
                        .sum::<usize>()
            }
            Command::Increment { key, .. } => 1 + 4 + key.len() + 8,
            Command::Append { key, value }
            | Command::GetAndPut { key, value }
            | Command::PutIfExists { key, value } => 1 + 8 + key.len() + value.len(),
            Command::Document { body } => 1 + 4 + body.len(),
            Command::SetPreferredLeader { .. } => 1 + 8,
            Command::Once { command, .. } => 1 + 32 + command.encoded_len(),
            Command::ExpireSessions { .. } => 1 + 8,
            Command::Read { key } => 1 + 4 + key.len(),
            Command::Txn { commands, .. } => 1 + 8 + 4 + 4 + nested_len(commands),
            Command::TxnPrepare { commands, .. } => {
                1 + 8 + 4 + 4 + 8 + 8 + 4 + nested_len(commands)
            }
            Command::TxnDecide { .. } | Command::TxnResolve { .. } => 1 + 8 + 1 + 8,
            Command::TxnForget { .. } => 1 + 8,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        match self {
            Command::Put { key, value } => {
                out.push(1);
                bytes(out, key);
                bytes(out, value);
            }
            Command::Delete { key } => {
                out.push(2);
                bytes(out, key);
            }
            Command::Cas {
                key,
                expected_version,
                value,
            } => {
                out.push(3);
                bytes(out, key);
                out.extend_from_slice(&expected_version.to_le_bytes());
                match value {
                    Some(value) => {
                        out.push(1);
                        bytes(out, value);
                    }
                    None => out.push(0),
                }
            }
            Command::PutMany { pairs } => {
                out.push(4);
                out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
                for (key, value) in pairs {
                    bytes(out, key);
                    bytes(out, value);
                }
            }
            Command::Increment { key, delta } => {
                out.push(5);
                bytes(out, key);
                out.extend_from_slice(&delta.to_le_bytes());
            }
            Command::Append { key, value } => {
                out.push(6);
                bytes(out, key);
                bytes(out, value);
            }
            Command::GetAndPut { key, value } => {
                out.push(7);
                bytes(out, key);
                bytes(out, value);
            }
            Command::PutIfExists { key, value } => {
                out.push(8);
                bytes(out, key);
                bytes(out, value);
            }
            Command::Document { body } => {
                out.push(9);
                bytes(out, body);
            }
            Command::SetPreferredLeader { node } => {
                out.push(10);
                out.extend_from_slice(&node.to_le_bytes());
            }
            Command::Once {
                session,
                seq,
                acked_below,
                at_ms,
                command,
            } => {
                out.push(11);
                for n in [session, seq, acked_below, at_ms] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
                command.encode(out);
            }
            Command::ExpireSessions { before_ms } => {
                out.push(12);
                out.extend_from_slice(&before_ms.to_le_bytes());
            }
            Command::Read { key } => {
                out.push(13);
                bytes(out, key);
            }
            Command::Txn {
                txn,
                locks,
                commands,
            } => {
                out.push(14);
                out.extend_from_slice(&txn.to_le_bytes());
                out.extend_from_slice(&locks.to_le_bytes());
                encode_nested(out, commands);
            }
            Command::TxnPrepare {
                txn,
                locks,
                primary,
                coordinator,
                deadline_ms,
                commands,
            } => {
                out.push(15);
                out.extend_from_slice(&txn.to_le_bytes());
                out.extend_from_slice(&locks.to_le_bytes());
                out.extend_from_slice(&primary.to_le_bytes());
                out.extend_from_slice(&coordinator.to_le_bytes());
                out.extend_from_slice(&deadline_ms.to_le_bytes());
                encode_nested(out, commands);
            }
            Command::TxnDecide {
                txn,
                commit,
                at_least: version,
            }
            | Command::TxnResolve {
                txn,
                commit,
                version,
            } => {
                out.push(if matches!(self, Command::TxnDecide { .. }) {
                    16
                } else {
                    17
                });
                out.extend_from_slice(&txn.to_le_bytes());
                out.push(u8::from(*commit));
                out.extend_from_slice(&version.to_le_bytes());
            }
            Command::TxnForget { txn } => {
                out.push(18);
                out.extend_from_slice(&txn.to_le_bytes());
            }
        }
    }

    /// Whether it may be one of a transaction's commands: a key-value write, a read, or a
    /// document write (ADR 0024).
    pub fn is_transaction_step(&self) -> bool {
        self.is_key_value_write() || matches!(self, Command::Read { .. } | Command::Document { .. })
    }

    /// The user keys a transaction step reads or writes.
    pub fn step_keys(&self) -> Vec<&[u8]> {
        match self {
            Command::Put { key, .. }
            | Command::Delete { key }
            | Command::Cas { key, .. }
            | Command::Increment { key, .. }
            | Command::Append { key, .. }
            | Command::GetAndPut { key, .. }
            | Command::PutIfExists { key, .. }
            | Command::Read { key } => vec![key.as_slice()],
            Command::PutMany { pairs } => pairs.iter().map(|(k, _)| k.as_slice()).collect(),
            _ => Vec::new(),
        }
    }
}

fn nested_len(commands: &[Command]) -> usize {
    commands.iter().map(Command::encoded_len).sum()
}

/// A transaction's commands: a count, then each command.
fn encode_nested(out: &mut Vec<u8>, commands: &[Command]) {
    out.extend_from_slice(&(commands.len() as u32).to_le_bytes());
    for command in commands {
        command.encode(out);
    }
}

/// Encodes a transaction's commands on their own (a prepared transaction's record).
pub fn encode_steps(commands: &[Command]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + nested_len(commands));
    encode_nested(&mut out, commands);
    out
}

/// Decodes what [`encode_steps`] wrote.
pub fn decode_steps(bytes: &[u8]) -> Result<Vec<Command>, BatchDecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let commands = decode_nested(&mut r, bytes.len())?;
    if r.at != bytes.len() {
        return Err(BatchDecodeError(format!(
            "{} trailing bytes after a transaction's commands",
            bytes.len() - r.at
        )));
    }
    Ok(commands)
}

fn decode_nested(r: &mut Reader<'_>, data_len: usize) -> Result<Vec<Command>, BatchDecodeError> {
    let count = r.u32()? as usize;
    let mut commands = Vec::with_capacity(count.min(data_len / 5));
    for _ in 0..count {
        // Checked before decoding: nested transactions must not recurse.
        if matches!(r.bytes.get(r.at), Some(11 | 14..=18)) {
            return Err(BatchDecodeError(
                "a transaction carries key-value writes, reads and document writes only".into(),
            ));
        }
        let command = decode_command(r, data_len)?;
        if !command.is_transaction_step() {
            return Err(BatchDecodeError(
                "a transaction carries key-value writes, reads and document writes only".into(),
            ));
        }
        commands.push(command);
    }
    Ok(commands)
}

/// Builds the data of one batch entry.
#[derive(Debug, Default)]
pub struct BatchEncoder {
    bytes: Vec<u8>,
    count: u32,
}

impl BatchEncoder {
    pub fn new() -> Self {
        BatchEncoder {
            bytes: vec![0; 4],
            count: 0,
        }
    }
    pub fn push(&mut self, command: &Command) {
        command.encode(&mut self.bytes);
        self.count += 1;
    }
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }
    pub fn count(&self) -> u32 {
        self.count
    }
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes[0..4].copy_from_slice(&self.count.to_le_bytes());
        self.bytes
    }

    /// Like [`BatchEncoder::finish`], with the time the leader proposed the batch (ms since
    /// the Unix epoch) after the commands: point-in-time recovery replays the log up to a
    /// moment by it (`kvsd --restore-from ... --until`).
    ///
    /// `floor`: the lowest version the batch's commands may take, from the proposing node's
    /// hybrid clock (ADR 0023); every replica applies the batch with the same versions.
    pub fn finish_at(mut self, unix_ms: u64, floor: u64) -> Vec<u8> {
        self.bytes.push(COMMIT_TIME_TAG);
        self.bytes.extend_from_slice(&unix_ms.to_le_bytes());
        self.bytes.push(VERSION_FLOOR_TAG);
        self.bytes.extend_from_slice(&floor.to_le_bytes());
        self.finish()
    }
}

/// Marks a batch's commit time after its commands ([`BatchEncoder::finish_at`]).
const COMMIT_TIME_TAG: u8 = 0xC7;
/// Marks a batch's version floor, after its commit time.
const VERSION_FLOOR_TAG: u8 = 0xC8;

/// What a batch records beside its commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchMeta {
    /// When the leader proposed it (ms since the Unix epoch); batches logged before kvs
    /// recorded times have none.
    pub time: Option<u64>,
    /// The lowest version its commands take; 0 for batches logged before versions were
    /// clock-based.
    pub floor: u64,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BatchDecodeError> {
        let slice = self
            .at
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or_else(|| BatchDecodeError(format!("truncated at byte {}", self.at)))?;
        self.at += n;
        Ok(slice)
    }
    fn u32(&mut self) -> Result<u32, BatchDecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, BatchDecodeError> {
        let mut v = [0u8; 8];
        v.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(v))
    }
    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, BatchDecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(BatchDecodeError(format!(
                "field of {len} bytes over the {max} limit"
            )));
        }
        Ok(self.take(len)?.to_vec())
    }
    /// A key, with room for one more byte: the paged store puts a keyspace byte in front of
    /// each key it applies, and without the room that was a second allocation and a copy.
    fn key(&mut self) -> Result<Vec<u8>, BatchDecodeError> {
        let len = self.u32()? as usize;
        if len > KEY_SIZE_MAX {
            return Err(BatchDecodeError(format!(
                "field of {len} bytes over the {KEY_SIZE_MAX} limit"
            )));
        }
        let mut key = Vec::with_capacity(len + 1);
        key.extend_from_slice(self.take(len)?);
        Ok(key)
    }
}

/// Decodes a batch entry's data into its commands.
pub fn decode_batch(data: &[u8]) -> Result<Vec<Command>, BatchDecodeError> {
    decode_batch_timed(data).map(|(commands, _)| commands)
}

/// Decodes a batch entry's data into its commands and its commit time, if it records one
/// (batches logged before kvs recorded times do not).
pub fn decode_batch_timed(data: &[u8]) -> Result<(Vec<Command>, Option<u64>), BatchDecodeError> {
    decode_batch_meta(data).map(|(commands, meta)| (commands, meta.time))
}

/// Decodes a batch entry's data into its commands and what it records beside them.
pub fn decode_batch_meta(data: &[u8]) -> Result<(Vec<Command>, BatchMeta), BatchDecodeError> {
    let mut r = Reader { bytes: data, at: 0 };
    let count = r.u32()? as usize;
    // Each command takes at least 5 bytes, which bounds the allocation by the input size.
    let mut commands = Vec::with_capacity(count.min(data.len() / 5));
    for _ in 0..count {
        commands.push(decode_command(&mut r, data.len())?);
    }
    let le = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    let meta = match &data[r.at..] {
        [] => BatchMeta::default(),
        [COMMIT_TIME_TAG, time @ ..] if time.len() == 8 => BatchMeta {
            time: Some(le(time)),
            floor: 0,
        },
        [COMMIT_TIME_TAG, rest @ ..] if rest.len() == 17 && rest[8] == VERSION_FLOOR_TAG => {
            BatchMeta {
                time: Some(le(&rest[..8])),
                floor: le(&rest[9..]),
            }
        }
        rest => {
            return Err(BatchDecodeError(format!("{} trailing bytes", rest.len())));
        }
    };
    Ok((commands, meta))
}

fn decode_command(r: &mut Reader<'_>, data_len: usize) -> Result<Command, BatchDecodeError> {
    let tag = r.take(1)?[0];
    Ok(match tag {
        1 => Command::Put {
            key: r.key()?,
            value: r.bytes(VALUE_SIZE_MAX)?,
        },
        2 => Command::Delete { key: r.key()? },
        3 => {
            let key = r.key()?;
            let expected_version = r.u64()?;
            let value = match r.take(1)?[0] {
                0 => None,
                1 => Some(r.bytes(VALUE_SIZE_MAX)?),
                other => return Err(BatchDecodeError(format!("CAS value flag {other}"))),
            };
            Command::Cas {
                key,
                expected_version,
                value,
            }
        }
        4 => {
            let n = r.u32()? as usize;
            let mut pairs = Vec::with_capacity(n.min(data_len / 8));
            for _ in 0..n {
                pairs.push((r.key()?, r.bytes(VALUE_SIZE_MAX)?));
            }
            Command::PutMany { pairs }
        }
        5 => Command::Increment {
            key: r.key()?,
            delta: r.u64()? as i64,
        },
        6 => Command::Append {
            key: r.key()?,
            value: r.bytes(VALUE_SIZE_MAX)?,
        },
        7 => Command::GetAndPut {
            key: r.key()?,
            value: r.bytes(VALUE_SIZE_MAX)?,
        },
        8 => Command::PutIfExists {
            key: r.key()?,
            value: r.bytes(VALUE_SIZE_MAX)?,
        },
        9 => Command::Document {
            body: r.bytes(DOC_COMMAND_SIZE_MAX)?,
        },
        10 => Command::SetPreferredLeader { node: r.u64()? },
        11 => {
            let (session, seq, acked_below, at_ms) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            // Checked before decoding it: a chain of ONCEs must not recurse deep.
            if r.bytes.get(r.at) == Some(&11) {
                return Err(BatchDecodeError(
                    "ONCE carries a key-value write only".into(),
                ));
            }
            let command = decode_command(r, data_len)?;
            if !command.is_key_value_write() {
                return Err(BatchDecodeError(
                    "ONCE carries a key-value write only".into(),
                ));
            }
            Command::Once {
                session,
                seq,
                acked_below,
                at_ms,
                command: Box::new(command),
            }
        }
        12 => Command::ExpireSessions {
            before_ms: r.u64()?,
        },
        13 => Command::Read { key: r.key()? },
        14 => Command::Txn {
            txn: r.u64()?,
            locks: r.u32()?,
            commands: decode_nested(r, data_len)?,
        },
        15 => Command::TxnPrepare {
            txn: r.u64()?,
            locks: r.u32()?,
            primary: r.u32()?,
            coordinator: r.u64()?,
            deadline_ms: r.u64()?,
            commands: decode_nested(r, data_len)?,
        },
        16 | 17 => {
            let txn = r.u64()?;
            let commit = match r.take(1)?[0] {
                0 => false,
                1 => true,
                other => return Err(BatchDecodeError(format!("decision flag {other}"))),
            };
            let version = r.u64()?;
            if tag == 16 {
                Command::TxnDecide {
                    txn,
                    commit,
                    at_least: version,
                }
            } else {
                Command::TxnResolve {
                    txn,
                    commit,
                    version,
                }
            }
        }
        18 => Command::TxnForget { txn: r.u64()? },
        other => return Err(BatchDecodeError(format!("unknown command tag {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_transaction_carries_key_value_and_document_steps_only() {
        for inner in [
            Command::Txn {
                txn: 1,
                locks: 0,
                commands: vec![],
            },
            Command::SetPreferredLeader { node: 1 },
            Command::TxnForget { txn: 1 },
        ] {
            let mut encoder = BatchEncoder::new();
            encoder.push(&Command::Txn {
                txn: 2,
                locks: 0,
                commands: vec![inner.clone()],
            });
            let error = decode_batch(&encoder.finish()).unwrap_err();
            assert!(
                error
                    .0
                    .contains("key-value writes, reads and document writes only"),
                "{inner:?}"
            );
        }
        let steps = vec![
            Command::Read { key: b"k".to_vec() },
            Command::Document { body: vec![1] },
        ];
        assert_eq!(decode_steps(&encode_steps(&steps)).unwrap(), steps);
        let mut trailing = encode_steps(&steps);
        trailing.push(0);
        assert!(decode_steps(&trailing).is_err());
    }

    #[test]
    fn batch_round_trip_and_length() {
        let commands = vec![
            Command::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            Command::Delete { key: b"b".to_vec() },
            Command::Cas {
                key: b"c".to_vec(),
                expected_version: 3,
                value: Some(vec![9; 10]),
            },
            Command::Cas {
                key: b"c".to_vec(),
                expected_version: 4,
                value: None,
            },
            Command::PutMany {
                pairs: vec![(b"x".to_vec(), vec![]), (b"y".to_vec(), b"2".to_vec())],
            },
            Command::Increment {
                key: b"n".to_vec(),
                delta: -5,
            },
            Command::Append {
                key: b"s".to_vec(),
                value: b"tail".to_vec(),
            },
            Command::GetAndPut {
                key: b"g".to_vec(),
                value: b"new".to_vec(),
            },
            Command::PutIfExists {
                key: b"e".to_vec(),
                value: b"v".to_vec(),
            },
            Command::Document {
                body: b"\x07\x00".to_vec(),
            },
            Command::SetPreferredLeader { node: 3 },
            Command::Once {
                session: 0xfeed,
                seq: 7,
                acked_below: 5,
                at_ms: 1_700_000_000_000,
                command: Box::new(Command::Cas {
                    key: b"o".to_vec(),
                    expected_version: 2,
                    value: Some(b"v".to_vec()),
                }),
            },
            Command::ExpireSessions { before_ms: 99 },
            Command::Txn {
                txn: 41,
                locks: 3,
                commands: vec![
                    Command::Read { key: b"r".to_vec() },
                    Command::Put {
                        key: b"t".to_vec(),
                        value: b"1".to_vec(),
                    },
                    Command::Increment {
                        key: b"n".to_vec(),
                        delta: -3,
                    },
                ],
            },
            Command::TxnPrepare {
                txn: 42,
                locks: 1,
                primary: 3,
                coordinator: 2,
                deadline_ms: 1_700_000_060_000,
                commands: vec![Command::Delete { key: b"d".to_vec() }],
            },
            Command::TxnDecide {
                txn: 42,
                commit: true,
                at_least: 7,
            },
            Command::TxnResolve {
                txn: 42,
                commit: false,
                version: 9,
            },
            Command::TxnForget { txn: 42 },
        ];
        let mut encoder = BatchEncoder::new();
        for c in &commands {
            let before = encoder.len_bytes();
            encoder.push(c);
            assert_eq!(encoder.len_bytes() - before, c.encoded_len());
        }
        let data = encoder.finish();
        assert_eq!(decode_batch(&data).unwrap(), commands);
        for cut in 0..data.len() {
            assert!(decode_batch(&data[..cut]).is_err());
        }
    }

    #[test]
    fn a_batch_carries_its_commit_time_after_its_commands() {
        let command = Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        let mut encoder = BatchEncoder::new();
        encoder.push(&command);
        let untimed_len = encoder.len_bytes();
        let data = encoder.finish_at(1_796_458_245_123, 77);
        assert_eq!(
            decode_batch_timed(&data).unwrap(),
            (vec![command.clone()], Some(1_796_458_245_123))
        );
        assert_eq!(
            decode_batch_meta(&data).unwrap().1,
            BatchMeta {
                time: Some(1_796_458_245_123),
                floor: 77
            }
        );
        // A batch logged with a time and no floor (before versions came from the clock).
        assert_eq!(
            decode_batch_meta(&data[..untimed_len + 9]).unwrap().1,
            BatchMeta {
                time: Some(1_796_458_245_123),
                floor: 0
            }
        );
        assert_eq!(decode_batch(&data).unwrap(), vec![command.clone()]);
        // Without its time it is a batch as logged before times were recorded.
        assert_eq!(
            decode_batch_timed(&data[..untimed_len]).unwrap(),
            (vec![command], None)
        );
        for cut in (untimed_len + 1..data.len()).filter(|&cut| cut != untimed_len + 9) {
            assert!(decode_batch_timed(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_tag = data.clone();
        wrong_tag[untimed_len] ^= 1;
        assert!(decode_batch_timed(&wrong_tag).is_err());
    }

    #[test]
    fn once_carries_only_a_key_value_write() {
        let mut encoder = BatchEncoder::new();
        encoder.push(&Command::Once {
            session: 1,
            seq: 1,
            acked_below: 1,
            at_ms: 0,
            command: Box::new(Command::Document { body: vec![1] }),
        });
        let error = decode_batch(&encoder.finish()).unwrap_err();
        assert_eq!(error.0, "ONCE carries a key-value write only");
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_batch(&data);
        }
    }
}
