//! The shard as one member of a replicated group (ADR 0015, 0016): leadership, Raft
//! messages in and out, NOT_LEADER and NO_QUORUM answers, forwarding to the leader, reads
//! confirmed with ReadIndex, the leader's preferred place, and what a leader proposes on its
//! own (the expiry of client sessions, ADR 0018). A child of `shard`, so it sees the
//! shard's fields.

use std::time::Duration;

use kvs_core::command::{BatchEncoder, Command};
use kvs_core::log::LogDisk;
use kvs_core::sessions::SESSION_TTL_MS;
use kvs_wire::ErrorCode;
use raft::eraftpb::Message;

use crate::lease::lease_clock;
use crate::pending::Proposal;
use crate::snapshot::SnapshotChunk;

use super::{NodeView, Output, ShardCore, ShardReply, ShardRequest, FORWARDED_ORIGIN};

/// A member heard from within this many milliseconds counts as alive for leader placement
/// (links send at least a keepalive every 250 ms).
const HEARD_LATELY_MS: u64 = 1000;

impl<D: LogDisk + Clone, R> ShardCore<D, R> {
    /// The member this shard's group prefers as leader by default: the shard's number,
    /// modulo the member count, picks one of the voters in id order, so the leaders of a
    /// node's shards spread over every node and writes use every node's cores (ADR 0016).
    pub fn default_preferred_leader(&self) -> u64 {
        let mut voters = self.membership.voters.clone();
        voters.sort_unstable();
        voters[self.shard as usize % voters.len()]
    }

    /// Whether `node` is a voter of this shard's group.
    pub fn membership_has(&self, node: u64) -> bool {
        self.membership.voters.contains(&node)
    }

    /// The member this shard's group prefers as leader: the one `kvs cluster
    /// transfer-leader` recorded in the shard's replicated state, else the default.
    pub async fn preferred_leader(&self) -> u64 {
        match self.peer.store().preferred_leader().await {
            Ok(Some(node)) if self.membership_has(node) => node,
            Ok(_) => self.default_preferred_leader(),
            Err(error) => {
                tracing::warn!(shard = self.shard, %error, "cannot read the preferred leader");
                self.default_preferred_leader()
            }
        }
    }

    /// Moves leadership to the preferred member when this member leads instead, serves,
    /// and the preferred one is caught up and heard from.
    pub async fn place_leader(&mut self) {
        if !self.is_replicated() || !self.peer.is_leader() {
            return;
        }
        let preferred = self.preferred_leader().await;
        if self.is_replicated()
            && preferred != self.peer.id()
            && self.peer.is_serving()
            && self.peer.is_caught_up(preferred)
            && self.heard_lately(preferred)
        {
            tracing::info!(
                shard = self.shard,
                to = preferred,
                "handing leadership to its preferred node"
            );
            self.peer.transfer_leader(preferred);
        }
    }

    /// Whether this node's links to `node` are up and brought a frame from it within the
    /// last election timeout or so (as of the last tick's view of the links).
    fn heard_lately(&self, node: u64) -> bool {
        self.cluster_view.as_ref().is_some_and(|(_, nodes)| {
            nodes.iter().any(|n| {
                n.id == node
                    && n.reachable
                    && n.last_heard_ms.is_some_and(|ms| ms <= HEARD_LATELY_MS)
            })
        })
    }

    /// Whether this shard is one member of a replicated group.
    pub fn is_replicated(&self) -> bool {
        self.membership.voters.len() > 1
    }

    /// The group's leader as this member knows it.
    pub fn leader(&self) -> Option<u64> {
        self.peer.leader()
    }

    /// Takes a Raft message from another member; one that does not fit (meant for another
    /// node) is dropped with a log line.
    pub fn step(&mut self, message: Message) {
        if let Err(error) = self.peer.step(message) {
            tracing::debug!(shard = self.shard, %error, "raft message dropped");
        }
    }

    /// Takes a chunk of a snapshot the leader `from` is sending.
    pub async fn receive_snapshot_chunk(&mut self, from: u64, chunk: SnapshotChunk) {
        self.peer.receive_snapshot_chunk(from, chunk).await;
    }

    /// A snapshot this leader sent `to` went out whole, or broke off.
    pub fn snapshot_ended(&mut self, to: u64, whole: bool) {
        if whole {
            self.snapshots_sent += 1;
            self.peer.report_snapshot_sent(to);
        } else {
            self.peer.report_snapshot_failure(to);
        }
    }

