//! The shard loop's decisions, without a runtime: what to take from the queue, when to begin
//! a commit group, what to answer, when to retry a failed shard, when to checkpoint. `node`
//! runs a [`ShardDriver`] on an executor (group writes as tasks, replies over channels,
//! wake-ups from the queue and a timer); the simulation tests (`tests/shard_sim.rs`) run the
//! same driver under a seeded scheduler with a simulated clock and disk.
//!
//! One pass of the loop:
//! 1. [`ShardDriver::run_ready`] begins Raft's ready work while the log has room: each
//!    group's write is handed back to run, and the committed entries are applied, their
//!    writers answered (this may wait for page reads);
//! 2. [`ShardDriver::take_requests`] takes the queued requests, without waiting for
//!    anything (the queue is shared with the connections): all of them when the shard takes
//!    writes ([`ShardCore::takes_writes`]), else only the reads that need not wait
//!    ([`ReadsMeanwhile`]); lock requests go to the lock table; the rest to
//!    [`ShardCore::take`], whose batch is proposed at once.
//!
//! Group writes are reported back, in log order, with [`ShardDriver::written`].

use std::collections::VecDeque;
use std::time::Duration;

use kvs_core::limits::BATCH_COMMANDS_MAX;
use kvs_core::log::{GroupWrite, GroupWritten, LogDisk, LogFile};
use kvs_core::store::PagedStore;

use crate::locks::LockTable;
use crate::shard::{Output, ReadsMeanwhile, ShardCore, ShardOp, ShardReply, ShardRequest};
use crate::shard_txn::TxnGate;

/// How long a failed shard waits between attempts to reopen.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// How often a leader looks whether its group prefers another member as leader (and, after
/// a failover, hands leadership back once the preferred member caught up).
pub const PLACEMENT_INTERVAL: Duration = Duration::from_secs(2);

/// How long a shard that no longer leads keeps its pending proposals waiting to learn their
/// fate (a new leader commits or replaces them) before answering TIMEOUT: a leader cut off
/// from the majority would otherwise hold its writers until the partition heals.
pub const DEPOSED_PROPOSAL_DEADLINE: Duration = Duration::from_secs(5);

/// How often a leader proposes forgetting the client sessions not heard from for
/// `SESSION_TTL_MS` (ADR 0018).
pub const SESSION_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// What running Raft's ready work produced.
pub struct ReadyRun<R, F: LogFile> {
    /// Group writes to run, oldest first; report each to [`ShardDriver::written`], in order.
    pub writes: Vec<GroupWrite<F>>,
    /// Replies to send, and reads to run in tasks of their own (each reported finished to
    /// the shard's `disk_reads`).
    pub output: Output<R>,
}

/// What taking requests produced.
pub struct Taken<R> {
    /// As [`ReadyRun::output`].
    pub output: Output<R>,
    /// Requests were taken: run another pass before waiting.
    pub took: bool,
}

/// What wakes a waiting loop, besides a group's write completing and a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Any request (writes are taken).
    AnyRequest,
    /// Only a read (writes wait for the group in flight; waking for them costs CPU only).
    Read,
}

/// When a shard checkpoints: when dirty pages fill half the cache, when writes wait for
/// room, when the log grew by `log_size` since the last one, or after `interval` with changes.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    pub interval: Duration,
    pub log_size: u64,
    /// Bytes per second at which pages are written (unless writers wait for room).
    pub rate: u64,
}

impl CheckpointPolicy {
    /// Whether a checkpoint is due, `since_last` after the last one.
    pub fn due<F: LogFile>(&self, store: &PagedStore<F>, since_last: Duration) -> bool {
        store.dirty_pressure()
            || store.write_refusal().is_some()
            || store.log_since_checkpoint() >= self.log_size
            || since_last >= self.interval && store.has_changes()
    }
}

/// The shard loop's state. See the module documentation.
pub struct ShardDriver<D: LogDisk + Clone, R> {
    shard: ShardCore<D, R>,
    locks: LockTable<R>,
    /// Transactions' locks (ADR 0022).
    txns: TxnGate<R>,
    /// While writes wait: the reads-only view of the queue (it remembers what it looked at).
    meanwhile: Option<ReadsMeanwhile>,
    /// The queue's front is a write of this origin, waiting for the origin's read from the
    /// disk: nothing to take until that read finishes.
    blocked_on: Option<crate::shard::Origin>,
    /// Whether the last pass took writes (what a wait should wake for).
    took_writes: bool,
    /// Whether the loop waited (went idle) since the last pass.
    woke: bool,
    /// Group writes handed out and not yet reported.
    writes_in_flight: usize,
    last_reopen: Option<Duration>,
    /// When leader placement was last looked at.
    last_placement: Option<Duration>,
    /// When sessions were last expired (the first tick starts the clock).
    last_expiry: Option<Duration>,
    /// Since when the shard, not leading, has had proposals pending.
    deposed_since: Option<Duration>,
    /// What a tick settled (reads a deposed leader refuses), handed out by the next
    /// [`ShardDriver::run_ready`].
    settled_on_tick: Output<R>,
}

