//! The coordinator's side of a snapshot read across shards (ADR 0023): a multi-shard MGET or
//! SCAN outside a transaction reads every shard at one timestamp.
//!
//! Round one ([`begin`]) asks each shard involved to begin a snapshot at its newest version
//! and waits for all; the read's timestamp is the highest of them, and this node's clock is
//! raised past it before the connection's next request is handled, so every write the
//! connection sends later (and every write proposed on this node from now on) takes a higher
//! version. Round two sends each shard its read at that timestamp ([`at`]); the shard raises
//! its own node's clock, waits for what was proposed before, reads and closes the snapshot.
//!
//! Every write acknowledged before the read began was applied before its shard answered
//! round one, so its version is at or below the timestamp: the read sees it.

use kvs_wire::ErrorCode;

use crate::ask::ask_all_from;
use crate::route::CoreContext;
use crate::shard::{Origin, ShardOp, ShardReply};

/// A snapshot begun on some shards: the read's timestamp, and where each shard began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begun {
    pub ts: u64,
    pub began: Vec<u64>,
}

/// Round one on `shards` (in this order); `origin` orders it after the connection's earlier
/// writes. On a refusal by any shard, the others' snapshots are dropped and the refusal is
/// returned.
pub async fn begin(
    ctx: &CoreContext,
    origin: Origin,
    shards: &[u32],
) -> Result<Begun, (ErrorCode, String)> {
    let ops = shards
        .iter()
        .map(|&s| (s, ShardOp::SnapshotBegin))
        .collect();
    let replies = ask_all_from(ctx, origin, ops).await;
    let mut began = Vec::with_capacity(shards.len());
    let mut refusal = None;
    for reply in replies {
        match reply {
            ShardReply::Snapshot(version) => began.push(Some(version)),
            ShardReply::Error(code, message) => {
                began.push(None);
                refusal.get_or_insert((code, message));
            }
            other => {
                began.push(None);
                refusal.get_or_insert((
                    ErrorCode::Internal,
                    format!("a snapshot's start answered {other:?}"),
                ));
            }
        }
    }
    if let Some(refusal) = refusal {
        let abandon = shards
            .iter()
            .zip(&began)
            .filter_map(|(&shard, began)| {
                began.map(|began| (shard, ShardOp::SnapshotEnd { began, ts: 0 }))
            })
            .collect();
        ask_all_from(ctx, origin, abandon).await;
        return Err(refusal);
    }
    let began: Vec<u64> = began.into_iter().map(|b| b.expect("no refusal")).collect();
    let ts = *began.iter().max().expect("at least one shard");
    ctx.transactions.clock.observe(ts);
    Ok(Begun { ts, began })
}

/// Round one when `shards` are several (one shard's read is atomic on its own: None).
pub async fn begin_if_several(
    ctx: &CoreContext,
    origin: Origin,
    shards: &[u32],
) -> Result<Option<Begun>, (ErrorCode, String)> {
    if shards.len() < 2 {
        return Ok(None);
    }
    begin(ctx, origin, shards).await.map(Some)
}

/// `read` for part `part`: at the snapshot when one was begun, else as it is.
pub fn maybe_at(begun: Option<&Begun>, part: usize, read: ShardOp) -> ShardOp {
    match begun {
        Some(begun) => at(begun, part, read),
        None => read,
    }
}

/// Round two's op for one shard: `read` (GET, MGET or SCAN) at the snapshot's timestamp,
/// which then closes there.
pub fn at(begun: &Begun, part: usize, read: ShardOp) -> ShardOp {
    assert!(matches!(
        read,
        ShardOp::Get { .. } | ShardOp::MGet { .. } | ShardOp::Scan { .. } | ShardOp::DocRead(_)
    ));
    ShardOp::AtSnapshot {
        began: begun.began[part],
        ts: begun.ts,
        keep_open: false,
        read: Box::new(read),
    }
}

/// Asks every op (each a read for a different shard) and waits for the replies, in order:
/// at one snapshot when there are several, with the refusal of round one as every reply if
/// it fails.
pub async fn ask_all_at(ctx: &CoreContext, ops: Vec<(u32, ShardOp)>) -> Vec<ShardReply> {
    let shards: Vec<u32> = ops.iter().map(|(shard, _)| *shard).collect();
    match begin_if_several(ctx, crate::shard::NO_ORIGIN, &shards).await {
        Ok(begun) => {
            let ops = ops
                .into_iter()
                .enumerate()
                .map(|(part, (shard, read))| (shard, maybe_at(begun.as_ref(), part, read)))
                .collect();
            ask_all_from(ctx, crate::shard::NO_ORIGIN, ops).await
        }
        Err((code, message)) => vec![ShardReply::Error(code, message); shards.len()],
    }
}

/// A snapshot a read-only transaction reads, on every shard, until it ends.
#[derive(Debug)]
pub struct Held {
    begun: Begun,
    /// Shards where a read fixed it.
    fixed: std::collections::BTreeSet<u32>,
}

impl Held {
    pub fn new(begun: Begun) -> Held {
        Held {
            begun,
            fixed: Default::default(),
        }
    }

    /// `read` on `shard` (one of all the shards, by number) at the snapshot, which stays
    /// open.
    pub fn read(&mut self, shard: u32, read: ShardOp) -> ShardOp {
        let first = self.fixed.insert(shard);
        ShardOp::AtSnapshot {
            began: if first {
                self.begun.began[shard as usize]
            } else {
                0
            },
            ts: self.begun.ts,
            keep_open: true,
            read: Box::new(read),
        }
    }

    /// Ends the snapshot on every shard.
    pub async fn end(self, ctx: &CoreContext) {
        let ops = (0..self.begun.began.len() as u32)
            .map(|shard| {
                let end = if self.fixed.contains(&shard) {
                    ShardOp::SnapshotEnd {
                        began: 0,
                        ts: self.begun.ts,
                    }
                } else {
                    ShardOp::SnapshotEnd {
                        began: self.begun.began[shard as usize],
                        ts: 0,
                    }
                };
                (shard, end)
            })
            .collect();
        ask_all_from(ctx, crate::shard::NO_ORIGIN, ops).await;
    }
}
