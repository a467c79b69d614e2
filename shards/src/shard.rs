//! The shard service: turns a stream of requests into Raft proposals and replies.
//!
//! [`ShardCore::take`] takes every request that queued up since the last round. Reads are
//! answered at once from the applied state, which holds only durable entries; the writes go
//! into one batch entry (group commit: one proposal, one commit group, one fdatasync), which
//! [`ShardCore::commit`] makes durable and applies before answering its writers. While a
//! batch commits, the shard loop keeps answering the reads that arrive
//! ([`ReadsMeanwhile`]). It is sans-runtime; `node` runs it on an executor of `runtime`.
//!
//! Order: requests of one origin (a client connection) take effect in the order sent, as
//! with Redis. A read whose origin has a write in the batch being formed ends the batch: it
//! and everything after it wait for the next round, so the read sees exactly the writes its
//! connection sent before it. Reads of other origins never wait for a batch: its writes are
//! not acknowledged yet, so they are concurrent with those reads, which may see the state
//! before them.
//!
//! A read the buffer pool can answer is answered in the round. A read that needs the disk is
//! handed back as *deferred*: the caller runs it in a task of its own ([`read_from`]), so it
//! waits for its pages while the shard goes on with other rounds.
//!
//! A shard whose log or page file failed refuses writes (DISK_FULL, IO_ERROR) and keeps
//! serving reads; [`ShardCore::try_reopen`] then reopens it from disk, as a restart would,
//! and it takes writes again once the disk works (space was freed, say).

use futures_util::future::join_all;
use kvs_core::command::{BatchEncoder, Command};
use kvs_core::limits::{BATCH_BYTES_MAX, BATCH_COMMANDS_MAX};
use kvs_core::log::{LogDisk, LogError};
use kvs_core::state::{CommandResult, Versioned};
use kvs_core::store::{StoreConfig, StoreError};
use kvs_wire::ErrorCode;
use serde::Serialize;

use crate::peer::{Peer, PeerError, PeerStatus};

/// Reads of one round in flight at once.
pub const READS_IN_FLIGHT: usize = 128;

/// Who sent a request: requests of one origin take effect in the order they were sent. A
/// client connection is an origin; [`NO_ORIGIN`] is for senders that wait for each reply
/// before they send the next request (document coordinators), which need no ordering.
pub type Origin = u64;
pub const NO_ORIGIN: Origin = 0;

/// What a shard is asked to do. Multi-key requests are split by shard before they get here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardOp {
    Get {
        key: Vec<u8>,
    },
    MGet {
        keys: Vec<Vec<u8>>,
    },
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    },
    Info,
    Write(Command),
    /// A read of documents (see `documents`).
    DocRead(crate::doc_reads::DocRead),
    /// Takes a collection's write lock (see `locks`): answered with `Locked` once granted.
    Lock(crate::locks::LockRequest),
    /// Releases a lock `Lock` granted; answered with `Locked` at once.
    Unlock(crate::locks::LockRequest),
}

impl ShardOp {
    /// Lock requests are handled by the shard loop's lock table, not by the store.
    pub fn is_lock(&self) -> bool {
        matches!(self, ShardOp::Lock(_) | ShardOp::Unlock(_))
    }
}

/// A shard's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardReply {
    Value(Option<Versioned>),
    Values(Vec<Option<Versioned>>),
    Scanned(Vec<(Vec<u8>, Vec<u8>)>),
    Written(CommandResult),
    Info(Box<ShardInfo>),
    /// A document read's reply, in the binary document encoding.
    Doc(Vec<u8>),
    /// A lock was granted (or released).
    Locked,
    Error(ErrorCode, String),
}

/// One shard's part of INFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardInfo {
    pub shard: u32,
    pub keys: u64,
    pub term: u64,
    pub last_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub leader: bool,
    pub log_size_bytes: u64,
    pub log_segments: u64,
    pub log_groups_written: u64,
    pub log_records_written: u64,
    pub log_syncs: u64,
    /// Commit-group fdatasyncs the ring saw complete: never fewer than the groups written.
    pub log_synced_writes_completed: u64,
    pub writes_applied: u64,
    pub cache_pages: u64,
    pub hot_cache_hits: u64,
    pub hot_cache_misses: u64,
    /// Writes that went straight to the leaf the hot cache named.
    pub hinted_writes: u64,
    pub cache_capacity_pages: u64,
    pub dirty_pages: u64,
    pub page_file_pages: u64,
    pub free_pages: u64,
    pub page_reads: u64,
    pub evictions: u64,
    pub tree_height: u32,
    pub checkpoints: u64,
    pub checkpoint_index: u64,
    pub failed: Option<String>,
}