impl<D: LogDisk + Clone, R> ShardDriver<D, R> {
    pub fn new(shard: ShardCore<D, R>) -> ShardDriver<D, R> {
        ShardDriver {
            txns: TxnGate::new(shard.shard_id()),
            shard,
            locks: LockTable::default(),
            meanwhile: None,
            blocked_on: None,
            took_writes: true,
            woke: false,
            writes_in_flight: 0,
            last_reopen: None,
            last_placement: None,
            last_expiry: None,
            deposed_since: None,
            settled_on_tick: Output::default(),
        }
    }

    pub fn shard(&self) -> &ShardCore<D, R> {
        &self.shard
    }

    /// The transaction locks' side of the loop (shares the node's wait-for graph).
    pub fn txns_mut(&mut self) -> &mut TxnGate<R> {
        &mut self.txns
    }

    pub fn shard_mut(&mut self) -> &mut ShardCore<D, R> {
        &mut self.shard
    }

    /// A Raft tick at `now` (any monotonic clock): also deletes log segments a checkpoint
    /// covers, and retries a failed shard once every [`REOPEN_INTERVAL`], when none of its
    /// group writes is still running. Returns whether the shard was reopened (its store is a
    /// new one).
    pub async fn tick(&mut self, now: Duration) -> bool {
        self.shard.tick();
        self.txns.tick(now, &mut self.settled_on_tick);
        if self
            .last_placement
            .is_none_or(|last| now.saturating_sub(last) >= PLACEMENT_INTERVAL)
        {
            self.last_placement = Some(now);
            self.shard.place_leader().await;
        }
        self.shard
            .expire_snapshots(kvs_core::sessions::wall_clock_ms());
        let last_expiry = *self.last_expiry.get_or_insert(now);
        if now.saturating_sub(last_expiry) >= SESSION_EXPIRY_INTERVAL {
            self.last_expiry = Some(now);
            self.shard
                .expire_sessions(kvs_core::sessions::wall_clock_ms());
        }
        // Leadership may have changed (check-quorum stepped down): reads wait no longer.
        let settled = self.shard.after_raft();
        self.settled_on_tick.extend(settled);
        if self.shard.is_leader() || self.shard.is_idle() {
            self.deposed_since = None;
        } else {
            let since = *self.deposed_since.get_or_insert(now);
            if now.saturating_sub(since) >= DEPOSED_PROPOSAL_DEADLINE {
                let given_up = self.shard.give_up_pending(DEPOSED_PROPOSAL_DEADLINE);
                self.settled_on_tick.extend(given_up);
                self.deposed_since = None;
            }
        }
        self.shard.trim_log().await;
        let retry = self.shard.failed()
            && self.writes_in_flight == 0
            && self
                .last_reopen
                .is_none_or(|last| now.saturating_sub(last) >= REOPEN_INTERVAL);
        if !retry {
            return false;
        }
        self.last_reopen = Some(now);
        self.shard.try_reopen().await
    }

    /// Begins Raft's ready work while the log has room, and applies what is committed.
    pub async fn run_ready(&mut self) -> ReadyRun<R, D::File> {
        let mut output = std::mem::take(&mut self.settled_on_tick);
        let mut writes = Vec::new();
        while self.shard.can_begin_ready() {
            let (write, begun) = self.shard.begin_ready().await;
            if let Some(write) = write {
                self.writes_in_flight += 1;
                writes.push(write);
            }
            output.extend(begun);
            output.extend(self.shard.apply_committed().await);
        }
        for record in self.shard.store().take_prepared_txns() {
            self.txns.hold_prepared(
                record.txn,
                crate::lock_names::of_steps(&record.commands),
                record.deadline_ms,
            );
        }
        for txn in self.shard.store().take_finished_txns() {
            self.txns.release_applied(txn, &mut output);
        }
        ReadyRun { writes, output }
    }

