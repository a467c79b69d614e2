//! Requests forwarded to a shard's leader and their answers, as the peer protocol carries
//! them (ADR 0016). A node that does not lead a shard sends the request, as the shard
//! would run it, over its link to the leader; the leader runs it like one of its own and
//! sends the answer back, which goes out through the node the client used.
//!
//! Encoding (integers little-endian, byte strings as a u32 length and the bytes): a
//! forwarded request is its id (the forwarding core's, to match the answer), the origin that
//! orders it, and the shard op; an answer is the id and the shard's reply. Decoding is total
//! (property-tested in `codec_tests.rs`).

use kvs_core::command::{decode_batch, BatchEncoder};
use kvs_core::state::{CommandResult, Versioned};
use kvs_wire::ErrorCode;

use super::codec::{malformed, put_bytes, put_u64, PeerDecodeError, Reader};
use crate::doc_reads::{DocRead, FindMode};
use crate::shard::{ShardOp, ShardReply};
use crate::txn_locks::{LockAsk, Mode, TxnLockOp};

/// A request on its way to the shard's leader.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    pub id: u64,
    pub origin: u64,
    pub op: ShardOp,
}

/// About how many bytes a request takes encoded (at least its payload), for cutting frames.
pub fn forwarded_len(request: &Forwarded) -> usize {
    32 + match &request.op {
        ShardOp::Get { key } | ShardOp::GetStale { key } => key.len(),
        ShardOp::MGet { keys } => keys.iter().map(|k| k.len() + 4).sum(),
        ShardOp::Scan { start, end, .. } => start.len() + end.as_ref().map_or(0, Vec::len),
        ShardOp::Write(command) => command.encoded_len() + 8,
        ShardOp::DocRead(read) => match read {
            DocRead::Find { coll, query, .. } => coll.len() + query.len(),
            DocRead::Aggregate {
                coll,
                filter,
                group,
            } => coll.len() + filter.len() + group.as_ref().map_or(0, Vec::len),
            DocRead::Indexes { coll } => coll.len(),
            DocRead::Collections => 0,
            DocRead::UniqueConflict { coll, doc } => coll.len() + doc.len(),
            DocRead::IndexKeys { coll, name } => coll.len() + name.len(),
        },
        ShardOp::Info | ShardOp::Lock(_) | ShardOp::Unlock(_) | ShardOp::Backup { .. } => 0,
        ShardOp::TxnLock(TxnLockOp::Lock(ask)) => ask.keys.iter().map(|(k, _)| k.len() + 5).sum(),
        ShardOp::TxnLock(_) => 8,
        ShardOp::Fenced(inner) | ShardOp::AtSnapshot { read: inner, .. } => {
            16 + forwarded_len(&Forwarded {
                id: 0,
                origin: 0,
                op: (**inner).clone(),
            })
        }
        ShardOp::SnapshotBegin | ShardOp::SnapshotEnd { .. } => 16,
    }
}

/// About how many bytes an answer takes encoded (at least its payload).
pub fn answer_len(reply: &ShardReply) -> usize {
    let versioned = |v: &Option<Versioned>| 13 + v.as_ref().map_or(0, |v| v.value.len());
    32 + match reply {
        ShardReply::Value(value) => versioned(value),
        ShardReply::Values(values) => values.iter().map(versioned).sum(),
        ShardReply::Scanned(pairs) => pairs.iter().map(|(k, v)| k.len() + v.len() + 8).sum(),
        ShardReply::Doc(doc) => doc.len(),
        ShardReply::Written(result) => match result {
            CommandResult::Refused { reason } => reason.len(),
            CommandResult::Replaced { previous } => previous.as_ref().map_or(0, Vec::len),
            CommandResult::WrittenMany { versions } => versions.len() * 8,
            CommandResult::Document { reply } => reply.len(),
            CommandResult::DocumentRefused { message, .. } => message.len(),
            CommandResult::OutcomeUnknown { reason } => reason.len(),
            _ => 16,
        },
        ShardReply::Error(_, message) => message.len(),
        ShardReply::Locked | ShardReply::Info(_) | ShardReply::Snapshot(_) => 8,
        ShardReply::Backup(chunk) => chunk.pages.len() + chunk.meta.len(),
    }
}