/// What a round produced: replies ready now, requests that wait for the next round (past
/// the batch limits, or reads that must see the batch), reads that need the disk, and the
/// batch of writes to commit.
#[derive(Debug)]
pub struct Round<R> {
    pub replies: Vec<(R, ShardReply)>,
    pub leftover: Vec<ShardRequest<R>>,
    pub deferred: Vec<ShardRequest<R>>,
    pub batch: Option<Batch<R>>,
}

/// The writes of one round, to be proposed as one entry.
#[derive(Debug)]
pub struct Batch<R> {
    encoder: BatchEncoder,
    writers: Vec<R>,
    /// The origins with a write in the batch, sorted, each once.
    origins: Vec<Origin>,
}

impl<R> Batch<R> {
    /// Whether requests of `origin` must wait for this batch to be applied.
    pub fn orders(&self, origin: Origin) -> bool {
        origin != NO_ORIGIN && self.origins.binary_search(&origin).is_ok()
    }

    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }
}

/// Answers a read from the pool alone, or None when it needs the disk (or, for INFO, the
/// shard itself).
pub fn try_read_from<F: kvs_core::log::LogFile>(
    store: &kvs_core::store::PagedStore<F>,
    op: &ShardOp,
) -> Option<ShardReply> {
    match op {
        ShardOp::Get { key } => store.try_get(key).map(ShardReply::Value),
        ShardOp::MGet { keys } => keys
            .iter()
            .map(|k| store.try_get(k))
            .collect::<Option<Vec<_>>>()
            .map(ShardReply::Values),
        ShardOp::Scan { .. } | ShardOp::DocRead(_) | ShardOp::Info => None,
        ShardOp::Write(_) => unreachable!("writes are not reads"),
        ShardOp::Lock(_) | ShardOp::Unlock(_) => unreachable!("locks are not reads"),
    }
}

/// Picks out of the shard's queue, while a batch is being made durable and applied, the
/// reads that may be answered meanwhile: reads whose origin has no write in that batch
/// (`committing`) and none earlier in the queue. Everything else stays in the queue, in order;
/// INFO and lock requests wait for the shard. The queue only grows at its back while a batch
/// commits, so each call looks only at the requests that arrived since the last one (a
/// rescan of the whole queue on every arrival cost O(n^2) per commit: SET at pipeline 16 lost
/// a quarter of its throughput).
pub struct ReadsMeanwhile {
    committing: Vec<Origin>,
    /// Origins with a write in the part of the queue already looked at.
    writing: Vec<Origin>,
    /// How much of the queue was looked at: all of it waits.
    scanned: usize,
}

impl ReadsMeanwhile {
    pub fn new(committing: &[Origin]) -> ReadsMeanwhile {
        ReadsMeanwhile {
            committing: committing.to_vec(),
            writing: Vec::new(),
            scanned: 0,
        }
    }

    fn waits(&mut self, op: &ShardOp, origin: Origin) -> bool {
        match op {
            ShardOp::Write(_) => {
                if !self.writing.contains(&origin) {
                    self.writing.push(origin);
                }
                true
            }
            ShardOp::Info | ShardOp::Lock(_) | ShardOp::Unlock(_) => true,
            _ => {
                origin != NO_ORIGIN
                    && (self.committing.binary_search(&origin).is_ok()
                        || self.writing.contains(&origin))
            }
        }
    }