    /// Takes what it may from the queue (see the module documentation), without waiting.
    pub fn take_requests(&mut self, queue: &mut VecDeque<ShardRequest<R>>) -> Taken<R> {
        let mut output = Output::default();
        // A further group while one syncs only when the loop had gone idle waiting for it
        // (the queue wakes it once enough wait): a busy loop's queue becomes the next batch
        // anyway, and splitting it only costs fdatasyncs (docs/benchmarks.md, 2026-12-05).
        let woke = std::mem::take(&mut self.woke);
        let queued = if woke || queue.len() > BATCH_COMMANDS_MAX {
            queue.len()
        } else {
            0
        };
        self.took_writes = self.shard.takes_writes(queued);
        let requests: Vec<_> = if self.took_writes && self.is_blocked() {
            Vec::new()
        } else if self.took_writes {
            self.meanwhile = None;
            queue.drain(..).collect()
        } else {
            self.meanwhile
                .get_or_insert_with(ReadsMeanwhile::default)
                .take(queue)
        };
        let took = !requests.is_empty();
        if took {
            let requests = self.handle_locks(requests, &mut output);
            let leads = self.shard.is_leader();
            let requests = self.txns.filter(requests, &mut output, leads);
            let mut round = self.shard.take(requests);
            self.blocked_on = round.blocked_on;
            for request in round.leftover.drain(..).rev() {
                queue.push_front(request);
            }
            output.replies.append(&mut round.replies);
            output.deferred.append(&mut round.deferred);
            output.forwards.append(&mut round.forwards);
            if let Some(batch) = round.batch.take() {
                output.extend(self.shard.propose(batch));
            }
            // A cluster's leader asks Raft to confirm the reads it took.
            output.extend(self.shard.after_raft());
        }
        Taken { output, took }
    }

    /// Takes Raft messages from the group's other members; returns what they settled (reads
    /// confirmed or refused).
    pub fn step(
        &mut self,
        messages: impl IntoIterator<Item = raft::eraftpb::Message>,
    ) -> Output<R> {
        for message in messages {
            self.shard.step(message);
        }
        self.shard.after_raft()
    }

    /// Takes the outcome of the oldest group write handed out.
    pub fn written(&mut self, written: GroupWritten) -> Output<R> {
        assert!(
            self.writes_in_flight > 0,
            "a write reported that was not handed out"
        );
        self.writes_in_flight -= 1;
        self.shard.group_written(written)
    }

    /// What a wait should wake for.
    pub fn wake(&self) -> Wake {
        if self.took_writes {
            Wake::AnyRequest
        } else {
            Wake::Read
        }
    }

    /// Whether the queue holds something the next pass would take without a wake-up.
    pub fn has_work(&self, queue: &VecDeque<ShardRequest<R>>) -> bool {
        if self.took_writes {
            !self.is_blocked() && !queue.is_empty()
        } else {
            self.meanwhile
                .as_ref()
                .is_none_or(|meanwhile| meanwhile.has_unscanned(queue))
        }
    }

    /// The loop was woken (an arrival, a finished disk read, a group): the queue's front is
    /// worth another look.
    pub fn woken(&mut self) {
        self.blocked_on = None;
        self.woke = true;
    }

    /// Whether the queue's front still waits for its connection's read from the disk. Asked
    /// of the reads themselves, not left to a wake-up, which the loop misses if the read
    /// finishes while it is busy elsewhere (the queue would then sit until the next tick).
    fn is_blocked(&self) -> bool {
        self.blocked_on
            .is_some_and(|origin| self.shard.disk_reads().has(origin))
    }

    /// Whether the shard may stop: nothing pending and no group write running.
    pub fn is_idle(&self) -> bool {
        self.writes_in_flight == 0 && self.shard.is_idle()
    }

    /// Takes the lock requests out of `requests` and runs them on the shard's lock table: a
    /// grant or a release is answered at once, and a release answers the waiters it
    /// unblocks. Returns the other requests, in order.
    fn handle_locks(
        &mut self,
        requests: Vec<ShardRequest<R>>,
        output: &mut Output<R>,
    ) -> Vec<ShardRequest<R>> {
        if !requests.iter().any(|r| r.op.is_lock()) {
            return requests;
        }
        let mut rest = Vec::with_capacity(requests.len());
        for request in requests {
            match request.op {
                ShardOp::TxnLock(_) => rest.push(request),
                ShardOp::Lock(lock) => {
                    if let Some(granted) = self.locks.acquire(lock, request.reply) {
                        output.replies.push((granted, ShardReply::Locked));
                    }
                }
                ShardOp::Unlock(lock) => {
                    for granted in self.locks.release(&lock) {
                        output.replies.push((granted, ShardReply::Locked));
                    }
                    output.replies.push((request.reply, ShardReply::Locked));
                }
                _ => rest.push(request),
            }
        }
        rest
    }
}