pub(super) fn encode_forwarded(request: &Forwarded, out: &mut Vec<u8>) {
    put_u64(out, request.id);
    put_u64(out, request.origin);
    match &request.op {
        ShardOp::Get { key } => {
            out.push(1);
            put_bytes(out, key);
        }
        ShardOp::MGet { keys } => {
            out.push(2);
            out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
            for key in keys {
                put_bytes(out, key);
            }
        }
        ShardOp::Scan { start, end, limit } => {
            out.push(3);
            put_bytes(out, start);
            put_option(out, end.as_deref());
            out.extend_from_slice(&limit.to_le_bytes());
        }
        ShardOp::Write(command) => {
            out.push(4);
            let mut batch = BatchEncoder::new();
            batch.push(command);
            put_bytes(out, &batch.finish());
        }
        ShardOp::DocRead(read) => {
            out.push(5);
            encode_doc_read(read, out);
        }
        ShardOp::TxnLock(op) => {
            out.push(6);
            encode_txn_lock(op, out);
        }
        ShardOp::Fenced(inner) => {
            out.push(7);
            encode_inner_read(inner, out);
        }
        ShardOp::SnapshotBegin => out.push(8),
        ShardOp::AtSnapshot {
            began,
            ts,
            keep_open,
            read,
        } => {
            out.push(9);
            put_u64(out, *began);
            put_u64(out, *ts);
            out.push(u8::from(*keep_open));
            encode_inner_read(read, out);
        }
        ShardOp::SnapshotEnd { began, ts } => {
            out.push(10);
            put_u64(out, *began);
            put_u64(out, *ts);
        }
        ShardOp::Info
        | ShardOp::Lock(_)
        | ShardOp::Unlock(_)
        | ShardOp::GetStale { .. }
        | ShardOp::Backup { .. } => {
            unreachable!("only forwardable ops are forwarded (ShardOp::is_forwardable)")
        }
    }
}

/// The read a fenced or snapshot read carries, as a forwarded request of its own.
fn encode_inner_read(inner: &ShardOp, out: &mut Vec<u8>) {
    let inner = Forwarded {
        id: 0,
        origin: 0,
        op: inner.clone(),
    };
    let mut bytes = Vec::new();
    encode_forwarded(&inner, &mut bytes);
    put_bytes(out, &bytes);
}

fn decode_inner_read(r: &mut Reader<'_>) -> Result<ShardOp, PeerDecodeError> {
    let bytes = r.bytes()?;
    // Checked before decoding: reads must not nest (no deep recursion).
    if matches!(bytes.get(16), Some(&7) | Some(&9)) {
        return Err(malformed("a read inside a fenced or snapshot read".into()));
    }
    let inner = decode_forwarded(&mut Reader { bytes, at: 0 })?.op;
    if !matches!(
        inner,
        ShardOp::Get { .. } | ShardOp::MGet { .. } | ShardOp::Scan { .. } | ShardOp::DocRead(_)
    ) {
        return Err(malformed(
            "a fenced or snapshot read carries GET, MGET, SCAN or a document read".into(),
        ));
    }
    Ok(inner)
}

fn encode_txn_lock(op: &TxnLockOp, out: &mut Vec<u8>) {
    match op {
        TxnLockOp::Lock(ask) => {
            out.push(1);
            put_u64(out, ask.txn);
            put_u64(out, ask.deadline_ms);
            out.extend_from_slice(&ask.held.to_le_bytes());
            out.extend_from_slice(&(ask.keys.len() as u32).to_le_bytes());
            for (key, mode) in &ask.keys {
                put_bytes(out, key);
                out.push(u8::from(*mode == Mode::Exclusive));
            }
            match &ask.range {
                None => out.push(0),
                Some((start, end)) => {
                    out.push(1);
                    put_bytes(out, start);
                    put_option(out, end.as_deref());
                }
            }
        }
        TxnLockOp::Check { txn, locks } => {
            out.push(2);
            put_u64(out, *txn);
            out.extend_from_slice(&locks.to_le_bytes());
        }
        TxnLockOp::Release { txn } => {
            out.push(3);
            put_u64(out, *txn);
        }
    }
}

