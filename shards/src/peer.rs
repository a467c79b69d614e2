//! One shard's Raft peer: a raft-rs `RawNode`, the shard's log (its Raft log and write-ahead
//! log), and the paged store the log is applied to.
//!
//! The peer is sans-runtime: it is generic over the disk ([`LogDisk`]) and knows nothing of
//! executors, sockets or clocks. Raft's ready work is pipelined (raft-rs's asynchronous
//! ready): [`Peer::begin_ready`] takes a `Ready`, appends its entries to Raft's in-memory
//! storage, and hands back the log group that persists them ([`GroupWrite`]) together with the
//! entries already committed, to apply; the caller runs the write (as a task, say) while it
//! applies and begins further readies, and reports each write back in log order
//! ([`Peer::group_written`]), which tells Raft the entries are persisted. On a single voter an
//! entry commits once it is persisted; in a cluster, once a majority has it. Raft hands out an
//! entry to apply only once it is both committed and persisted here, so the applied state
//! holds only durable entries, and writes are acknowledged from apply.
//!
//! A hard state is written only when its term or vote changes (with the entries of the same
//! ready): a commit index alone is recoverable from the log and the leader, so it rides along
//! with the next term or vote change rather than costing a group of its own.
//!
//! Start-up: the store loads its newest checkpoint (log index C); Raft's storage starts from
//! a snapshot at C, and only the log after C is applied. Once a newer checkpoint is durable,
//! the log segments it covers are deleted: the checkpoint is the Raft log's compaction point.
//!
//! Snapshots (ADR 0017, `snapshot.rs`): a follower that needs entries from before the
//! leader's compaction point gets the leader's durable checkpoint. It stages the pages it is
//! sent, and when Raft hands it the snapshot in a ready, [`Peer::begin_ready`] renames the
//! staged file over the page file and opens the store again: its state jumps to the
//! checkpoint, and the log entries before it are ignored from then on (recovery skips
//! entries at or before the page file's checkpoint).

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use kvs_core::log::format::{OwnedRecord, Record, RecordKind};
use kvs_core::log::{GroupWrite, GroupWritten, Log, LogDisk, LogError, LogStats};
use kvs_core::state::CommandResult;
use kvs_core::store::snapshot::remove_staging;
use kvs_core::store::{PagedStore, StoreConfig, StoreError};
use raft::eraftpb::MessageType;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, Snapshot};
use raft::storage::MemStorage;
use raft::{Config, RawNode, SnapshotStatus, StateRole};

use crate::lease::ReadLease;
use crate::peer_storage::PeerStorage;
use crate::raft_logger::raft_logger;
use crate::snapshot::{Receiving, SnapshotChunk};

/// The Raft id of a single node's peers: a single node is a group of one.
pub const NODE_ID: u64 = 1;

/// Entries a peer of a larger group keeps in memory behind its applied index, for
/// followers a little behind; those further behind are read back from the log's segments
/// (`peer_log.rs`).
const ENTRIES_IN_MEMORY: u64 = 1024;

/// Who this peer is in its group, the group's voters, and its election timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub id: u64,
    pub voters: Vec<u64>,
    /// The election timeout in ticks is drawn from `[min, max)` after each reset. raft-rs
    /// draws with the thread's random generator; the simulator gives each peer a range of
    /// one (and peers different ones) so that a run is replayable from its seed.
    pub election_ticks: (usize, usize),
    /// Applied entries kept in memory for followers a little behind ([`ENTRIES_IN_MEMORY`];
    /// the simulator keeps few, so that entries are read back from disk).
    pub entries_in_memory: u64,
    /// How long a leader answers reads from its own state after a quorum confirmed it
    /// leads (ADR 0019); zero: every read asks the quorum (ReadIndex). At most half the
    /// shortest election timeout of the group, on the clock the caller passes.
    pub read_lease: Duration,
}

/// Ticks of the election timeout: from 10 up to twice that, as Raft's paper suggests.
pub const ELECTION_TICKS: (usize, usize) = (10, 20);

impl Membership {
    /// A single node: a group of one.
    pub fn single() -> Membership {
        Membership::of(NODE_ID, vec![NODE_ID])
    }

