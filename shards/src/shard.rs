//! The shard service: turns a stream of requests into Raft proposals and replies.
//!
//! [`ShardCore::take`] takes every request that queued up since the last round. Reads are
//! answered at once from the applied state, which holds only durable entries; the writes go
//! into one batch entry (group commit: one proposal, one commit group, one fdatasync), which
//! [`ShardCore::propose`] hands to Raft and records in the table of pending proposals
//! (`pending`). The shard loop then begins Raft's ready ([`ShardCore::begin_ready`]): the
//! log group is written in a task of its own while the shard goes on taking requests. As
//! groups are reported durable, in log order ([`ShardCore::group_written`]), their entries
//! commit and are applied ([`ShardCore::apply_committed`]), and the writers are answered from
//! apply, in log order. While a group is in flight, the loop takes only reads
//! ([`ReadsMeanwhile`]) and the writes queue up into the next batch, unless more wait than a
//! batch holds: then further groups start at once, up to the log's window
//! (`GROUPS_IN_FLIGHT_MAX`; see [`ShardCore::takes_writes`]). It is sans-runtime; `node` runs
//! it on an executor of `runtime`.
//!
//! Order: requests of one origin (a client connection) take effect in the order sent, as
//! with Redis. A read whose origin has a write not yet applied is attached to the entry with
//! that origin's newest write and answered right after it is applied, before the next entry
//! is; a write of an origin with a read waiting on the batch being formed starts the next
//! batch. So a read sees exactly the writes its connection sent before it. Reads of other
//! origins never wait for a batch: its writes are not acknowledged yet, so they are
//! concurrent with those reads, which may see the state before them.
//!
//! A read the buffer pool can answer is answered in the round. A read that needs the disk is
//! handed back as *deferred*: the caller runs it in a task of its own ([`read_from`]), so it
//! waits for its pages while the shard goes on with other rounds.
//!
//! A shard whose log or page file failed refuses writes (DISK_FULL, IO_ERROR) and keeps
//! serving reads; its pending writers learn the outcome is unknown. [`ShardCore::try_reopen`]
//! then reopens it from disk, as a restart would, and it takes writes again once the disk
//! works (space was freed, say).

use kvs_core::command::{BatchEncoder, Command};
use kvs_core::limits::{BATCH_BYTES_MAX, BATCH_COMMANDS_MAX};
use kvs_core::log::{GroupWrite, GroupWritten, LogDisk, LogError};
use kvs_core::store::StoreConfig;
use kvs_wire::ErrorCode;

use crate::lease::lease_clock;
use crate::peer::{Membership, Peer, PeerError, PeerStatus};
use crate::pending::{Pending, Proposal};
use crate::read_index::ReadIndexQueue;
pub use crate::shard_reads::READS_IN_FLIGHT;
use crate::shard_reads::{read_from, store_error_code, try_read_from};
use raft::eraftpb::Entry;

pub use crate::shard_ops::{
    NodeView, Origin, ReplicaInfo, ShardClusterInfo, ShardInfo, ShardOp, ShardReply, ShardRequest,
    FORWARDED_ORIGIN, NO_ORIGIN,
};

/// Proposals a replicated group's leader keeps waiting for their commit before it batches
/// further writes (see [`ShardCore::takes_writes`]).
pub const PROPOSALS_IN_FLIGHT_REPLICATED: usize = 1;

/// What a round produced: replies ready now, requests that wait for the next round (past
/// the batch limits, or reads that must see the batch), reads that need the disk, and the
/// batch of writes to commit.
#[derive(Debug)]
pub struct Round<R> {
    pub replies: Vec<(R, ShardReply)>,
    pub leftover: Vec<ShardRequest<R>>,
    /// Reads that need the disk, to run in tasks of their own; each is counted in
    /// [`ShardCore::disk_reads`] until the caller reports it finished.
    pub deferred: Vec<ShardRequest<R>>,
    /// The leftover starts with a write of this origin, which has a read from the disk in
    /// flight: taking the queue again gets nowhere until that read finishes.
    pub blocked_on: Option<Origin>,
    pub batch: Option<Batch<R>>,
    /// Requests for the group's leader on another node: (node, request).
    pub forwards: Vec<(u64, ShardRequest<R>)>,
}

/// The writes of one round, to be proposed as one entry.
#[derive(Debug)]
pub struct Batch<R> {
    encoder: BatchEncoder,
    /// The commands encoded, kept to apply without decoding (outside a cluster only).
    commands: Option<Vec<Command>>,
    writers: Vec<R>,
    /// The origins with a write in the batch, sorted, each once.
    origins: Vec<Origin>,
    /// Reads of those origins that arrived after their writes: answered once it is applied.
    reads: Vec<ShardRequest<R>>,
}

