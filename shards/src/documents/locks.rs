//! The coordinator's side of the write locks on collections with unique indexes, which
//! serialise the writes whose unique keys are checked across shards. A collection's locks are
//! kept by the shard its name hashes to (`crate::locks`); a coordinator asks for one by
//! message and is answered when it is granted, and dropping the lock sends its release.
//! Nobody polls.

use std::rc::Rc;

use kvs_wire::{shard_for_key, ErrorCode};

use crate::ask::ask;
use crate::documents::common::{Fail, Out};
use crate::locks::LockRequest;
use crate::route::CoreContext;
use crate::runtime::spawn_local;
use crate::shard::{ShardOp, ShardReply};

/// A held lock; released (by a message to its keeper) when dropped.
pub(super) struct CollLock {
    ctx: Rc<CoreContext>,
    keeper: u32,
    request: Option<LockRequest>,
}

impl Drop for CollLock {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else {
            return;
        };
        let (ctx, keeper) = (Rc::clone(&self.ctx), self.keeper);
        spawn_local(async move {
            if let ShardReply::Error(code, message) =
                ask(&ctx, keeper, ShardOp::Unlock(request)).await
            {
                // Only while the node stops: its locks go with it.
                tracing::debug!(%code, message, "releasing a collection lock failed");
            }
        })
        .detach();
    }
}

/// The shard that keeps `coll`'s locks.
fn keeper(ctx: &CoreContext, coll: &str) -> u32 {
    shard_for_key(coll.as_bytes(), ctx.shard_count)
}

async fn acquire(ctx: &Rc<CoreContext>, request: LockRequest) -> Out<CollLock> {
    let keeper = keeper(ctx, &request.coll);
    match ask(ctx, keeper, ShardOp::Lock(request.clone())).await {
        ShardReply::Locked => Ok(CollLock {
            ctx: Rc::clone(ctx),
            keeper,
            request: Some(request),
        }),
        ShardReply::Error(code, message) => Err(Fail { code, message }),
        other => Err(Fail {
            code: ErrorCode::Internal,
            message: format!("unexpected reply to a lock request: {other:?}"),
        }),
    }
}

/// Holds `coll` shared and every one of `keys` (unique keys, already prefixed by their
/// index), for an insert.
pub(super) async fn lock_keys(
    ctx: &Rc<CoreContext>,
    coll: &str,
    keys: Vec<Vec<u8>>,
) -> Out<CollLock> {
    let request = LockRequest {
        coll: coll.to_string(),
        exclusive: false,
        keys,
    };
    acquire(ctx, request).await
}

/// Holds `coll` exclusive: no insert, update or index check of it goes on meanwhile.
pub(super) async fn lock_collection(ctx: &Rc<CoreContext>, coll: &str) -> Out<CollLock> {
    let request = LockRequest {
        coll: coll.to_string(),
        exclusive: true,
        keys: Vec::new(),
    };
    acquire(ctx, request).await
}
