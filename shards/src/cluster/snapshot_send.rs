//! Sending snapshots over a core's peer links (ADR 0017): one task per transfer, which
//! pins the shard's durable checkpoint, queues its chunks for the follower at no more than
//! `--snapshot-rate`, then queues the `MsgSnapshot` that names it. The shard loop learns how
//! each transfer ended ([`SnapshotTransfers::take_ended`]) and tells Raft: sent whole, or
//! broken (the link went down under it, or the checkpoint could not be read), in which case
//! Raft tries again later.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvs_core::log::LogFile;
use kvs_core::store::PagedStore;
use raft::eraftpb::Message;

use super::transport::Links;
use crate::runtime::{spawn_local, wait};
use crate::snapshot::{name_checkpoint, SnapshotSender};

/// Chunks queued for a follower beyond which the transfer waits for the link.
const CHUNKS_QUEUED_MAX: usize = 4;
/// How often a transfer waiting for its link looks again.
const QUEUE_POLL: Duration = Duration::from_millis(2);

/// The transfers of one core.
pub struct SnapshotTransfers {
    /// Bytes per second each transfer may send.
    rate: u64,
    /// Transfers that ended since the shard loop last looked: (follower, sent whole).
    ended: RefCell<Vec<(u64, bool)>>,
}

impl SnapshotTransfers {
    pub fn new(rate: u64) -> SnapshotTransfers {
        assert!(rate > 0, "a snapshot rate of zero never finishes");
        SnapshotTransfers {
            rate,
            ended: RefCell::new(Vec::new()),
        }
    }

    /// Starts sending `store`'s durable checkpoint to the follower `message` (a
    /// `MsgSnapshot` of group `group`) is for.
    pub fn start<F: LogFile + 'static>(
        self: &Rc<Self>,
        links: &Rc<Links>,
        group: u64,
        store: &Rc<PagedStore<F>>,
        message: Message,
    ) {
        let transfers = Rc::clone(self);
        let links = Rc::clone(links);
        let store = Rc::clone(store);
        spawn_local(async move {
            let to = message.to;
            let whole = transfers.send(&links, group, &store, message).await;
            transfers.ended.borrow_mut().push((to, whole));
        })
        .detach();
    }

    /// Transfers that ended since the last call: (follower, sent whole).
    pub fn take_ended(&self) -> Vec<(u64, bool)> {
        std::mem::take(&mut *self.ended.borrow_mut())
    }

    /// Runs one transfer; returns whether every chunk and the message were queued on one
    /// link that stayed up.
    async fn send<F: LogFile>(
        &self,
        links: &Links,
        group: u64,
        store: &Rc<PagedStore<F>>,
        mut message: Message,
    ) -> bool {
        let to = message.to;
        let Some(generation) = links.link_generation(to) else {
            return false;
        };
        let mut sender = match SnapshotSender::start(store).await {
            Ok(Some(sender)) => sender,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(group, to, %error, "cannot read the checkpoint for a snapshot");
                return false;
            }
        };
        let (index, term) = sender.position();
        name_checkpoint(&mut message, index, term);
        let pages = sender.total_pages();
        tracing::info!(group, to, index, pages, "sending a snapshot");
        let started = Instant::now();
        let mut bytes = 0u64;
        loop {
            let chunk = match sender.next_chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(group, to, %error, "cannot read the checkpoint for a snapshot");
                    return false;
                }
            };
            while links.snapshot_chunks_queued(to) >= CHUNKS_QUEUED_MAX {
                if links.link_generation(to) != Some(generation) {
                    break;
                }
                wait(QUEUE_POLL).await;
            }
            if links.link_generation(to) != Some(generation) {
                tracing::info!(group, to, index, "snapshot broken off: the link went down");
                return false;
            }
            bytes += chunk.size() as u64;
            links.send_snapshot_chunk(group, to, chunk);
            let due = started + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            let now = Instant::now();
            if due > now {
                wait(due - now).await;
            }
        }
        if links.link_generation(to) != Some(generation) {
            return false;
        }
        links.send(group, message);
        tracing::info!(
            group,
            to,
            index,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "snapshot sent"
        );
        true
    }
}