/// Picks out of the shard's queue, while the log has no room for another group (writes wait
/// for the next batch), the reads that may be taken meanwhile: reads whose origin has no
/// write earlier in the queue. They go to [`ShardCore::take`], which attaches those of
/// origins with writes still pending. Everything else stays in the queue, in order; INFO and
/// lock requests wait for the next round. The queue only grows at its back meanwhile, so each
/// call looks only at the requests that arrived since the last one (a rescan of the whole
/// queue on every arrival cost O(n^2): SET at pipeline 16 lost a quarter of its throughput).
#[derive(Debug, Default)]
pub struct ReadsMeanwhile {
    /// Origins with a write in the part of the queue already looked at.
    writing: Vec<Origin>,
    /// How much of the queue was looked at: all of it waits.
    scanned: usize,
}

impl ReadsMeanwhile {
    fn waits(&mut self, op: &ShardOp, origin: Origin) -> bool {
        match op {
            ShardOp::Write(_) => {
                if !self.writing.contains(&origin) {
                    self.writing.push(origin);
                }
                true
            }
            ShardOp::Info | ShardOp::Lock(_) | ShardOp::Unlock(_) => true,
            _ => origin != NO_ORIGIN && self.writing.contains(&origin),
        }
    }

    /// Whether requests arrived in `queue` since the last look.
    pub fn has_unscanned<R>(&self, queue: &std::collections::VecDeque<ShardRequest<R>>) -> bool {
        queue.len() > self.scanned
    }

    /// Takes the reads that may be answered now out of `queue`.
    pub fn take<R>(
        &mut self,
        queue: &mut std::collections::VecDeque<ShardRequest<R>>,
    ) -> Vec<ShardRequest<R>> {
        assert!(
            self.scanned <= queue.len(),
            "the queue only grows while writes wait"
        );
        let mut answerable = Vec::new();
        let scanned = self.scanned;
        for (at, request) in queue.iter().enumerate().skip(scanned) {
            if !self.waits(&request.op, request.origin) {
                answerable.push(at);
            }
        }
        if answerable.is_empty() {
            self.scanned = queue.len();
            return Vec::new();
        }
        let tail: Vec<ShardRequest<R>> = queue.drain(self.scanned..).collect();
        let mut taken = Vec::with_capacity(answerable.len());
        let mut next = answerable.iter().peekable();
        for (offset, request) in tail.into_iter().enumerate() {
            if next.peek().is_some_and(|&&at| at == self.scanned + offset) {
                next.next();
                taken.push(request);
            } else {
                queue.push_back(request);
            }
        }
        self.scanned = queue.len();
        taken
    }
}

/// The origins with reads from the disk in flight (in tasks of their own, outside the
/// shard). A write of such an origin waits until they finish: the read must not see a write
/// its connection sent after it. Shared between the shard, which counts each deferred read
/// it hands out, and whoever runs the reads, who reports each one finished.
#[derive(Debug, Default, Clone)]
pub struct DiskReads(std::rc::Rc<std::cell::RefCell<std::collections::HashMap<Origin, u32>>>);

impl DiskReads {
    /// Counts `reads` as handed out to run on their own (each is reported with `finish`).
    fn hand_out<R>(&self, reads: &[ShardRequest<R>]) {
        let mut counts = self.0.borrow_mut();
        for read in reads.iter().filter(|read| read.origin != NO_ORIGIN) {
            *counts.entry(read.origin).or_default() += 1;
        }
    }

    /// A read of `origin` handed out as deferred has been answered.
    pub fn finish(&self, origin: Origin) {
        if origin == NO_ORIGIN {
            return;
        }
        let mut reads = self.0.borrow_mut();
        let count = reads
            .get_mut(&origin)
            .expect("a finished disk read was started");
        *count -= 1;
        if *count == 0 {
            reads.remove(&origin);
        }
    }

    /// Whether `origin` has a read from the disk in flight.
    pub fn has(&self, origin: Origin) -> bool {
        origin != NO_ORIGIN && self.0.borrow().contains_key(&origin)
    }
}