fn decode_txn_lock(r: &mut Reader<'_>) -> Result<TxnLockOp, PeerDecodeError> {
    Ok(match r.u8()? {
        1 => {
            let txn = r.u64()?;
            let deadline_ms = r.u64()?;
            let held = r.u32()?;
            let keys = r.list(5, |r| {
                let key = r.bytes()?.to_vec();
                let mode = match r.u8()? {
                    0 => Mode::Shared,
                    1 => Mode::Exclusive,
                    other => return Err(malformed(format!("lock mode {other}"))),
                };
                Ok((key, mode))
            })?;
            let range = match r.u8()? {
                0 => None,
                1 => Some((r.bytes()?.to_vec(), get_option(r)?)),
                other => return Err(malformed(format!("range flag {other}"))),
            };
            TxnLockOp::Lock(LockAsk {
                txn,
                deadline_ms,
                held,
                keys,
                range,
            })
        }
        2 => TxnLockOp::Check {
            txn: r.u64()?,
            locks: r.u32()?,
        },
        3 => TxnLockOp::Release { txn: r.u64()? },
        tag => return Err(malformed(format!("unknown transaction lock op {tag}"))),
    })
}

pub(super) fn decode_forwarded(r: &mut Reader<'_>) -> Result<Forwarded, PeerDecodeError> {
    let id = r.u64()?;
    let origin = r.u64()?;
    let op = match r.u8()? {
        1 => ShardOp::Get {
            key: r.bytes()?.to_vec(),
        },
        2 => ShardOp::MGet {
            keys: r.list(4, |r| r.bytes().map(<[u8]>::to_vec))?,
        },
        3 => ShardOp::Scan {
            start: r.bytes()?.to_vec(),
            end: get_option(r)?,
            limit: r.u32()?,
        },
        4 => {
            let mut commands =
                decode_batch(r.bytes()?).map_err(|e| malformed(format!("forwarded write: {e}")))?;
            if commands.len() != 1 {
                return Err(malformed(format!(
                    "a forwarded write of {} commands",
                    commands.len()
                )));
            }
            ShardOp::Write(commands.pop().expect("one command"))
        }
        5 => ShardOp::DocRead(decode_doc_read(r)?),
        6 => ShardOp::TxnLock(decode_txn_lock(r)?),
        7 => ShardOp::Fenced(Box::new(decode_inner_read(r)?)),
        8 => ShardOp::SnapshotBegin,
        9 => ShardOp::AtSnapshot {
            began: r.u64()?,
            ts: r.u64()?,
            keep_open: r.flag()?,
            read: Box::new(decode_inner_read(r)?),
        },
        10 => ShardOp::SnapshotEnd {
            began: r.u64()?,
            ts: r.u64()?,
        },
        tag => return Err(malformed(format!("unknown forwarded op {tag}"))),
    };
    Ok(Forwarded { id, origin, op })
}

fn encode_doc_read(read: &DocRead, out: &mut Vec<u8>) {
    match read {
        DocRead::Find { coll, query, mode } => {
            out.push(1);
            put_bytes(out, coll.as_bytes());
            put_bytes(out, query);
            out.push(match mode {
                FindMode::Documents => 0,
                FindMode::Count => 1,
                FindMode::Explain => 2,
            });
        }
        DocRead::Aggregate {
            coll,
            filter,
            group,
        } => {
            out.push(2);
            put_bytes(out, coll.as_bytes());
            put_bytes(out, filter);
            put_option(out, group.as_deref());
        }
        DocRead::Indexes { coll } => {
            out.push(3);
            put_bytes(out, coll.as_bytes());
        }
        DocRead::Collections => out.push(4),
        DocRead::UniqueConflict { coll, doc } => {
            out.push(5);
            put_bytes(out, coll.as_bytes());
            put_bytes(out, doc);
        }
        DocRead::IndexKeys { coll, name } => {
            out.push(6);
            put_bytes(out, coll.as_bytes());
            put_bytes(out, name.as_bytes());
        }
    }
}