    /// Whether this member leads its group (always, for a group of one).
    pub fn is_leader(&self) -> bool {
        self.peer.is_leader()
    }

    /// Answers every pending proposal of a member that stopped leading `waited` ago (the
    /// driver's deadline): its writers get TIMEOUT (the entry may still be committed by the
    /// new leader, or replaced: the outcome is unknown), its attached reads NOT_LEADER. An
    /// entry applied later finds no one waiting.
    pub fn give_up_pending(&mut self, waited: Duration) -> Output<R> {
        let why = format!(
            "was not committed before this node stopped leading, and no new leader settled \
             it within {}s",
            waited.as_secs()
        );
        let mut output = Output::default();
        for proposal in self.pending.take_all() {
            output.extend(self.unsettled(proposal, ErrorCode::Timeout, &why));
        }
        output
    }

    /// Answers a proposal whose fate this member will not learn (another leader's entry
    /// replaced it, or this member stopped leading): its writers get `code`, an outcome
    /// unknown ("entry I of term T `why`"), its attached reads NOT_LEADER (nothing was read).
    pub(super) fn unsettled(
        &self,
        proposal: Proposal<R, ShardRequest<R>>,
        code: ErrorCode,
        why: &str,
    ) -> Output<R> {
        let message = format!(
            "outcome unknown: shard {}: entry {} of term {} {why}",
            self.shard, proposal.index, proposal.term
        );
        let mut output = Output::default();
        output.replies.extend(
            proposal
                .writers
                .into_iter()
                .map(|to| (to, ShardReply::Error(code, message.clone()))),
        );
        for read in proposal.reads {
            // Counted when attached (see `count_held_read`).
            self.disk_reads.finish(read.origin);
            output.replies.push((read.reply, self.not_leader()));
        }
        output
    }

    /// As the leader, proposes forgetting the client sessions not heard from for
    /// [`SESSION_TTL_MS`] (an entry of its own, answered to no one; every replica applies
    /// it, so they forget the same sessions). The caller calls it about once a minute.
    pub fn expire_sessions(&mut self, now_ms: u64) {
        if !self.peer.is_serving() {
            return;
        }
        let mut encoder = BatchEncoder::new();
        encoder.push(&Command::ExpireSessions {
            before_ms: now_ms.saturating_sub(SESSION_TTL_MS),
        });
        let data = encoder.finish_at(kvs_core::sessions::wall_clock_ms(), self.clock().next());
        if let Err(error) = self.peer.propose(data) {
            tracing::warn!(shard = self.shard, %error, "proposing the expiry of client sessions failed");
        }
    }

    /// Whether Raft waits for log entries to be read back from disk for a follower.
    pub fn wants_entries(&self) -> bool {
        self.peer.wants_entries()
    }

    /// Reads back the log entries Raft waits for (see `peer_log.rs`). A failure is logged:
    /// Raft asks again on the follower's next response.
    pub async fn fetch_entries(&mut self) {
        if let Err(error) = self.peer.fetch_entries().await {
            tracing::warn!(shard = self.shard, %error, "log entries for a follower could not be read back");
        }
    }

    /// The Raft messages to send now, in order.
    pub fn take_messages(&mut self) -> Vec<Message> {
        self.peer.take_messages()
    }

    /// Records the cluster's id and its nodes as this core sees them, for INFO.
    pub fn set_cluster_view(&mut self, cluster_id: String, nodes: Vec<NodeView>) {
        self.cluster_view = Some((cluster_id, nodes));
    }

    /// Records where node `node` serves clients, for NOT_LEADER hints.
    pub fn set_node_addr(&mut self, node: u64, addr: String) {
        self.node_addrs.insert(node, addr);
    }

    /// The node to forward `request` to: the leader, when this member knows one on another
    /// node, and the request came from a client of this node and may be forwarded.
    pub(super) fn forward_to(&self, request: &ShardRequest<R>) -> Option<u64> {
        if !self.forwarding
            || request.origin & FORWARDED_ORIGIN != 0
            || !request.op.is_forwardable()
        {
            return None;
        }
        self.peer.leader().filter(|&id| id != self.peer.id())
    }

    /// Whether reads are answered from this member's own state, leader or not
    /// (`--read-consistency stale`): they may miss writes already acknowledged elsewhere.
    pub fn set_stale_reads(&mut self, stale: bool) {
        self.stale_reads = stale;
    }