/// A shard: its peer, the pending proposals, and the bookkeeping of the request path. `R`
/// is where a reply goes.
pub struct ShardCore<D: LogDisk + Clone, R> {
    shard: u32,
    disk: D,
    config: StoreConfig,
    peer: Peer<D>,
    /// Set when the log failed: the shard then refuses writes and keeps serving reads.
    failed: Option<(ErrorCode, String)>,
    writes_applied: u64,
    pending: Pending<R, ShardRequest<R>>,
    /// Committed entries handed out by the last begun ready, to apply next.
    to_apply: Vec<Entry>,
    disk_reads: DiskReads,
    /// More queued requests than this start a further group while one is in flight.
    pipeline_when_queued: usize,
    membership: Membership,
    /// Reads a cluster's leader holds until Raft confirms them (ReadIndex).
    reads: ReadIndexQueue<ShardRequest<R>>,
    /// Where the other nodes serve clients, for the hint in NOT_LEADER.
    node_addrs: std::collections::HashMap<u64, String>,
    /// Whether requests for a leader elsewhere are forwarded to it.
    forwarding: bool,
    /// `--read-consistency stale`: reads are answered from this member's own state.
    stale_reads: bool,
    /// Requests forwarded to the leader elsewhere, for INFO.
    forwarded: u64,
    /// Snapshots sent whole to followers, for INFO.
    snapshots_sent: u64,
    /// The cluster's id and its nodes as this core last saw them, for INFO.
    cluster_view: Option<(String, Vec<NodeView>)>,
    /// Where log segments are archived (`set_archive`).
    archive: Option<std::rc::Rc<dyn kvs_core::log::SegmentArchive>>,
    /// The node's hybrid clock (`set_clock`): each proposal's version floor.
    clock: std::sync::Arc<crate::clock::Clock>,
    /// Snapshots older than this are closed (`--txn-max-age`).
    snapshot_max_age: std::time::Duration,
}

/// Replies a step produced, and reads to answer in tasks of their own (they need the disk,
/// and nothing orders them against what the shard does next).
#[derive(Debug)]
pub struct Output<R> {
    pub replies: Vec<(R, ShardReply)>,
    pub deferred: Vec<ShardRequest<R>>,
    /// Requests to forward to the group's leader: (node, request).
    pub forwards: Vec<(u64, ShardRequest<R>)>,
}

impl<R> Default for Output<R> {
    fn default() -> Self {
        Output {
            replies: Vec::new(),
            deferred: Vec::new(),
            forwards: Vec::new(),
        }
    }
}

impl<R> Output<R> {
    pub fn is_empty(&self) -> bool {
        self.replies.is_empty() && self.deferred.is_empty() && self.forwards.is_empty()
    }

    pub fn extend(&mut self, other: Output<R>) {
        self.replies.extend(other.replies);
        self.deferred.extend(other.deferred);
        self.forwards.extend(other.forwards);
    }
}

fn error_code_of(error: &PeerError) -> ErrorCode {
    match error {
        PeerError::Log(LogError::DiskFull { .. }) => ErrorCode::DiskFull,
        PeerError::Log(LogError::Io { .. }) => ErrorCode::IoError,
        PeerError::Store(e) => store_error_code(e),
        PeerError::Log(LogError::TooLarge(_)) => ErrorCode::TooLarge,
        PeerError::NotLeader => ErrorCode::NotLeader,
        _ => ErrorCode::Internal,
    }
}

/// The code a writer gets when committing its batch failed with `error`. A failure before
/// anything could be durable (the proposal was refused, the write found no space) surely
/// failed; one on the commit's write or fdatasync (the group may have reached the disk) or
/// while applying an entry that is already durable has an unknown outcome: a restart
/// recovers whatever the log holds.
fn commit_error_code(error: &PeerError) -> ErrorCode {
    match error {
        PeerError::NotLeader
        | PeerError::Log(LogError::DiskFull { .. } | LogError::TooLarge(_)) => error_code_of(error),
        PeerError::Log(_)
        | PeerError::Store(_)
        | PeerError::Apply { .. }
        | PeerError::Raft(_)
        | PeerError::Misrouted { .. } => ErrorCode::OutcomeUnknown,
    }
}

impl<D: LogDisk + Clone, R> ShardCore<D, R> {
    /// Opens the shard's store and log, recovers, and applies the log after the checkpoint.
    pub async fn open(
        disk: D,
        shard: u32,
        config: StoreConfig,
    ) -> Result<ShardCore<D, R>, PeerError> {
        ShardCore::open_member(disk, shard, config, Membership::single()).await
    }

    /// Like [`ShardCore::open`], as one member of a replicated group. It then answers
    /// requests only while it leads: reads once Raft confirmed its leadership (ReadIndex),
    /// and NOT_LEADER (naming the leader) or NO_QUORUM (no leader known) otherwise, before
    /// anything is proposed.
    pub async fn open_member(
        disk: D,
        shard: u32,
        config: StoreConfig,
        membership: Membership,
    ) -> Result<ShardCore<D, R>, PeerError> {
        let peer = Self::open_peer(disk.clone(), shard, config, &membership).await?;
        Ok(ShardCore {
            membership,
            reads: ReadIndexQueue::default(),
            node_addrs: std::collections::HashMap::new(),
            forwarding: false,
            stale_reads: false,
            forwarded: 0,
            snapshots_sent: 0,
            cluster_view: None,
            shard,
            disk,
            config,
            peer,
            failed: None,
            writes_applied: 0,
            pending: Pending::default(),
            to_apply: Vec::new(),
            disk_reads: DiskReads::default(),
            pipeline_when_queued: crate::shard_ops::PIPELINE_WHEN_QUEUED,
            archive: None,
            clock: Default::default(),
            snapshot_max_age: crate::txn_shared::SNAPSHOT_MAX_AGE_DEFAULT,
        })
    }

