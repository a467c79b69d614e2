//! Reads a shard answers from its store, outside the shard loop's own state: from the buffer
//! pool in the round ([`try_read_from`]) or, when pages must come from the disk, in a task of
//! their own ([`read_from`]; see `shard`'s module documentation for the order they keep).

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use kvs_core::store::backup::BackupError;
use kvs_core::store::{PagedStore, StoreError};
use kvs_wire::message::BackupChunk;

use kvs_wire::ErrorCode;

use crate::doc_reads::DocRead;
use crate::shard_ops::{ShardOp, ShardReply};

/// Reads of one round in flight at once.
pub const READS_IN_FLIGHT: usize = 128;

/// Answers a read from the pool alone, or None when it needs the disk (or, for INFO, the
/// shard itself).
pub fn try_read_from<F: kvs_core::log::LogFile>(
    store: &PagedStore<F>,
    op: &ShardOp,
) -> Option<ShardReply> {
    match op {
        ShardOp::Get { key } | ShardOp::GetStale { key } => {
            store.try_get(key).map(ShardReply::Value)
        }
        ShardOp::MGet { keys } => keys
            .iter()
            .map(|k| store.try_get(k))
            .collect::<Option<Vec<_>>>()
            .map(ShardReply::Values),
        ShardOp::Scan { .. }
        | ShardOp::DocRead(_)
        | ShardOp::Info
        | ShardOp::Backup { .. }
        | ShardOp::AtSnapshot { .. } => None,
        ShardOp::SnapshotBegin => Some(ShardReply::Snapshot(
            store.snapshot_begin(kvs_core::sessions::wall_clock_ms()),
        )),
        ShardOp::SnapshotEnd { began, ts } => {
            if *ts != 0 {
                store.snapshot_close(*ts);
            } else {
                store.snapshot_abandon(*began);
            }
            Some(ShardReply::Snapshot(*ts))
        }
        ShardOp::Write(_) => unreachable!("writes are not reads"),
        ShardOp::Lock(_) | ShardOp::Unlock(_) | ShardOp::TxnLock(_) => {
            unreachable!("locks are not reads")
        }
        ShardOp::Fenced(_) => unreachable!("a fenced read is unwrapped when taken"),
    }
}

/// Answers a read from `store`, reading pages as needed (many at once for an MGET).
pub async fn read_from<F: kvs_core::log::LogFile>(
    store: &Rc<PagedStore<F>>,
    shard: u32,
    op: &ShardOp,
) -> ShardReply {
    let failed = |e: StoreError| {
        tracing::error!(shard, error = %e, "read failed");
        ShardReply::Error(store_error_code(&e), format!("shard {shard}: {e}"))
    };
    match op {
        ShardOp::Get { key } | ShardOp::GetStale { key } => match store.get(key).await {
            Ok(value) => ShardReply::Value(value),
            Err(e) => failed(e),
        },
        // One read of all its keys, as of one moment (`PagedStore::get_many`).
        ShardOp::MGet { keys } => match store.get_many(keys).await {
            Ok(values) => ShardReply::Values(values),
            Err(e) => failed(e),
        },
        ShardOp::Scan { start, end, limit } => {
            match store.scan(start, end.as_deref(), *limit as usize).await {
                Ok(pairs) => ShardReply::Scanned(pairs),
                Err(e) => failed(e),
            }
        }
        ShardOp::Backup { id, number } => {
            let now = kvs_core::sessions::wall_clock_ms();
            match store.backup_chunk(*id, *number, now).await {
                Ok(piece) => ShardReply::Backup(Box::new(BackupChunk {
                    id: piece.id,
                    index: piece.index,
                    term: piece.term,
                    number: piece.number,
                    total_pages: piece.total_pages,
                    first: piece.first,
                    meta: piece.meta,
                    pages: piece.pages,
                    crc: piece.crc,
                    last: piece.last,
                })),
                Err(BackupError::Store(e)) => failed(e),
                Err(e) => ShardReply::Error(ErrorCode::BadRequest, format!("shard {shard}: {e}")),
            }
        }
        // A find reads many keys and may wait for pages between them, and a write of several
        // documents (or of a document and its index entries) must show whole or not at
        // all. It reads the newest state first; if a command began meanwhile, it reads
        // again at a snapshot of its own, begun when no command is half applied (ADR 0030).
        ShardOp::DocRead(read @ (DocRead::Find { .. } | DocRead::Aggregate { .. })) => {
            let mark = store.settled_mark().await;
            let now = crate::doc_reads::read_docs(store, shard, read, None).await;
            if store.unchanged_since(mark) {
                return doc_reply(now);
            }
            let began = store
                .snapshot_begin_settled(kvs_core::sessions::wall_clock_ms())
                .await;
            match read_at_snapshot(store, shard, began, began, false, op).await {
                Ok(reply) => reply,
                Err(StoreFailed(e)) => failed(e),
            }
        }
        ShardOp::DocRead(read) => {
            doc_reply(crate::doc_reads::read_docs(store, shard, read, None).await)
        }
        ShardOp::AtSnapshot {
            began,
            ts,
            keep_open,
            read,
        } => match read_at_snapshot(store, shard, *began, *ts, *keep_open, read).await {
            Ok(reply) => reply,
            Err(StoreFailed(e)) => failed(e),
        },
        ShardOp::SnapshotBegin | ShardOp::SnapshotEnd { .. } => {
            unreachable!("answered from the pool")
        }
        ShardOp::Info
        | ShardOp::Write(_)
        | ShardOp::Lock(_)
        | ShardOp::Unlock(_)
        | ShardOp::TxnLock(_)
        | ShardOp::Fenced(_) => {
            unreachable!("answered by the shard itself")
        }
    }
}