    /// Takes the reads that may be answered now out of `queue`.
    pub fn take<R>(
        &mut self,
        queue: &mut std::collections::VecDeque<ShardRequest<R>>,
    ) -> Vec<ShardRequest<R>> {
        assert!(
            self.scanned <= queue.len(),
            "the queue only grows while a batch commits"
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

/// Answers a read from `store`, reading pages as needed (many at once for an MGET).
pub async fn read_from<F: kvs_core::log::LogFile>(
    store: &kvs_core::store::PagedStore<F>,
    shard: u32,
    op: &ShardOp,
) -> ShardReply {
    let failed = |e: StoreError| {
        tracing::error!(shard, error = %e, "read failed");
        ShardReply::Error(store_error_code(&e), format!("shard {shard}: {e}"))
    };
    match op {
        ShardOp::Get { key } => match store.get(key).await {
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
        ShardOp::DocRead(read) => match crate::doc_reads::read_docs(store, shard, read).await {
            Ok(document) => ShardReply::Doc(document),
            Err((code, message)) => ShardReply::Error(code, message),
        },
        ShardOp::Info | ShardOp::Write(_) | ShardOp::Lock(_) | ShardOp::Unlock(_) => {
            unreachable!("answered by the shard itself")
        }
    }
}

/// A request with where its reply goes; `R` is the server's reply address.
#[derive(Debug)]
pub struct ShardRequest<R> {
    pub op: ShardOp,
    pub reply: R,
    pub origin: Origin,
}

/// A shard: its peer plus the bookkeeping of the request path.
pub struct ShardCore<D: LogDisk + Clone> {
    shard: u32,
    disk: D,
    config: StoreConfig,
    peer: Peer<D>,
    /// Set when the log failed: the shard then refuses writes and keeps serving reads.
    failed: Option<(ErrorCode, String)>,
    writes_applied: u64,
}

fn store_error_code(error: &StoreError) -> ErrorCode {
    match error {
        StoreError::DiskFull { .. } => ErrorCode::DiskFull,
        StoreError::Io { .. } => ErrorCode::IoError,
        _ => ErrorCode::Internal,
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
        PeerError::Log(_) | PeerError::Store(_) | PeerError::Apply { .. } | PeerError::Raft(_) => {
            ErrorCode::OutcomeUnknown
        }
    }
}

impl<D: LogDisk + Clone> ShardCore<D> {
    /// Opens the shard's store and log, recovers, and applies the log after the checkpoint.
    pub async fn open(disk: D, shard: u32, config: StoreConfig) -> Result<ShardCore<D>, PeerError> {
        let peer = Self::open_peer(disk.clone(), shard, config).await?;
        Ok(ShardCore {
            shard,
            disk,
            config,
            peer,
            failed: None,
            writes_applied: 0,
        })
    }

    async fn open_peer(disk: D, shard: u32, config: StoreConfig) -> Result<Peer<D>, PeerError> {
        let mut peer = Peer::open(disk, shard, config).await?;
        // A group of one elects itself; the first Ready persists the new term and the
        // leader's no-op, and applies the recovered log.
        peer.handle_ready().await?;
        if !peer.is_serving() {
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
    /// whether the shard takes writes again; on failure it stays read-only.
    pub async fn try_reopen(&mut self) -> bool {
        if self.failed.is_none() {
            return true;
        }
        // The old store's checkpoint must not write while the new store owns the file.
        self.peer.store().wait_idle().await;
        match Self::open_peer(self.disk.clone(), self.shard, self.config).await {
            Ok(peer) => {
                tracing::info!(shard = self.shard, "shard reopened; it takes writes again");
                self.peer = peer;
                self.failed = None;
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

    pub fn info(&self) -> ShardInfo {
        let status = self.peer.status();
        let store = self.peer.store().stats();
        ShardInfo {
            shard: self.shard,
            keys: self.peer.store().key_count(),
            term: status.term,
            last_index: status.last_index,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            leader: status.is_leader,
            log_size_bytes: status.log.size_bytes,
            log_segments: status.log.segments,
            log_groups_written: status.log.groups,
            log_records_written: status.log.records,
            log_syncs: status.log.syncs,
            log_synced_writes_completed: status.log.synced_writes_completed,
            writes_applied: self.writes_applied,
            cache_pages: store.cached_pages,
            hot_cache_hits: store.hot_hits,
            hot_cache_misses: store.hot_misses,
            hinted_writes: store.hinted_writes,
            cache_capacity_pages: store.cache_capacity_pages,
            dirty_pages: store.dirty_pages,
            page_file_pages: store.page_count,
            free_pages: store.free_pages,
            page_reads: store.page_reads,
            evictions: store.evictions,
            tree_height: store.tree_height,
            checkpoints: store.checkpoints,
            checkpoint_index: store.last_checkpoint_index,
            failed: self
                .failed
                .as_ref()
                .map(|(code, message)| format!("{code}: {message}")),
        }
    }

    /// Takes one round of requests (see the module documentation): answers the reads it
    /// can, defers those that need the disk, and gathers the writes into a batch.
    pub fn take<R>(&mut self, requests: Vec<ShardRequest<R>>) -> Round<R> {
        let mut replies = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter();
        let mut writers: Vec<R> = Vec::new();
        let mut origins: Vec<Origin> = Vec::new();
        let mut encoder = BatchEncoder::new();
        let mut leftover = Vec::new();
        let mut deferred = Vec::new();
        for request in requests.by_ref() {
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
                    // It must see its connection's write in this batch, and not the writes
                    // sent after it: it waits for the next round, and so does the rest.
                    leftover.push(request);
                    break;
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
            if full {
                leftover.push(request);
                break;
            }
            encoder.push(command);
            writers.push(request.reply);
            // Sorted and made unique once the batch is formed: a lookup per write cost a
            // scan of every origin so far.
            if request.origin != NO_ORIGIN && origins.last() != Some(&request.origin) {
                origins.push(request.origin);
            }
        }
        leftover.extend(requests);
        origins.sort_unstable();
        origins.dedup();
        let batch = (!writers.is_empty()).then_some(Batch {
            encoder,
            writers,
            origins,
        });
        Round {
            replies,
            leftover,
            deferred,
            batch,
        }
    }

    /// Makes a batch durable and applies it; returns its writers' replies.
    pub async fn commit<R>(&mut self, batch: Batch<R>) -> Vec<(R, ShardReply)> {
        let Batch {
            encoder, writers, ..
        } = batch;
        match self.commit_entry(encoder).await {
            Ok(results) => {
                self.writes_applied += results.len() as u64;
                writers
                    .into_iter()
                    .zip(results)
                    .map(|(reply, result)| (reply, ShardReply::Written(result)))
                    .collect()
            }
            Err(error) => {
                let message = format!("shard {}: {error}", self.shard);
                tracing::error!(shard = self.shard, %error, "write path failed; shard is read-only until restart");
                self.failed = Some((error_code_of(&error), message.clone()));
                let code = commit_error_code(&error);
                let message = match code {
                    ErrorCode::OutcomeUnknown => format!(
                        "outcome unknown: {message} (the write may be durable; it is settled when the shard reopens)"
                    ),
                    _ => message,
                };
                writers
                    .into_iter()
                    .map(|reply| (reply, ShardReply::Error(code, message.clone())))
                    .collect()
            }
        }
    }

    /// Takes a round and commits its batch: [`ShardCore::take`] then [`ShardCore::commit`],
    /// as the tests drive a shard (the shard loop answers reads meanwhile instead).
    #[cfg(test)]
    async fn process<R>(&mut self, requests: Vec<ShardRequest<R>>) -> Round<R> {
        let mut round = self.take(requests);
        if let Some(batch) = round.batch.take() {
            let written = self.commit(batch).await;
            round.replies.extend(written);
        }
        round
    }

    /// Proposes one batch and waits until it is durable and applied; returns its results.
    async fn commit_entry(&mut self, batch: BatchEncoder) -> Result<Vec<CommandResult>, PeerError> {
        let count = batch.count() as usize;
        let index = self.peer.propose(batch.finish())?;
        let applied = self.peer.handle_ready().await?;
        let ours = applied
            .into_iter()
            .find(|a| a.index == index)
            .ok_or_else(|| PeerError::Apply {
                index,
                detail: "proposed entry was not applied in the same round".into(),
            })?;
        assert_eq!(ours.results.len(), count, "one result per command");
        Ok(ours.results)
    }

    /// Runs Raft's pending work (after a tick, say) without new proposals.
    pub async fn handle_ready(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if let Err(error) = self.peer.handle_ready().await {
            tracing::error!(shard = self.shard, %error, "raft ready failed; shard is read-only until restart");
            self.failed = Some((error_code_of(&error), error.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use kvs_core::log::sim::{FaultOn, SimDisk};

    const CONFIG: StoreConfig = StoreConfig {
        cache_pages: 64,
        hot_cache_bytes: 64 * 1024,
    };

    type Replies = Vec<(usize, ShardReply)>;

    /// A round, with its deferred reads answered too.
    fn round(
        shard: &mut ShardCore<SimDisk>,
        requests: Vec<ShardRequest<usize>>,
    ) -> (Replies, Vec<ShardRequest<usize>>) {
        let done = block_on(shard.process(requests));
        let mut replies = done.replies;
        for request in done.deferred {
            replies.push((request.reply, block_on(shard.read(&request.op))));
        }
        (replies, done.leftover)
    }

    fn put(i: usize) -> ShardRequest<usize> {
        ShardRequest {
            op: ShardOp::Write(Command::Put {
                key: format!("k{i}").into_bytes(),
                value: vec![i as u8; 10],
            }),
            reply: i,
            origin: NO_ORIGIN,
        }
    }

    fn get(i: usize, reply: usize) -> ShardRequest<usize> {
        ShardRequest {
            op: ShardOp::Get {
                key: format!("k{i}").into_bytes(),
            },
            reply,
            origin: NO_ORIGIN,
        }
    }

    #[test]
    fn a_round_of_writes_is_one_group_and_one_fsync() {
        let disk = SimDisk::new();
        let mut shard = block_on(ShardCore::open(disk.clone(), 0, CONFIG)).unwrap();
        let syncs = disk.syncs();
        let (replies, leftover) = round(&mut shard, (0..1000).map(put).collect());
        assert!(leftover.is_empty());
        assert_eq!(replies.len(), 1000);
        assert!(replies
            .iter()
            .all(|(_, r)| matches!(r, ShardReply::Written(CommandResult::Written { .. }))));
        assert_eq!(
            disk.syncs() - syncs,
            1,
            "1000 writes in one round share one fdatasync"
        );
        assert_eq!(shard.info().log_groups_written, 2); // the election's group, then this one
    }

    fn from(origin: Origin, mut request: ShardRequest<usize>) -> ShardRequest<usize> {
        request.origin = origin;
        request
    }

    fn reply_to(replies: &Replies, id: usize) -> ShardReply {
        replies
            .iter()
            .find(|(r, _)| *r == id)
            .map(|(_, reply)| reply.clone())
            .unwrap_or_else(|| panic!("no reply to {id}"))
    }

    #[test]
    fn a_read_sees_exactly_the_writes_its_connection_sent_before_it() {
        let disk = SimDisk::new();
        let mut shard = block_on(ShardCore::open(disk, 0, CONFIG)).unwrap();
        // Connection 7 pipelines get, put, get, put, get of one key; connection 8 reads it
        // behind the first put.
        let requests = vec![
            from(7, get(1, 100)),
            from(7, put(1)),
            from(8, get(1, 200)),
            from(7, get(1, 101)),
            from(7, put(1)),
            from(7, get(1, 102)),
        ];
        let round1 = block_on(shard.process(requests));
        let replies = round1.replies;
        assert_eq!(reply_to(&replies, 100), ShardReply::Value(None));
        // Another connection's read is answered at once, without the unacknowledged put.
        assert_eq!(reply_to(&replies, 200), ShardReply::Value(None));
        // Connection 7's read after its put waits for the next round, with all after it.
        let waiting: Vec<usize> = round1.leftover.iter().map(|r| r.reply).collect();
        assert_eq!(waiting, [101, 1, 102]);
        let (replies, leftover) = round(&mut shard, round1.leftover);
        assert!(matches!(
            reply_to(&replies, 101),
            ShardReply::Value(Some(Versioned { version: 1, .. }))
        ));
        assert_eq!(leftover.iter().map(|r| r.reply).collect::<Vec<_>>(), [102]);
        let (replies, _) = round(&mut shard, leftover);
        assert!(matches!(
            reply_to(&replies, 102),
            ShardReply::Value(Some(Versioned { version: 2, .. }))
        ));
    }

    #[test]
    fn reads_answered_during_a_commit_skip_connections_with_writes_in_flight() {
        let mut queue: std::collections::VecDeque<ShardRequest<usize>> = [
            from(1, get(1, 10)),         // its connection has a write in the batch: waits
            from(2, get(1, 20)),         // answered now
            from(2, put(2)),             // a write: waits, and so do its connection's reads
            from(2, get(2, 21)),         // waits behind its connection's put
            from(3, get(1, 30)),         // answered now
            from(NO_ORIGIN, get(1, 40)), // no order to keep: answered now
        ]
        .into_iter()
        .collect();
        let mut meanwhile = ReadsMeanwhile::new(&[1]);
        let taken = meanwhile.take(&mut queue);
        assert_eq!(
            taken.iter().map(|r| r.reply).collect::<Vec<_>>(),
            [20, 30, 40]
        );
        assert_eq!(
            queue.iter().map(|r| r.reply).collect::<Vec<_>>(),
            [10, 2, 21]
        );
        // Later arrivals: only they are looked at, with what came before still in force.
        queue.push_back(from(2, get(2, 22))); // behind its connection's queued put
        queue.push_back(from(4, get(2, 50)));
        queue.push_back(from(1, get(2, 11))); // its connection's write is still committing
        let taken = meanwhile.take(&mut queue);
        assert_eq!(taken.iter().map(|r| r.reply).collect::<Vec<_>>(), [50]);
        assert_eq!(
            queue.iter().map(|r| r.reply).collect::<Vec<_>>(),
            [10, 2, 21, 22, 11]
        );
        assert!(meanwhile.take(&mut queue).is_empty());
    }

    #[test]
    fn state_is_rebuilt_from_the_log() {
        let disk = SimDisk::new();
        let mut shard = block_on(ShardCore::open(disk.clone(), 0, CONFIG)).unwrap();
        for r in 0..5 {
            round(&mut shard, (r * 10..r * 10 + 10).map(put).collect());
        }
        drop(shard);
        disk.crash(None);
        let mut shard = block_on(ShardCore::open(disk, 0, CONFIG)).unwrap();
        assert_eq!(shard.info().keys, 50);
        let (replies, _) = round(&mut shard, vec![get(42, 0)]);
        assert_eq!(
            replies[0].1,
            ShardReply::Value(Some(Versioned {
                version: 43,
                value: vec![42; 10]
            }))
        );
        // Versions keep counting from where they were.
        let (replies, _) = round(&mut shard, vec![put(7)]);
        assert_eq!(
            replies[0].1,
            ShardReply::Written(CommandResult::Written { version: 51 })
        );
    }

    #[test]
    fn a_full_disk_fails_writes_with_disk_full_and_reads_go_on() {
        let disk = SimDisk::new();
        let mut shard = block_on(ShardCore::open(disk.clone(), 0, CONFIG)).unwrap();
        round(&mut shard, vec![put(1)]);
        disk.fail_after(FaultOn::Write, 1, 28);
        let (replies, _) = round(&mut shard, vec![put(2)]);
        assert!(matches!(
            replies[0].1,
            ShardReply::Error(ErrorCode::DiskFull, _)
        ));
        let (replies, _) = round(&mut shard, vec![put(3), get(1, 9)]);
        assert!(matches!(
            replies[0].1,
            ShardReply::Error(ErrorCode::DiskFull, _)
        ));
        assert!(matches!(replies[1].1, ShardReply::Value(Some(_))));
        drop(shard);
        // Nothing acknowledged is lost, and the failed writes never appear.
        let shard = block_on(ShardCore::open(disk, 0, CONFIG)).unwrap();
        assert_eq!(shard.info().keys, 1);
    }

    #[test]
    fn an_io_error_while_applying_a_durable_write_is_outcome_unknown() {
        let disk = SimDisk::new();
        let mut shard = block_on(ShardCore::open(disk.clone(), 0, CONFIG)).unwrap();
        // A tree many times the 64-page cache (1000-byte values: a few per leaf),
        // checkpointed so its pages can be evicted.
        let big_put = |i: usize| {
            let mut request = put(i);
            if let ShardOp::Write(Command::Put { value, .. }) = &mut request.op {
                *value = vec![i as u8; 1000];
            }
            request
        };
        for r in 0..20 {
            round(&mut shard, (r * 100..r * 100 + 100).map(big_put).collect());
        }
        block_on(
            shard
                .store()
                .checkpoint(None::<fn(usize) -> std::future::Ready<()>>),
        )
        .unwrap();
        round(&mut shard, (2000..2400).map(put).collect());
        // The next page read fails: applying a put to a key whose leaf left the cache.
        // Puts spread over the old keys: some leaf must be read back.
        let reads_before = shard.info().page_reads;
        disk.fail_after(FaultOn::Read, 1, 5);
        let (replies, _) = round(&mut shard, (0..2000).step_by(40).map(put).collect());
        assert!(shard.info().page_reads >= reads_before, "{replies:?}");
        for (_, reply) in &replies {
            let ShardReply::Error(code, message) = reply else {
                panic!("the batch cannot have succeeded: {reply:?}");
            };
            assert_eq!(*code, ErrorCode::OutcomeUnknown, "{message}");
        }
        assert!(shard.failed());
        // The entry was durable: reopening applies it.
        assert!(block_on(shard.try_reopen()));
        let (replies, _) = round(&mut shard, vec![get(1960, 1)]);
        assert!(
            matches!(&replies[0].1, ShardReply::Value(Some(v)) if v.version > 2400),
            "{replies:?}"
        );
    }

    #[test]
    fn a_full_disk_heals_once_space_is_freed() {
        let disk = SimDisk::new();
        let mut shard = block_on(ShardCore::open(disk.clone(), 0, CONFIG)).unwrap();
        round(&mut shard, vec![put(1)]);
        disk.fail_after(FaultOn::Write, 1, 28);
        let (replies, _) = round(&mut shard, vec![put(2)]);
        assert!(matches!(
            replies[0].1,
            ShardReply::Error(ErrorCode::DiskFull, _)
        ));
        assert!(shard.failed());
        // The injected ENOSPC was one write: space is back, and the shard reopens in place.
        assert!(block_on(shard.try_reopen()));
        let (replies, _) = round(&mut shard, vec![put(3), get(1, 10), get(2, 11)]);
        assert!(matches!(
            replies.iter().find(|(r, _)| *r == 3).unwrap().1,
            ShardReply::Written(_)
        ));
        assert!(matches!(
            replies.iter().find(|(r, _)| *r == 10).unwrap().1,
            ShardReply::Value(Some(_))
        ));
        // The refused write never appears.
        assert_eq!(
            replies.iter().find(|(r, _)| *r == 11).unwrap().1,
            ShardReply::Value(None)
        );
        assert_eq!(shard.info().keys, 2);
    }

    #[test]
    fn restart_starts_from_the_checkpoint_and_applies_only_the_log_after_it() {
        let disk = SimDisk::new();
        let mut shard = block_on(ShardCore::open(disk.clone(), 0, CONFIG)).unwrap();
        for r in 0..5 {
            round(&mut shard, (r * 100..r * 100 + 100).map(put).collect());
        }
        let done = block_on(
            shard
                .store()
                .checkpoint(None::<fn(usize) -> std::future::Ready<()>>),
        )
        .unwrap()
        .unwrap();
        round(&mut shard, (500..600).map(put).collect());
        drop(shard);
        disk.crash(None);
        let mut shard = block_on(ShardCore::open(disk, 0, CONFIG)).unwrap();
        let info = shard.info();
        assert_eq!(info.keys, 600);
        assert!(
            info.checkpoint_index >= done.applied_index,
            "recovery started from the checkpoint"
        );
        let (replies, _) = round(&mut shard, vec![get(42, 0), get(555, 1)]);
        assert!(replies
            .iter()
            .all(|(_, r)| matches!(r, ShardReply::Value(Some(_)))));
        // Versions keep counting across the checkpoint.
        let (replies, _) = round(&mut shard, vec![put(7)]);
        assert_eq!(
            replies[0].1,
            ShardReply::Written(CommandResult::Written { version: 601 })
        );
    }
}