    /// Shares the node's hybrid clock (ADR 0023) with this shard, and `--txn-max-age`.
    pub fn set_clock(
        &mut self,
        clock: std::sync::Arc<crate::clock::Clock>,
        snapshot_max_age: std::time::Duration,
    ) {
        self.clock = clock;
        self.snapshot_max_age = snapshot_max_age;
    }

    /// Closes the snapshots older than `--txn-max-age`; the shard loop calls it every tick.
    pub fn expire_snapshots(&self, now_ms: u64) {
        let before = now_ms.saturating_sub(self.snapshot_max_age.as_millis() as u64);
        let closed = self.peer.store().snapshot_expire(before);
        if closed > 0 {
            tracing::warn!(
                shard = self.shard,
                closed,
                "closed snapshots older than --txn-max-age"
            );
        }
    }

    pub fn clock(&self) -> &crate::clock::Clock {
        &self.clock
    }

    /// Archives the log's segments before deleting them (`kvsd --archive-dir`), from now on
    /// and after a reopen.
    pub fn set_archive(&mut self, archive: std::rc::Rc<dyn kvs_core::log::SegmentArchive>) {
        self.peer.set_archive(std::rc::Rc::clone(&archive));
        self.archive = Some(archive);
    }

    async fn open_peer(
        disk: D,
        shard: u32,
        config: StoreConfig,
        membership: &Membership,
    ) -> Result<Peer<D>, PeerError> {
        let mut peer = Peer::open_member(disk, shard, config, membership.clone()).await?;
        // A group of one elects itself; the first Ready persists the new term and the
        // leader's no-op, and applies the recovered log. A larger group's member applies
        // what its log holds as committed and waits for an election.
        peer.handle_ready().await?;
        if membership.voters.len() == 1 && !peer.is_serving() {
            return Err(PeerError::Apply {
                index: 0,
                detail: "a single-voter group did not lead after its first Ready".into(),
            });
        }
        Ok(peer)
    }

    /// The store, for the checkpoint task. It changes when the shard is reopened.
    pub fn store(&self) -> &std::rc::Rc<kvs_core::store::PagedStore<D::File>> {
        self.peer.store()
    }

    pub fn failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Reopens a failed shard from disk, as a restart would: what was acknowledged is in the
    /// log, and the in-memory state is rebuilt from the checkpoint and the log. Returns
    /// whether the shard takes writes again; on failure it stays read-only. The caller waits
    /// for the failed peer's group writes first.
    pub async fn try_reopen(&mut self) -> bool {
        if self.failed.is_none() {
            return true;
        }
        assert!(
            self.pending.is_empty(),
            "a failed shard answered its proposals"
        );
        // The old store's checkpoint must not write while the new store owns the file.
        self.peer.store().wait_idle().await;
        match Self::open_peer(self.disk.clone(), self.shard, self.config, &self.membership).await {
            Ok(mut peer) => {
                tracing::info!(shard = self.shard, "shard reopened; it takes writes again");
                if let Some(archive) = &self.archive {
                    peer.set_archive(std::rc::Rc::clone(archive));
                }
                self.peer = peer;
                self.failed = None;
                self.to_apply.clear();
                true
            }
            Err(error) => {
                tracing::debug!(shard = self.shard, %error, "shard still cannot reopen");
                false
            }
        }
    }