/// A document read's answer as the shard's reply.
fn doc_reply(answered: Result<Vec<u8>, crate::doc_reads::Fail>) -> ShardReply {
    match answered {
        Ok(document) => ShardReply::Doc(document),
        Err((code, message)) => ShardReply::Error(code, message),
    }
}

/// How long a snapshot read waits for a transaction prepared at or below its timestamp to be
/// decided (its writes may belong to the snapshot), as long as a lock wait.
const IN_DOUBT_WAIT: Duration = crate::txn_shared::LOCK_TIMEOUT_DEFAULT;

struct StoreFailed(StoreError);

/// Round two of a snapshot read (ADR 0023): waits for the transactions prepared at or below
/// `ts` to be decided, fixes the snapshot begun at `began` at `ts` (unless `began` is 0: an
/// earlier read fixed it), reads, and closes it unless `keep_open`.
async fn read_at_snapshot<F: kvs_core::log::LogFile>(
    store: &Rc<PagedStore<F>>,
    shard: u32,
    began: u64,
    ts: u64,
    keep_open: bool,
    read: &ShardOp,
) -> Result<ShardReply, StoreFailed> {
    let waited = Instant::now();
    while store.in_doubt_at_or_below(ts) {
        if waited.elapsed() > IN_DOUBT_WAIT {
            if began != 0 {
                store.snapshot_abandon(began);
            }
            return Ok(ShardReply::Error(
                ErrorCode::Timeout,
                format!(
                    "a transaction prepared below the snapshot at {ts} was not decided within {IN_DOUBT_WAIT:?}"
                ),
            ));
        }
        crate::runtime::sleep(Duration::from_millis(1)).await;
    }
    let too_old = || {
        ShardReply::Error(
            ErrorCode::SnapshotTooOld,
            format!("the snapshot at {ts} is gone (older than --txn-max-age, or the shard's leader changed)"),
        )
    };
    let open = if began != 0 {
        store.snapshot_fix(began, ts)
    } else {
        store.snapshot_is_open(ts)
    };
    if !open {
        return Ok(too_old());
    }
    let reply = match read_at(store, shard, ts, read).await {
        Ok(reply) => reply,
        // A closed snapshot's extents may be reused under the read: too old, not damage.
        Err(_) if !store.snapshot_is_open(ts) => too_old(),
        Err(e) => return Err(e),
    };
    // Expired meanwhile: what it read may have been dropped.
    let whole = store.snapshot_is_open(ts);
    if !keep_open {
        store.snapshot_close(ts);
    }
    Ok(if whole { reply } else { too_old() })
}

async fn read_at<F: kvs_core::log::LogFile>(
    store: &Rc<PagedStore<F>>,
    shard: u32,
    ts: u64,
    read: &ShardOp,
) -> Result<ShardReply, StoreFailed> {
    Ok(match read {
        ShardOp::Get { key } => {
            ShardReply::Value(store.get_at(key, ts).await.map_err(StoreFailed)?)
        }
        ShardOp::MGet { keys } => {
            let mut values = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(READS_IN_FLIGHT) {
                for value in join_all(chunk.iter().map(|k| store.get_at(k, ts))).await {
                    values.push(value.map_err(StoreFailed)?);
                }
            }
            ShardReply::Values(values)
        }
        ShardOp::Scan { start, end, limit } => ShardReply::Scanned(
            store
                .scan_at(start, end.as_deref(), *limit as usize, ts)
                .await
                .map_err(StoreFailed)?,
        ),
        ShardOp::DocRead(read) => {
            doc_reply(crate::doc_reads::read_docs(store, shard, read, Some(ts)).await)
        }
        other => unreachable!(
            "a snapshot read carries GET, MGET, SCAN or a document read, not {other:?}"
        ),
    })
}

pub fn store_error_code(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::DiskFull { .. } => ErrorCode::DiskFull,
        StoreError::Io { .. } => ErrorCode::IoError,
        _ => ErrorCode::Internal,
    }
}