fn decode_doc_read(r: &mut Reader<'_>) -> Result<DocRead, PeerDecodeError> {
    Ok(match r.u8()? {
        1 => DocRead::Find {
            coll: text(r)?,
            query: r.bytes()?.to_vec(),
            mode: match r.u8()? {
                0 => FindMode::Documents,
                1 => FindMode::Count,
                2 => FindMode::Explain,
                mode => return Err(malformed(format!("find mode {mode}"))),
            },
        },
        2 => DocRead::Aggregate {
            coll: text(r)?,
            filter: r.bytes()?.to_vec(),
            group: get_option(r)?,
        },
        3 => DocRead::Indexes { coll: text(r)? },
        4 => DocRead::Collections,
        5 => DocRead::UniqueConflict {
            coll: text(r)?,
            doc: r.bytes()?.to_vec(),
        },
        6 => DocRead::IndexKeys {
            coll: text(r)?,
            name: text(r)?,
        },
        tag => return Err(malformed(format!("unknown document read {tag}"))),
    })
}

pub(super) fn encode_answer(id: u64, reply: &ShardReply, out: &mut Vec<u8>) {
    put_u64(out, id);
    match reply {
        ShardReply::Value(value) => {
            out.push(1);
            put_versioned(out, value.as_ref());
        }
        ShardReply::Values(values) => {
            out.push(2);
            out.extend_from_slice(&(values.len() as u32).to_le_bytes());
            for value in values {
                put_versioned(out, value.as_ref());
            }
        }
        ShardReply::Scanned(pairs) => {
            out.push(3);
            out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
            for (key, value) in pairs {
                put_bytes(out, key);
                put_bytes(out, value);
            }
        }
        ShardReply::Written(result) => {
            out.push(4);
            encode_result(result, out);
        }
        ShardReply::Doc(doc) => {
            out.push(5);
            put_bytes(out, doc);
        }
        ShardReply::Locked => out.push(6),
        ShardReply::Snapshot(version) => {
            out.push(8);
            put_u64(out, *version);
        }
        ShardReply::Error(code, message) => {
            out.push(7);
            out.extend_from_slice(&(*code as u16).to_le_bytes());
            put_bytes(out, message.as_bytes());
        }
        ShardReply::Info(_) | ShardReply::Backup(_) => {
            // INFO is never forwarded (see `forwardable`); say so rather than fail.
            out.push(7);
            out.extend_from_slice(&(ErrorCode::Internal as u16).to_le_bytes());
            put_bytes(out, b"INFO is not forwarded");
        }
    }
}

pub(super) fn decode_answer(r: &mut Reader<'_>) -> Result<(u64, ShardReply), PeerDecodeError> {
    let id = r.u64()?;
    let reply = match r.u8()? {
        1 => ShardReply::Value(get_versioned(r)?),
        2 => ShardReply::Values(r.list(1, get_versioned)?),
        3 => ShardReply::Scanned(r.list(8, |r| Ok((r.bytes()?.to_vec(), r.bytes()?.to_vec())))?),
        4 => ShardReply::Written(decode_result(r)?),
        5 => ShardReply::Doc(r.bytes()?.to_vec()),
        6 => ShardReply::Locked,
        8 => ShardReply::Snapshot(r.u64()?),
        7 => {
            let code = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes"));
            ShardReply::Error(ErrorCode::from_u16(code), text(r)?)
        }
        tag => return Err(malformed(format!("unknown answer {tag}"))),
    };
    Ok((id, reply))
}

fn encode_result(result: &CommandResult, out: &mut Vec<u8>) {
    result.encode_into(out);
}

fn decode_result(r: &mut Reader<'_>) -> Result<CommandResult, PeerDecodeError> {
    let (result, len) = CommandResult::decode_from(&r.bytes[r.at..]).map_err(|e| malformed(e.0))?;
    r.at += len;
    Ok(result)
}

fn put_option(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
    }
}

fn get_option(r: &mut Reader<'_>) -> Result<Option<Vec<u8>>, PeerDecodeError> {
    Ok(if r.flag()? {
        Some(r.bytes()?.to_vec())
    } else {
        None
    })
}

fn put_versioned(out: &mut Vec<u8>, value: Option<&Versioned>) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_u64(out, v.version);
            put_bytes(out, &v.value);
        }
    }
}

fn get_versioned(r: &mut Reader<'_>) -> Result<Option<Versioned>, PeerDecodeError> {
    Ok(if r.flag()? {
        Some(Versioned {
            version: r.u64()?,
            value: r.bytes()?.to_vec(),
        })
    } else {
        None
    })
}

fn text(r: &mut Reader<'_>) -> Result<String, PeerDecodeError> {
    String::from_utf8(r.bytes()?.to_vec()).map_err(|_| malformed("text is not UTF-8".into()))
}
