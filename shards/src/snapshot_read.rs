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
                began.map(|began| (shard, ShardOp::SnapshotAbandon { began }))
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

/// Round two's op for one shard: `read` (GET, MGET or SCAN) at the snapshot's timestamp.
pub fn at(begun: &Begun, part: usize, read: ShardOp) -> ShardOp {
    assert!(matches!(
        read,
        ShardOp::Get { .. } | ShardOp::MGet { .. } | ShardOp::Scan { .. }
    ));
    ShardOp::AtSnapshot {
        began: begun.began[part],
        ts: begun.ts,
        read: Box::new(read),
    }
}