    /// Member `id` of a group of `voters`, with the default election timeout.
    pub fn of(id: u64, voters: Vec<u64>) -> Membership {
        Membership {
            id,
            voters,
            election_ticks: ELECTION_TICKS,
            entries_in_memory: ENTRIES_IN_MEMORY,
            read_lease: Duration::ZERO,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("applying entry {index}: {detail}")]
    Apply { index: u64, detail: String },
    #[error("not the leader of this shard")]
    NotLeader,
    #[error("a Raft message for peer {to} reached peer {id}")]
    Misrouted { to: u64, id: u64 },
}

/// The results of one applied entry.
#[derive(Debug)]
pub struct Applied {
    pub index: u64,
    pub term: u64,
    pub results: Vec<CommandResult>,
}

/// Figures for INFO.
#[derive(Debug, Clone, Copy)]
pub struct PeerStatus {
    pub term: u64,
    pub last_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub is_leader: bool,
    pub log: LogStats,
}

pub struct Peer<D: LogDisk> {
    node: RawNode<PeerStorage>,
    log: Log<D>,
    store: Rc<PagedStore<D::File>>,
    shard: u32,
    config: StoreConfig,
    /// A snapshot being received from the leader.
    receiving: Option<Receiving<D::File>>,
    /// Snapshots installed since the peer opened.
    snapshots_installed: u64,
    /// The log is deleted up to here (the newest durable checkpoint it was trimmed to).
    log_trimmed_through: u64,
    /// Once leader, the term it leads and the index of its first entry of that term: the
    /// shard serves when that is applied, so a restarted shard answers nothing before its
    /// whole log is applied, and a leader asks Raft to confirm reads (ReadIndex) only once it
    /// has committed an entry of its term (raft-rs drops the request before).
    serving_from: Option<(u64, u64)>,
    /// Readies advanced but not yet known persisted, oldest first.
    unpersisted: VecDeque<Unpersisted>,
    /// The term and vote last written to the log.
    written_term_vote: (u64, u64),
    membership: Membership,
    /// Messages to send to other peers, in order: taken by [`Peer::take_messages`].
    outbox: Vec<Message>,
    /// Reads whose index the leader confirmed (ReadIndex): taken by
    /// [`Peer::take_read_states`].
    read_states: Vec<raft::ReadState>,
    lease: ReadLease,
    /// Reads answered from the lease since the peer opened (INFO).
    lease_reads: u64,
    /// Ticks since the peer opened, counted up to the election timeout: until then it
    /// votes for no one but a transferee (see [`Peer::step`]).
    ticks_since_open: usize,
}

/// A ready handed to the log: its number, and the sequence of the group persisting it (None
/// when it had nothing to persist; it counts as persisted once every ready before it is).
#[derive(Debug)]
struct Unpersisted {
    number: u64,
    group: Option<u64>,
    /// Messages that may go out only once this ready is persisted (votes, append
    /// responses): a peer never promises what its disk does not hold yet.
    after_persisted: Vec<Message>,
}

/// The work of one begun ready: the log group to run, if it has anything to persist, and the
/// committed entries to apply (with [`Peer::apply`]), in order, before those of later readies.
pub struct ReadyWork<F: kvs_core::log::LogFile> {
    pub write: Option<GroupWrite<F>>,
    pub committed: Vec<Entry>,
}

fn entry_type_byte(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

/// The Raft entry a log record holds.
fn entry_from_record(record: OwnedRecord) -> Result<Entry, PeerError> {
    let entry_type = entry_type_from(record.entry_type).ok_or_else(|| PeerError::Apply {
        index: record.index,
        detail: format!("unknown entry type {}", record.entry_type),
    })?;
    let mut entry = Entry::default();
    entry.set_entry_type(entry_type);
    entry.index = record.index;
    entry.term = record.term;
    entry.data = record.payload.into();
    Ok(entry)
}

fn entry_type_from(byte: u8) -> Option<EntryType> {
    match byte {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

impl<D: LogDisk> Peer<D> {
    /// Loads the store's checkpoint, recovers the log after it, rebuilds Raft's state and
    /// starts an election, which a group of one wins at once.
    pub async fn open(disk: D, shard: u32, config: StoreConfig) -> Result<Peer<D>, PeerError> {
        Peer::open_member(disk, shard, config, Membership::single()).await
    }

    /// Like [`Peer::open`], as the member `membership.id` of a group of `membership.voters`.
    /// A group of one campaigns at once; a larger one waits for its election timeout.
    pub async fn open_member(
        disk: D,
        shard: u32,
        config: StoreConfig,
        membership: Membership,
    ) -> Result<Peer<D>, PeerError> {
        assert!(
            membership.voters.contains(&membership.id),
            "a peer is one of its group's voters"
        );
        if remove_staging(&disk).await? {
            tracing::info!(
                shard,
                "a snapshot left half received by a stop or crash was removed"
            );
        }
        let store = Rc::new(PagedStore::open(&disk, shard, config).await?);
        let checkpoint = store.applied_index();
        let (log, recovered) = Log::open(disk, shard).await?;
        if let Some((path, offset)) = &recovered.truncated {
            tracing::warn!(
                shard,
                path,
                offset,
                "torn log tail cut off (a write a crash interrupted, never acknowledged)"
            );
        }
        for path in &recovered.removed {
            tracing::info!(
                shard,
                path,
                "log segment left over from an interrupted trim or roll-over removed (it held no commit group)"
            );
        }
        if recovered.manifest_created {
            tracing::info!(shard, "log manifest written for a log that had none");
        }
        if recovered.segments == 0 && checkpoint > 0 {
            return Err(PeerError::Log(LogError::Damaged {
                path: log.path(),
                detail: format!(
                    "the log is missing: the page file holds a checkpoint at entry {checkpoint}, \
                     so the log held segments, and the writes acknowledged since that checkpoint \
                     would be lost"
                ),
            }));
        }
        let storage = PeerStorage::new(MemStorage::new_with_conf_state(ConfState::from((
            membership.voters.clone(),
            vec![],
        ))));
        let mut entries: Vec<Entry> = Vec::new();
        let mut hard_state = HardState::default();
        for record in recovered.records {
            match record.kind {
                // Entries up to the checkpoint are in the store already (and after a
                // snapshot, the log may hold older entries the checkpoint jumped past).
                RecordKind::Entry if record.index <= checkpoint => {}
                RecordKind::Entry => {
                    // A later entry with an index already seen replaces that suffix (a new
                    // leader overwrote uncommitted entries).
                    if let Some(first) = entries.first().map(|e| e.index) {
                        if record.index < first || record.index > first + entries.len() as u64 {
                            return Err(PeerError::Apply {
                                index: record.index,
                                detail: format!(
                                    "log gap: entries start at {first}, {} follow",
                                    entries.len()
                                ),
                            });
                        }
                        entries.truncate((record.index - first) as usize);
                    }
                    entries.push(entry_from_record(record)?);
                }
                RecordKind::HardState => {
                    let vote = record
                        .payload
                        .get(0..8)
                        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                        .unwrap_or(0);
                    hard_state.term = record.term;
                    hard_state.commit = record.index;
                    hard_state.vote = vote;
                }
            }
        }
        if let Some(first) = entries.first().map(|e| e.index) {
            if first > checkpoint + 1 {
                return Err(PeerError::Apply {
                    index: first,
                    detail: format!(
                        "the log starts at entry {first} but the page file's checkpoint is at \
                         {checkpoint}: log segments or the checkpoint are missing"
                    ),
                });
            }
        }
        let (checkpoint_term, checkpoint_vote) = store.checkpoint_raft_state();
        if checkpoint_term > hard_state.term {
            // The log holding the newest hard state was deleted with the checkpoint.
            hard_state.term = checkpoint_term;
            hard_state.vote = checkpoint_vote;
        }
        let last_index = entries.last().map_or(checkpoint, |e| e.index);
        hard_state.commit = hard_state.commit.max(checkpoint).min(last_index);
        {
            let mut core = storage.mem.wl();
            if checkpoint > 0 {
                let term = store
                    .durable_checkpoint()
                    .map_or(0, |c| c.applied_term)
                    .max(1);
                let mut snapshot = Snapshot::default();
                let metadata = snapshot.mut_metadata();
                metadata.index = checkpoint;
                metadata.term = term;
                metadata.set_conf_state(ConfState::from((membership.voters.clone(), vec![])));
                core.apply_snapshot(snapshot)?;
                storage.set_snapshot_at(checkpoint, term);
            }
            core.append(&entries)?;
            core.set_hardstate(hard_state.clone());
        }
        storage.restart_on_disk();
        drop(entries);
        let raft_config = Config {
            id: membership.id,
            election_tick: membership.election_ticks.0,
            min_election_tick: membership.election_ticks.0,
            max_election_tick: membership.election_ticks.1,
            heartbeat_tick: 1,
            applied: checkpoint,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        raft_config.validate()?;
        let written_term_vote = (hard_state.term, hard_state.vote);
        let mut node = RawNode::new(&raft_config, storage, &raft_logger(shard))?;
        if membership.voters.len() == 1 {
            node.campaign()?;
        }
        Ok(Peer {
            node,
            log,
            store,
            shard,
            config,
            receiving: None,
            snapshots_installed: 0,
            log_trimmed_through: checkpoint,
            serving_from: None,
            unpersisted: VecDeque::new(),
            written_term_vote,
            outbox: Vec::new(),
            read_states: Vec::new(),
            lease: ReadLease::new(membership.read_lease),
            lease_reads: 0,
            ticks_since_open: 0,
            membership,
        })
    }

    /// Whether the shard may serve: it leads and has applied everything from before.
    pub fn is_serving(&self) -> bool {
        matches!(self.serving_from, Some((term, index))
            if term == self.node.raft.term && self.store.applied_index() >= index)
            && self.node.raft.state == StateRole::Leader
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Proposes a batch entry; returns its index and term. Only a leader proposes.
    pub fn propose(&mut self, batch: Vec<u8>) -> Result<(u64, u64), PeerError> {
        if !self.is_leader() {
            return Err(PeerError::NotLeader);
        }
        let last_before = self.node.raft.raft_log.last_index();
        match self.node.propose(Vec::new(), batch) {
            // A leader handing its leadership over takes no proposals: nothing was appended.
            Err(raft::Error::ProposalDropped) => return Err(PeerError::NotLeader),
            result => result?,
        }
        let index = self.node.raft.raft_log.last_index();
        assert_eq!(index, last_before + 1, "a proposal is one entry");
        Ok((index, self.node.raft.term))
    }

    pub fn tick(&mut self) {
        // Until an installed snapshot's ready is persisted, Raft's applied index is behind
        // its storage's first entry, and a campaign (which reads the entries after the
        // applied index) would ask for compacted ones: the election clock waits the one
        // group write this takes.
        if self.raft_applied_behind() {
            return;
        }
        self.ticks_since_open = (self.ticks_since_open + 1).min(self.membership.election_ticks.0);
        self.node.tick();
    }

    /// Whether Raft's applied index is still behind the store's (a snapshot was installed
    /// and its ready is not persisted yet); moves it up when it may.
    fn raft_applied_behind(&mut self) -> bool {
        let applied = self.store.applied_index();
        let raft_log = &self.node.raft.raft_log;
        if raft_log.applied >= applied {
            return false;
        }
        if applied <= raft_log.persisted && applied <= raft_log.committed {
            self.node.advance_apply_to(applied);
            return false;
        }
        true
    }

    /// Takes a message from another peer of the group.
    pub fn step(&mut self, message: Message) -> Result<(), PeerError> {
        if message.to != self.membership.id {
            return Err(PeerError::Misrouted {
                to: message.to,
                id: self.membership.id,
            });
        }
        if self.is_stale_rejection(&message) {
            return Ok(());
        }
        match message.get_msg_type() {
            // A peer that just opened does not know whom it last heard from: were it to
            // vote at once, a leader's lease that its acknowledgement before a restart
            // helped earn would not hold (ADR 0019). So it waits an election timeout, as
            // raft-rs makes a follower wait after it hears from its leader. A transferee's
            // campaign is asked for by the leader itself, which then holds no lease.
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                if self.lease.is_enabled()
                    && self.ticks_since_open < self.membership.election_ticks.0
                    && message.term > self.node.raft.term
                    && message.context != raft::CAMPAIGN_TRANSFER =>
            {
                return Ok(());
            }
            // A leader handing over leadership tells this peer to campaign at once: not
            // while a snapshot's ready is unpersisted (see `tick`). The leader tries again.
            MessageType::MsgTimeoutNow if self.raft_applied_behind() => return Ok(()),
            MessageType::MsgSnapshot if !self.may_take_snapshot(&message) => {
                // Its pages did not all arrive (a chunk was lost, or the link broke): the
                // leader hears so and starts again.
                let metadata = message.get_snapshot().get_metadata();
                tracing::warn!(
                    shard = self.shard,
                    from = message.from,
                    index = metadata.index,
                    "snapshot refused: its pages are not all here"
                );
                let mut refusal = Message::default();
                refusal.set_msg_type(MessageType::MsgSnapStatus);
                refusal.from = self.membership.id;
                refusal.to = message.from;
                refusal.term = message.term;
                refusal.reject = true;
                self.outbox.push(refusal);
                return Ok(());
            }
            // A follower's word that a snapshot did not arrive (raft-rs takes this report
            // only from its own node, so it is given as one).
            MessageType::MsgSnapStatus => {
                if message.reject && self.is_leader() {
                    self.report_snapshot_failure(message.from);
                }
                return Ok(());
            }
            _ => {}
        }
        self.node.step(message)?;
        Ok(())
    }

    /// Whether a `MsgSnapshot` may be stepped into Raft: the staged image is of its position,
    /// complete, or Raft will ignore the snapshot anyway (this peer has committed past it).
    fn may_take_snapshot(&self, message: &Message) -> bool {
        let metadata = message.get_snapshot().get_metadata();
        metadata.index <= self.node.raft.raft_log.committed
            || self
                .receiving
                .as_ref()
                .is_some_and(|r| r.from == message.from && r.holds(metadata.index, metadata.term))
    }

    /// Takes a chunk of a snapshot node `from` is sending (see `snapshot.rs`). A chunk that
    /// does not fit drops the transfer (logged); the leader starts again when its
    /// `MsgSnapshot` is refused.
    pub async fn receive_snapshot_chunk(&mut self, from: u64, chunk: SnapshotChunk) {
        let (number, index, last) = (chunk.number, chunk.index, chunk.last);
        let current = self.receiving.take();
        match Receiving::take(self.log.disk(), self.shard, current, from, chunk).await {
            Ok(receiving) => {
                if number == 0 {
                    tracing::info!(
                        shard = self.shard,
                        from,
                        index,
                        pages = receiving.staging.total,
                        "receiving a snapshot"
                    );
                }
                if last {
                    tracing::info!(shard = self.shard, from, index, "snapshot received");
                }
                self.receiving = Some(receiving);
            }
            Err(reason) => {
                tracing::warn!(shard = self.shard, from, index, %reason, "snapshot chunk dropped")
            }
        }
    }

    /// Tells Raft a snapshot sent to `to` did not arrive: it probes `to` again (and sends a
    /// new snapshot if it still needs one). Nothing happens unless one was in flight.
    pub fn report_snapshot_failure(&mut self, to: u64) {
        if self.is_leader() {
            self.node.report_snapshot(to, SnapshotStatus::Failure);
        }
    }

    /// Tells Raft a snapshot went out to `to` whole: it probes `to` from the snapshot on
    /// (raft-rs waits for this report; a follower's answer to the snapshot alone may be
    /// lost). A follower that did not install it refuses the probe and gets another.
    pub fn report_snapshot_sent(&mut self, to: u64) {
        if self.is_leader() {
            self.node.report_snapshot(to, SnapshotStatus::Finish);
        }
    }

    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed
    }

    /// A rejected append for an index the follower is known to hold is stale (a delayed or
    /// repeated reply from before the follower caught up). raft-rs 0.7 acts on it in probe
    /// state and moves the follower's next index to or below what it holds, then sends a
    /// snapshot if those entries were compacted (found by the cluster simulator; etcd's raft
    /// bounds the next index by the match for the same reason). Such a reply is dropped.
    fn is_stale_rejection(&self, message: &Message) -> bool {
        message.get_msg_type() == raft::eraftpb::MessageType::MsgAppendResponse
            && message.reject
            && self.is_leader()
            && self
                .node
                .raft
                .prs()
                .get(message.from)
                .is_some_and(|progress| message.index <= progress.matched)
    }

    /// The messages for other peers that may go out now, in the order Raft made them.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbox)
    }

    /// Asks for a linearizable read (Raft's ReadIndex): once a quorum confirms this peer
    /// still leads, [`Peer::take_read_states`] gives the commit index then, with `context`.
    /// A read answered from the store once it has applied that index sees every write
    /// acknowledged before the read began, even from a leader that was paused and deposed
    /// meanwhile (it then never gets the confirmation). Only a leader confirms reads.
    /// `now` is on the lease's clock: a confirmation also earns this leader a lease.
    pub fn read_index(&mut self, context: Vec<u8>, now: Duration) {
        if self.is_leader() {
            self.lease.asked(&context, self.node.raft.term, now);
        }
        self.node.read_index(context);
    }

    /// Reads confirmed since the last call: (index to apply first, context).
    pub fn take_read_states(&mut self) -> Vec<raft::ReadState> {
        let (term, leading) = (self.node.raft.term, self.is_leader());
        let mut states = std::mem::take(&mut self.read_states);
        for state in &states {
            self.lease.confirmed(&state.request_ctx, term, leading);
        }
        states.retain(|state| !ReadLease::is_renewal(&state.request_ctx));
        states
    }

    /// The index a read arriving at `now` may be answered at from this leader's own state,
    /// once applied, while its lease holds (ADR 0019): the commit index, which covers every
    /// write acknowledged before. None: ask the quorum ([`Peer::read_index`]). Renews the
    /// lease in the background when it runs low.
    pub fn lease_read(&mut self, now: Duration) -> Option<u64> {
        let term = self.node.raft.term;
        if !self.is_serving()
            || self.node.raft.lead_transferee.is_some()
            || !self.lease.holds(term, now)
        {
            return None;
        }
        if let Some(context) = self.lease.renewal_due(term, now) {
            self.lease.asked(&context, term, now);
            self.node.read_index(context);
        }
        self.lease_reads += 1;
        Some(self.node.raft.raft_log.committed)
    }

    /// Reads this peer answered from its lease since it opened.
    pub fn lease_reads(&self) -> u64 {
        self.lease_reads
    }

    /// Whether member `id` holds every entry this leader has. (Not whether it is alive:
    /// raft-rs's `recent_active` is cleared at every check-quorum, and a check made on a
    /// fixed period can keep landing right after one, so the caller asks the links.)
    pub fn is_caught_up(&self, id: u64) -> bool {
        self.is_leader()
            && self
                .node
                .raft
                .prs()
                .get(id)
                .is_some_and(|progress| progress.matched == self.node.raft.raft_log.last_index())
    }

    /// Hands this leader's leadership to member `to` (raft-rs's leader transfer: `to` is
    /// brought up to date and told to campaign at once; proposals are refused meanwhile).
    pub fn transfer_leader(&mut self, to: u64) {
        if self.is_leader() && to != self.membership.id {
            self.lease.transfer_started(self.node.raft.term);
            self.node.transfer_leader(to);
        }
    }

    /// The group's leader as this peer knows it (None while there is none).
    pub fn leader(&self) -> Option<u64> {
        Some(self.node.raft.leader_id).filter(|&id| id != raft::INVALID_ID)
    }

    /// Copies the log's closed segments to `archive` before they are deleted.
    pub fn set_archive(&mut self, archive: std::rc::Rc<dyn kvs_core::log::SegmentArchive>) {
        self.log.set_archive(archive);
    }

    pub fn id(&self) -> u64 {
        self.membership.id
    }

    /// Each voter of the group as this member sees it: (node, match index, role). A leader
    /// knows every follower's match index; a follower only its own.
    pub fn replicas(&self) -> Vec<(u64, Option<u64>, &'static str)> {
        let leader = self.leader();
        self.membership
            .voters
            .iter()
            .map(|&id| {
                let role = if leader == Some(id) {
                    "leader"
                } else if id == self.membership.id && self.node.raft.state != StateRole::Follower {
                    "candidate"
                } else {
                    "follower"
                };
                let matched = if self.is_leader() {
                    self.node.raft.prs().get(id).map(|p| p.matched)
                } else if id == self.membership.id {
                    Some(self.persisted_index())
                } else {
                    None
                };
                (id, matched, role)
            })
            .collect()
    }

    pub fn store(&self) -> &Rc<PagedStore<D::File>> {
        &self.store
    }

    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            term: self.node.raft.term,
            last_index: self.node.raft.raft_log.last_index(),
            commit_index: self.node.raft.raft_log.committed,
            applied_index: self.store.applied_index(),
            is_leader: self.is_leader(),
            log: self.log.stats(),
        }
    }

    /// Whether a ready may be begun now: Raft has one, and the log has room for its group.
    pub fn can_begin_ready(&self) -> bool {
        self.node.has_ready() && self.log.has_room_for_group()
    }

    /// Whether the log has room for another group in flight (so a proposal made now is
    /// persisted without waiting for earlier groups).
    pub fn has_room_for_group(&self) -> bool {
        self.log.has_room_for_group()
    }

    /// The last entry known durable here (its group and every earlier one were reported
    /// written).
    pub fn persisted_index(&self) -> u64 {
        self.node.raft.raft_log.persisted
    }

    /// Groups written and not yet reported.
    pub fn groups_in_flight(&self) -> usize {
        self.log.groups_in_flight()
    }

    /// Begins Raft's next ready (see the module documentation). Call when
    /// [`Peer::can_begin_ready`]; a full log segment is rolled over first.
    pub async fn begin_ready(&mut self) -> Result<ReadyWork<D::File>, PeerError> {
        assert!(self.can_begin_ready(), "a ready begun without room for it");
        self.log.make_room().await?;
        let mut ready = self.node.ready();
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone()).await?;
        }
        let mut committed = ready.take_committed_entries();
        // After a snapshot, nothing at or before it is applied again.
        committed.retain(|entry| entry.index > self.store.applied_index());
        let entries = ready.take_entries();
        // A leader's appends go out before its own write (Raft thesis 10.2.1): one fsync
        // latency on the path, not two. Replies wait for this ready to be persisted.
        self.outbox.extend(ready.take_messages());
        self.read_states.extend(ready.take_read_states());
        let after_persisted = ready.take_persisted_messages();
        let hard_state = ready.hs().cloned();
        let term_vote = hard_state
            .as_ref()
            .map(|hs| (hs.term, hs.vote))
            .filter(|&tv| tv != self.written_term_vote);
        let write = self.persist(
            &entries,
            hard_state.as_ref().filter(|_| term_vote.is_some()),
        )?;
        if !entries.is_empty() {
            self.node.store().append(&entries)?;
        }
        if let Some(hard_state) = hard_state {
            self.node.store().set_hardstate(hard_state);
        }
        if let Some((term, vote)) = term_vote {
            self.written_term_vote = (term, vote);
            self.store.set_raft_state(term, vote);
        }
        let number = ready.number();
        self.node.advance_append_async(ready);
        self.unpersisted.push_back(Unpersisted {
            number,
            group: write.as_ref().map(GroupWrite::sequence),
            after_persisted,
        });
        self.settle(None);
        let term = self.node.raft.term;
        if self.is_leader() && self.serving_from.is_none_or(|(led, _)| led != term) {
            self.serving_from = Some((term, self.node.raft.raft_log.last_index()));
        }
        Ok(ReadyWork { write, committed })
    }