    /// Whether requests for a leader elsewhere are forwarded to it (the node runs peer
    /// links) rather than answered NOT_LEADER.
    pub fn set_forwarding(&mut self, forwarding: bool) {
        self.forwarding = forwarding;
    }

    /// The answer to a request this member cannot serve because it does not lead: surely
    /// not applied (nothing was proposed), so the client may send it elsewhere.
    pub(super) fn not_leader(&self) -> ShardReply {
        match self.peer.leader().filter(|&id| id != self.peer.id()) {
            Some(leader) => {
                let at = self
                    .node_addrs
                    .get(&leader)
                    .map(|addr| format!(" at {addr}"))
                    .unwrap_or_default();
                ShardReply::Error(
                    ErrorCode::NotLeader,
                    format!(
                        "shard {}: this node does not lead it; the leader is node {leader}{at}",
                        self.shard
                    ),
                )
            }
            None => ShardReply::Error(
                ErrorCode::NoQuorum,
                format!(
                    "shard {}: no leader (an election is under way, or this node cannot reach \
                     a majority of the cluster); nothing was done",
                    self.shard
                ),
            ),
        }
    }

    /// After Raft stepped, ticked or applied: confirms held reads (ReadIndex), answers those
    /// whose index is applied, fails those a deposed leader will never confirm, and asks
    /// for the ones gathered since.
    pub fn after_raft(&mut self) -> Output<R> {
        let mut output = Output::default();
        if !self.is_replicated() {
            return output;
        }
        for state in self.peer.take_read_states() {
            self.reads.confirm(&state.request_ctx, state.index);
        }
        if !self.peer.is_leader() && self.reads.has_unconfirmed() {
            for read in self.reads.take_unconfirmed() {
                self.disk_reads.finish(read.origin);
                output.replies.push((read.reply, self.not_leader()));
            }
        }
        if self.peer.is_serving() {
            if let Some(context) = self.reads.ask() {
                self.peer.read_index(context, lease_clock());
            }
        }
        for read in self.reads.take_applied(self.peer.store().applied_index()) {
            match self.try_read(&read.op) {
                Some(reply) => {
                    self.disk_reads.finish(read.origin);
                    output.replies.push((read.reply, reply));
                }
                // Already counted in `disk_reads`: whoever runs it reports it finished.
                None => output.deferred.push(read),
            }
        }
        output
    }

    /// Counts a read held for its connection's write (attached to a pending proposal) as a
    /// read in flight, on a replicated shard: it is answered only once Raft confirms the
    /// leadership after its write applied (`confirm_after_write`), and its connection's
    /// later writes wait for it meanwhile, so it sees exactly the writes sent before it.
    pub(super) fn count_held_read(&self, read: &ShardRequest<R>) {
        if self.is_replicated() {
            self.disk_reads.hand_out(std::slice::from_ref(read));
        }
    }

    /// The reads held for a proposal that was applied, on a replicated shard: answered
    /// once Raft confirms this member still leads (ReadIndex), never from this state
    /// alone — a leader deposed meanwhile (paused, cut off) would miss writes the new leader
    /// acknowledged before the read was sent. Refused when it no longer leads.
    pub(super) fn confirm_after_write(&mut self, reads: Vec<ShardRequest<R>>) -> Output<R> {
        let mut output = Output::default();
        for read in reads {
            if self.peer.is_leader() {
                match self.peer.lease_read(lease_clock()) {
                    Some(index) => self.reads.confirm_at(read, index),
                    None => self.reads.gather(read),
                }
            } else {
                self.disk_reads.finish(read.origin);
                output.replies.push((read.reply, self.not_leader()));
            }
        }
        output
    }

    /// The reads held for a write whose proposal was refused (nothing was proposed): on a
    /// single node they are answered from the store (run in tasks of their own); on a
    /// replicated shard, which no longer leads, refused.
    pub(super) fn reads_without_their_write(&self, reads: Vec<ShardRequest<R>>) -> Output<R> {
        let mut output = Output::default();
        if self.is_replicated() {
            for read in reads {
                self.disk_reads.finish(read.origin);
                output.replies.push((read.reply, self.not_leader()));
            }
        } else {
            self.disk_reads.hand_out(&reads);
            output.deferred = reads;
        }
        output
    }
}