    /// Deletes log segments a durable checkpoint covers.
    pub async fn trim_log(&mut self) {
        match self.peer.trim_log().await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(shard = self.shard, removed, "log segments deleted"),
            Err(error) => {
                tracing::warn!(shard = self.shard, %error, "deleting old log segments failed")
            }
        }
    }

    pub fn tick(&mut self) {
        self.peer.tick();
    }

    pub fn status(&self) -> PeerStatus {
        self.peer.status()
    }

    /// Answers a read from the pool alone, or None when it needs the disk.
    fn try_read(&self, op: &ShardOp) -> Option<ShardReply> {
        match op {
            ShardOp::Info => Some(ShardReply::Info(Box::new(self.info()))),
            op => try_read_from(self.peer.store(), op),
        }
    }

    /// Answers a read, from the disk if need be (see [`read_from`]).
    pub async fn read(&self, op: &ShardOp) -> ShardReply {
        match self.try_read(op) {
            Some(reply) => reply,
            None => read_from(self.peer.store(), self.shard, op).await,
        }
    }

    /// The count of deferred reads in flight, for whoever runs them to report each finished.
    pub fn disk_reads(&self) -> DiskReads {
        self.disk_reads.clone()
    }

    /// Whether to take writes now, with `queued` requests waiting. Yes when no group is in
    /// flight (the batch then holds everything that queued while the last group synced: group
    /// commit). While one is, a further group starts once more than `PIPELINE_WHEN_QUEUED`
    /// (4) requests wait and the log has room (its window), so the next group's intake overlaps
    /// the sync (the queue wakes the loop then): SET at pipeline 1 went from ~77K/s to ~115K/s.
    /// At every arrival it cost a quarter of that (an fdatasync per write or two); only when
    /// a whole batch waits, the core idled half of each group's sync (docs/benchmarks.md).
    /// A failed shard takes writes (to refuse them). When this says no, the caller takes
    /// only reads (see [`ReadsMeanwhile`]), and the writes queue up into the next batch.
    ///
    /// A replicated group's leader also waits while [`PROPOSALS_IN_FLIGHT_REPLICATED`]
    /// proposals are not yet applied: its entries commit only after a follower's round trip
    /// and fdatasync, much later than its own write completes, and starting a group at each
    /// of its own writes made entries of about two writes each, every one costing an
    /// fdatasync on every node. Measured on 3 nodes sharing 2 cores, 64 clients: 31.3K
    /// writes/s with one proposal in flight, 26.7K with two (docs/benchmarks.md).
    pub fn takes_writes(&self, queued: usize) -> bool {
        let commits_keep_up = !self.is_replicated()
            || !self.peer.is_leader()
            || self.pending.len() < PROPOSALS_IN_FLIGHT_REPLICATED
            || queued > BATCH_COMMANDS_MAX;
        self.failed.is_some()
            || self.peer.has_room_for_group()
                && (self.peer.groups_in_flight() == 0 || queued > self.pipeline_when_queued)
                && commits_keep_up
    }

    /// Sets how many queued requests start a further group while one is in flight (by
    /// default `PIPELINE_WHEN_QUEUED`). Simulations lower it to reach every schedule the
    /// log's window allows.
    pub fn set_pipeline_when_queued(&mut self, queued: usize) {
        self.pipeline_when_queued = queued;
    }

    /// The shard's number.
    pub fn shard_id(&self) -> u32 {
        self.shard
    }

    /// Takes one round of requests (see the module documentation): answers the reads it
    /// can, defers those that need the disk, attaches to pending entries the reads that must
    /// see them, and gathers the writes into a batch.
    pub fn take(&mut self, requests: Vec<ShardRequest<R>>) -> Round<R> {
        let round_size = requests.len();
        let mut replies = Vec::with_capacity(round_size);
        let mut requests = requests.into_iter();
        let mut writers: Vec<R> = Vec::new();
        let mut origins: Vec<Origin> = Vec::new();
        let mut encoder = BatchEncoder::new();
        let mut commands = (!self.is_replicated()).then(|| Vec::with_capacity(round_size));
        let mut leftover = Vec::new();
        let mut deferred = Vec::new();
        let mut reads: Vec<ShardRequest<R>> = Vec::new();
        let mut blocked_on = None;
        let mut forwards = Vec::new();
        let leads = !self.is_replicated() || self.peer.is_leader();
        for mut request in requests.by_ref() {
            if let ShardOp::TxnLock(_) = &request.op {
                // Only a transaction's lock request a member that does not lead got is here
                // (the leader's lock table took the others): on to the leader.
                match self.forward_to(&request) {
                    Some(leader) => {
                        self.forwarded += 1;
                        forwards.push((leader, request));
                    }
                    None => replies.push((request.reply, self.not_leader())),
                }
                continue;
            }
            // A member that does not lead forwards it still fenced.
            let fenced = match (leads, &mut request.op) {
                (true, ShardOp::Fenced(inner)) => {
                    request.op = std::mem::replace(inner.as_mut(), ShardOp::Info);
                    true
                }
                (true, ShardOp::AtSnapshot { ts, .. }) => {
                    // Every batch proposed from now on (this round's too) takes versions
                    // above the snapshot's: it waits only for the entries in flight that
                    // may take one at or below (none once a version above was applied).
                    let ts = *ts;
                    self.clock.observe(ts);
                    let pending = (self.peer.store().last_version() < ts)
                        .then(|| self.pending.newest_at_or_below(ts))
                        .flatten();
                    if let Some(index) = pending {
                        self.count_held_read(&request);
                        self.pending.attach(index, request);
                        continue;
                    }
                    false
                }
                _ => false,
            };
            if fenced {
                // A transaction's read, or a snapshot's: it must see every write proposed
                // before it (the writes of this round's batch, else the newest pending
                // entry).
                if encoder.count() > 0 {
                    self.count_held_read(&request);
                    reads.push(request);
                    continue;
                }
                if let Some(index) = self.pending.newest() {
                    self.count_held_read(&request);
                    self.pending.attach(index, request);
                    continue;
                }
            }
            if request.op.is_lock() {
                let message = "a lock request reached the store, not the lock table";
                replies.push((
                    request.reply,
                    ShardReply::Error(ErrorCode::Internal, message.into()),
                ));
                continue;
            }
            let ShardOp::Write(command) = &request.op else {
                if request.origin != NO_ORIGIN && origins.contains(&request.origin) {
                    // It must see its connection's write in this batch: answered once the
                    // batch is applied.
                    self.count_held_read(&request);
                    reads.push(request);
                    continue;
                }
                let pending = (request.origin != NO_ORIGIN)
                    .then(|| self.pending.newest_unapplied(request.origin))
                    .flatten();
                if let Some(index) = pending {
                    self.count_held_read(&request);
                    self.pending.attach(index, request);
                    continue;
                }
                let linearizable =
                    self.is_replicated() && !request.op.is_local_read() && !self.stale_reads;
                // With its lease, a leader whose state is current answers like a single
                // node (ADR 0019); one that has yet to apply what is committed answers
                // once it has.
                let leased = linearizable
                    .then(|| self.peer.lease_read(lease_clock()))
                    .flatten();
                let current =
                    leased.is_some_and(|index| index <= self.peer.store().applied_index());
                if linearizable && !current {
                    if let Some(index) = leased {
                        self.disk_reads.hand_out(std::slice::from_ref(&request));
                        self.reads.confirm_at(request, index);
                    } else if self.peer.is_leader() {
                        // Answered once Raft confirms this node still leads; counted with
                        // the disk reads so that its connection's next write waits for it.
                        self.disk_reads.hand_out(std::slice::from_ref(&request));
                        self.reads.gather(request);
                    } else if let Some(leader) = self.forward_to(&request) {
                        self.forwarded += 1;
                        forwards.push((leader, request));
                    } else {
                        replies.push((request.reply, self.not_leader()));
                    }
                    continue;
                }
                match self.try_read(&request.op) {
                    Some(reply) => replies.push((request.reply, reply)),
                    None => deferred.push(request),
                }
                continue;
            };
            if let Some((code, message)) = &self.failed {
                replies.push((request.reply, ShardReply::Error(*code, message.clone())));
                continue;
            }
            if let Command::SetPreferredLeader { node } = command {
                if !self.membership_has(*node) {
                    let message = format!(
                        "node {node} is not a member of shard {}'s group",
                        self.shard
                    );
                    replies.push((
                        request.reply,
                        ShardReply::Error(ErrorCode::BadRequest, message),
                    ));
                    continue;
                }
            }
            if self.is_replicated() && !self.peer.is_leader() {
                match self.forward_to(&request) {
                    Some(leader) => {
                        self.forwarded += 1;
                        forwards.push((leader, request));
                    }
                    None => replies.push((request.reply, self.not_leader())),
                }
                continue;
            }
            // Dirty pages cannot be written out: take no new writes until a checkpoint
            // succeeds (the checkpoint task retries every second).
            if let Some((disk_full, message)) = self.peer.store().write_refusal() {
                let code = if disk_full {
                    ErrorCode::DiskFull
                } else {
                    ErrorCode::IoError
                };
                let message = format!("shard {}: {message}", self.shard);
                replies.push((request.reply, ShardReply::Error(code, message)));
                continue;
            }
            let full = encoder.count() as usize >= BATCH_COMMANDS_MAX
                || encoder.count() > 0
                    && encoder.len_bytes() + command.encoded_len() > BATCH_BYTES_MAX;
            // A read of its connection waits for this batch: the write must not be in it.
            let after_own_read = request.origin != NO_ORIGIN
                && reads.iter().any(|read| read.origin == request.origin);
            // A read of its connection is reading the disk: the write waits until it is done.
            let after_own_disk_read = request.origin != NO_ORIGIN
                && (self.disk_reads.has(request.origin)
                    || deferred.iter().any(|read| read.origin == request.origin));
            if full || after_own_read || after_own_disk_read {
                blocked_on = after_own_disk_read.then_some(request.origin);
                leftover.push(request);
                break;
            }
            encoder.push(command);
            if let Some(commands) = &mut commands {
                let ShardOp::Write(command) = std::mem::replace(&mut request.op, ShardOp::Info)
                else {
                    unreachable!("a write")
                };
                commands.push(command);
            }
            writers.push(request.reply);
            // Sorted and made unique once the batch is formed: a lookup per write cost a
            // scan of every origin so far.
            if request.origin != NO_ORIGIN && origins.last() != Some(&request.origin) {
                origins.push(request.origin);
            }
        }
        leftover.extend(requests);
        self.disk_reads.hand_out(&deferred);
        origins.sort_unstable();
        origins.dedup();
        let batch = (!writers.is_empty()).then_some(Batch {
            encoder,
            commands,
            writers,
            origins,
            reads,
        });
        Round {
            replies,
            leftover,
            deferred,
            blocked_on,
            batch,
            forwards,
        }
    }

    /// Proposes a batch as one entry. Its writers are answered when it is applied
    /// ([`ShardCore::apply_committed`]); what this returns are the answers of a proposal
    /// that surely failed (not the leader, say).
    pub fn propose(&mut self, batch: Batch<R>) -> Output<R> {
        let Batch {
            encoder,
            commands,
            writers,
            origins,
            reads,
        } = batch;
        let count = encoder.count() as usize;
        assert_eq!(count, writers.len(), "one writer per command");
        assert!(
            !origins.contains(&NO_ORIGIN),
            "origins that keep no order are not recorded"
        );
        let floor = self.clock.next();
        let data = encoder.finish_at(kvs_core::sessions::wall_clock_ms(), floor);
        match self.peer.propose(data) {
            Ok((index, term)) => {
                // Proposals of an earlier term at this index or after it are gone from this
                // peer's log: another leader's entries replaced them.
                let mut output = Output::default();
                for replaced in self.pending.take_from(index) {
                    output.extend(self.replaced(replaced));
                }
                self.pending.add(Proposal {
                    index,
                    term,
                    writers,
                    origins,
                    reads,
                    floor,
                    commands,
                });
                output
            }
            Err(error) => {
                let code = error_code_of(&error);
                let message = format!("shard {}: {error}", self.shard);
                let mut output = Output {
                    replies: writers
                        .into_iter()
                        .map(|to| (to, ShardReply::Error(code, message.clone())))
                        .collect(),
                    ..Output::default()
                };
                output.extend(self.reads_without_their_write(reads));
                output
            }
        }
    }

    /// Whether Raft has ready work and the log room for it.
    pub fn can_begin_ready(&self) -> bool {
        self.failed.is_none() && self.peer.can_begin_ready()
    }

    /// Begins Raft's next ready: returns the log group to write (run it, then report it to
    /// [`ShardCore::group_written`], in log order), and keeps the committed entries for
    /// [`ShardCore::apply_committed`], which the caller runs next.
    pub async fn begin_ready(&mut self) -> (Option<GroupWrite<D::File>>, Output<R>) {
        assert!(
            self.to_apply.is_empty(),
            "committed entries are applied before the next ready"
        );
        let applied_before = self.peer.store().applied_index();
        match self.peer.begin_ready().await {
            Ok(work) => {
                self.to_apply = work.committed;
                let mut output = Output::default();
                let applied = self.peer.store().applied_index();
                if applied > applied_before {
                    // A snapshot was installed: the entries it jumped past are not applied
                    // here, so proposals among them have an unknown outcome.
                    for proposal in self.pending.take_through(applied) {
                        output.extend(self.replaced(proposal));
                    }
                }
                (work.write, output)
            }
            Err(error) => (None, self.fail(error)),
        }
    }

    /// Takes the outcome of the oldest group in flight.
    pub fn group_written(&mut self, written: GroupWritten) -> Output<R> {
        if self.failed.is_some() {
            // The groups of a failed peer are waited for, and their outcome ignored: the
            // reopened shard recovers whatever reached the disk.
            return Output::default();
        }
        match self.peer.group_written(written) {
            Ok(()) => Output::default(),
            Err(error) => self.fail(error),
        }
    }

    /// Applies the committed entries of the last begun ready, in order. After each entry,
    /// its writers are answered and then the reads attached to it, from the disk if need be,
    /// before the next entry is applied.
    pub async fn apply_committed(&mut self) -> Output<R> {
        let mut output = Output::default();
        for entry in std::mem::take(&mut self.to_apply) {
            if self.failed.is_some() {
                break;
            }
            let (index, term) = (entry.index, entry.term);
            let kept = self.pending.take_commands(index, term);
            let applied = self.peer.apply(entry, kept).await;
            self.clock.observe(self.peer.store().last_version());
            let mut results = match applied {
                Ok(applied) => applied.map(|a| a.results),
                Err(error) => {
                    output.extend(self.fail(error));
                    break;
                }
            };
            for proposal in self.pending.take_through(index) {
                let ours = proposal.index == index && proposal.term == term;
                if ours {
                    let results = results.take().unwrap_or_default();
                    assert_eq!(
                        results.len(),
                        proposal.writers.len(),
                        "one result per command of entry {index}"
                    );
                    self.writes_applied += results.len() as u64;
                    output.replies.extend(
                        proposal
                            .writers
                            .into_iter()
                            .zip(results)
                            .map(|(to, result)| (to, ShardReply::Written(result))),
                    );
                    if self.is_replicated() {
                        output.extend(self.confirm_after_write(proposal.reads));
                        continue;
                    }
                    for read in proposal.reads {
                        // A snapshot read may wait for a transaction to be decided, which
                        // takes a later entry: it runs in a task of its own, not in the loop.
                        if matches!(read.op, ShardOp::AtSnapshot { .. }) {
                            self.disk_reads.hand_out(std::slice::from_ref(&read));
                            output.deferred.push(read);
                            continue;
                        }
                        let reply = self.read(&read.op).await;
                        output.replies.push((read.reply, reply));
                    }
                } else {
                    // Another leader's entry took its place.
                    output.extend(self.replaced(proposal));
                }
            }
        }
        output.extend(self.after_raft());
        output
    }

    /// The answers of a proposal another leader's entry replaced in this peer's log: its
    /// writers' outcome is unknown (the entry may survive on another node that becomes
    /// leader), and its reads are refused, since this peer's state at that index says
    /// nothing about writes the new leader acknowledged meanwhile.
    fn replaced(&self, proposal: Proposal<R, ShardRequest<R>>) -> Output<R> {
        let why = "was replaced (leadership changed)";
        self.unsettled(proposal, ErrorCode::OutcomeUnknown, why)
    }

    /// Whether nothing is pending: no proposal waits to be applied.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.to_apply.is_empty()
    }

    /// The write path failed: the shard refuses writes from now on (until reopened) and
    /// every pending writer learns its outcome. A proposal whose entry is already durable
    /// (committed, not yet applied: later groups' failures can overtake its apply) has an
    /// unknown outcome, never "failed": reopening applies it. The others get the error's
    /// code: unknown where the failed write or sync may have reached the disk, surely failed
    /// where it cannot (no space for the write, too large); a group after a failed one is
    /// cut off at recovery even if it landed (see the log's window rule).
    fn fail(&mut self, error: PeerError) -> Output<R> {
        let durable_through = self.peer.persisted_index();
        let message = format!("shard {}: {error}", self.shard);
        tracing::error!(shard = self.shard, %error, "write path failed; shard is read-only until it reopens");
        self.failed = Some((error_code_of(&error), message.clone()));
        self.to_apply.clear();
        let code = commit_error_code(&error);
        let message = match code {
            ErrorCode::OutcomeUnknown => format!(
                "outcome unknown: {message} (the write may be durable; it is settled when the shard reopens)"
            ),
            _ => message,
        };
        let durable_message = format!(
            "outcome unknown: shard {}: the write is durable but the shard failed before \
             applying it ({error}); it is applied when the shard reopens",
            self.shard
        );
        let mut output = Output::default();
        for proposal in self.pending.take_all() {
            let (code, message) = if proposal.index <= durable_through {
                (ErrorCode::OutcomeUnknown, &durable_message)
            } else {
                (code, &message)
            };
            output.replies.extend(
                proposal
                    .writers
                    .into_iter()
                    .map(|to| (to, ShardReply::Error(code, message.clone()))),
            );
            // A replicated shard counted them when it attached them.
            if !self.is_replicated() {
                self.disk_reads.hand_out(&proposal.reads);
            }
            output.deferred.extend(proposal.reads);
        }
        output
    }

    /// Drives the shard until nothing is pending, one group at a time, and returns every
    /// answer: how tests run a shard without an executor (the shard loop pipelines groups).
    pub async fn settle(&mut self) -> Output<R> {
        let mut output = Output::default();
        while self.can_begin_ready() {
            let (write, begun) = self.begin_ready().await;
            output.extend(begun);
            output.extend(self.apply_committed().await);
            if let Some(write) = write {
                let written = write.write().await;
                output.extend(self.group_written(written));
            }
        }
        output
    }

    /// Takes a round, proposes its batch and settles: how the tests drive a shard.
    #[cfg(test)]
    async fn process(&mut self, requests: Vec<ShardRequest<R>>) -> Round<R> {
        let mut round = self.take(requests);
        if let Some(batch) = round.batch.take() {
            let refused = self.propose(batch);
            round.replies.extend(refused.replies);
            round.deferred.extend(refused.deferred);
        }
        let settled = self.settle().await;
        round.replies.extend(settled.replies);
        round.deferred.extend(settled.deferred);
        round
    }
}

#[path = "shard_replicated.rs"]
mod replicated;

#[path = "shard_info.rs"]
mod info;

#[cfg(test)]
#[path = "shard_tests.rs"]
mod tests;