    /// Installs the snapshot Raft handed over (its image is staged: only a complete one is
    /// stepped into Raft): the staged file replaces the page file, the store is opened
    /// again, and Raft's storage restarts at the snapshot.
    async fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), PeerError> {
        let metadata = snapshot.get_metadata();
        let (index, term) = (metadata.index, metadata.term);
        let receiving = self
            .receiving
            .take()
            .filter(|r| r.holds(index, term))
            .unwrap_or_else(|| {
                panic!("Raft took snapshot {index}/{term} without its image staged")
            });
        assert!(
            index > self.store.applied_index(),
            "a snapshot at {index} behind the applied {}",
            self.store.applied_index()
        );
        let old = Rc::clone(&self.store);
        old.retire().await;
        receiving.staging.install(self.log.disk()).await?;
        let store = Rc::new(PagedStore::open(self.log.disk(), self.shard, self.config).await?);
        assert_eq!(
            store.applied_index(),
            index,
            "the installed page file holds the snapshot's checkpoint"
        );
        let (written_term, written_vote) = self.written_term_vote;
        store.set_raft_state(written_term, written_vote);
        self.store = store;
        self.node.store().mem.wl().apply_snapshot(snapshot)?;
        self.node.store().restart_on_disk();
        self.node.store().set_snapshot_at(index, term);
        self.snapshots_installed += 1;
        tracing::info!(
            shard = self.shard,
            index,
            term,
            "snapshot installed: the store is at the leader's checkpoint"
        );
        Ok(())
    }

    /// Takes the outcome of the oldest group in flight. Ok: its ready, and every one before
    /// it, is persisted, which Raft learns here (on a single voter, its entries commit).
    pub fn group_written(&mut self, written: GroupWritten) -> Result<(), PeerError> {
        let sequence = written.sequence;
        self.log.group_written(written)?;
        self.settle(Some(sequence));
        Ok(())
    }

    /// Tells Raft which readies are persisted: those at the front of the queue that had
    /// nothing to write or whose group is at or before `written_through`, the group just
    /// reported (groups are reported in log order, so every earlier one was too).
    fn settle(&mut self, written_through: Option<u64>) {
        let mut persisted = None;
        while let Some(front) = self.unpersisted.front() {
            if front
                .group
                .is_some_and(|group| written_through.is_none_or(|through| group > through))
            {
                break;
            }
            persisted = Some(front.number);
            let settled = self
                .unpersisted
                .pop_front()
                .expect("the front was just seen");
            self.outbox.extend(settled.after_persisted);
        }
        if let Some(number) = persisted {
            self.node.on_persist_ready(number);
            self.raft_applied_behind();
        }
    }

    /// Persists, advances and applies until Raft has nothing more ready, one group at a time
    /// (start-up, ticks and tests; the shard loop pipelines instead). Returns the results of
    /// the applied entries that carried commands.
    pub async fn handle_ready(&mut self) -> Result<Vec<Applied>, PeerError> {
        assert_eq!(
            self.groups_in_flight(),
            0,
            "handle_ready with groups in flight"
        );
        let mut applied = Vec::new();
        while self.node.has_ready() {
            let work = self.begin_ready().await?;
            if let Some(write) = work.write {
                let written = write.write().await;
                self.group_written(written)?;
            }
            for entry in work.committed {
                if let Some(done) = self.apply(entry, None).await? {
                    applied.push(done);
                }
            }
        }
        Ok(applied)
    }

    /// Begins the log group for the entries and hard state of one ready (None: nothing to
    /// persist).
    fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<Option<GroupWrite<D::File>>, PeerError> {
        let vote_bytes = hard_state.map(|hs| hs.vote.to_le_bytes());
        let mut records: Vec<Record<'_>> = entries
            .iter()
            .map(|entry| Record {
                kind: RecordKind::Entry,
                entry_type: entry_type_byte(entry.get_entry_type()),
                index: entry.index,
                term: entry.term,
                payload: &entry.data,
            })
            .collect();
        if let (Some(hs), Some(vote)) = (hard_state, vote_bytes.as_ref()) {
            records.push(Record {
                kind: RecordKind::HardState,
                entry_type: 0,
                index: hs.commit,
                term: hs.term,
                payload: vote,
            });
        }
        let before = self.log.stats().size_bytes;
        let write = self.log.begin_append(&records)?;
        self.store
            .note_log_appended(self.log.stats().size_bytes.saturating_sub(before));
        Ok(write)
    }

    /// Applies one committed entry; returns its results if it carried commands. Entries are
    /// applied in index order, each only once it is committed and persisted here.
    /// `kept`: the entry's commands and version floor as this node encoded them when it
    /// proposed the entry, if it kept them (`PagedStore::apply_commands`); else the entry's
    /// bytes are decoded.
    pub async fn apply(
        &mut self,
        entry: Entry,
        kept: Option<(Vec<kvs_core::command::Command>, u64)>,
    ) -> Result<Option<Applied>, PeerError> {
        let raft_log = &self.node.raft.raft_log;
        assert_eq!(
            entry.index,
            self.store.applied_index() + 1,
            "entries are applied in order, each once"
        );
        // applied <= persisted <= last index, and applied <= committed.
        assert!(
            entry.index <= raft_log.persisted
                && raft_log.persisted <= raft_log.last_index()
                && entry.index <= raft_log.committed,
            "entry {} applied before it is persisted ({}) and committed ({})",
            entry.index,
            raft_log.persisted,
            raft_log.committed
        );
        let done = if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
            // Leader no-ops (and, later, configuration changes) carry no commands.
            self.store.skip(entry.index, entry.term);
            None
        } else {
            let results = match kept {
                Some((commands, floor)) => {
                    let encoded = entry.data.get(..4).map(|count| {
                        u32::from_le_bytes(count.try_into().expect("4 bytes")) as usize
                    });
                    assert_eq!(
                        encoded,
                        Some(commands.len()),
                        "the commands kept for entry {} are the ones it holds",
                        entry.index
                    );
                    self.store
                        .apply_commands(entry.index, entry.term, commands, floor)
                        .await?
                }
                None => {
                    self.store
                        .apply(entry.index, entry.term, &entry.data)
                        .await?
                }
            };
            Some(Applied {
                index: entry.index,
                term: entry.term,
                results,
            })
        };
        self.node.advance_apply_to(entry.index);
        self.compact()?;
        Ok(done)
    }
}

#[path = "peer_log.rs"]
mod log;
