//! The transport from a coordinator task to the shards: each op goes out through
//! `CoreContext::send` with a [`ReplySlot`] as the target of its reply, and the task waits on
//! the slots. Every document command reaches the shards through here and nowhere else, and
//! so do the RESP commands that walk the whole keyspace (KEYS, FLUSHDB).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::route::{CoreContext, Deliver, Target};
use crate::shard::{Origin, ShardOp, ShardReply, NO_ORIGIN};

/// Where a shard's reply to a coordinator task lands.
#[derive(Default)]
pub struct ReplySlot {
    reply: RefCell<Option<ShardReply>>,
    waker: RefCell<Option<Waker>>,
}

impl Deliver for ReplySlot {
    fn deliver(self: Rc<Self>, _: u64, _: u32, reply: ShardReply) {
        self.fill(reply);
    }
}

impl ReplySlot {
    pub fn fill(&self, reply: ShardReply) {
        *self.reply.borrow_mut() = Some(reply);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

struct WaitReply(Rc<ReplySlot>);

impl Future for WaitReply {
    type Output = ShardReply;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ShardReply> {
        match self.0.reply.borrow_mut().take() {
            Some(reply) => Poll::Ready(reply),
            None => {
                *self.0.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Sends every op, then waits for all the replies (in the order of `ops`).
pub(crate) async fn ask_all(ctx: &CoreContext, ops: Vec<(u32, ShardOp)>) -> Vec<ShardReply> {
    ask_all_from(ctx, NO_ORIGIN, ops).await
}

/// Like [`ask_all`], for a connection's request: `origin` orders the ops after the writes
/// the connection sent before (a read sees them).
pub(crate) async fn ask_all_from(
    ctx: &CoreContext,
    origin: Origin,
    ops: Vec<(u32, ShardOp)>,
) -> Vec<ShardReply> {
    let mut slots = Vec::with_capacity(ops.len());
    for (shard, op) in ops {
        let slot = Rc::new(ReplySlot::default());
        ctx.send(
            shard,
            op,
            Target::new(Rc::clone(&slot) as Rc<dyn Deliver>, 0, 0, origin),
        )
        .await;
        slots.push(slot);
    }
    let mut replies = Vec::with_capacity(slots.len());
    for slot in slots {
        replies.push(WaitReply(slot).await);
    }
    replies
}

pub(crate) async fn ask(ctx: &CoreContext, shard: u32, op: ShardOp) -> ShardReply {
    ask_all(ctx, vec![(shard, op)])
        .await
        .pop()
        .expect("one reply")
}
