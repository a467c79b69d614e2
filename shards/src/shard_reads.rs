//! Reads a shard answers from its store, outside the shard loop's own state: from the buffer
//! pool in the round ([`try_read_from`]) or, when pages must come from the disk, in a task of
//! their own ([`read_from`]; see `shard`'s module documentation for the order they keep).

use std::rc::Rc;

use futures_util::future::join_all;
use kvs_core::store::backup::BackupError;
use kvs_core::store::{PagedStore, StoreError};
use kvs_wire::message::BackupChunk;

use kvs_wire::ErrorCode;

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
        ShardOp::Scan { .. } | ShardOp::DocRead(_) | ShardOp::Info | ShardOp::Backup { .. } => None,
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
        ShardOp::MGet { keys } => {
            let mut values = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(READS_IN_FLIGHT) {
                for value in join_all(chunk.iter().map(|k| store.get(k))).await {
                    match value {
                        Ok(value) => values.push(value),
                        Err(e) => return failed(e),
                    }
                }
            }
            ShardReply::Values(values)
        }
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
        ShardOp::DocRead(read) => match crate::doc_reads::read_docs(store, shard, read).await {
            Ok(document) => ShardReply::Doc(document),
            Err((code, message)) => ShardReply::Error(code, message),
        },
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

pub fn store_error_code(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::DiskFull { .. } => ErrorCode::DiskFull,
        StoreError::Io { .. } => ErrorCode::IoError,
        _ => ErrorCode::Internal,
    }
}
