//! One shard's Raft peer: a raft-rs `RawNode`, the shard's log (its Raft log and write-ahead
//! log), and the state machine the log is applied to.
//!
//! The peer is sans-runtime: it is generic over the disk ([`LogDisk`]) and knows nothing of
//! executors, sockets or clocks. The shard loop drives it: `propose` a batch, then
//! `handle_ready` persists the new entries (one commit group: one write, one fdatasync),
//! advances Raft and applies what is committed. A write is acknowledged only from the
//! [`Applied`] results `handle_ready` returns, that is after it is durable and applied.

use kvs_core::log::format::{Record, RecordKind};
use kvs_core::log::{Log, LogDisk, LogError, LogStats};
use kvs_core::state::{CommandResult, StateMachine};
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole, Storage};

use crate::raft_logger::raft_logger;

/// The Raft id of this node in every group; a single node is a group of one.
pub const NODE_ID: u64 = 1;
/// Raft entries kept in memory behind the applied index for followers (none yet) to catch up.
const RAFT_LOG_RETAINED_ENTRIES: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("applying entry {index}: {detail}")]
    Apply { index: u64, detail: String },
    #[error("not the leader of this shard")]
    NotLeader,
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

pub struct Peer<D: LogDisk, S: StateMachine> {
    node: RawNode<MemStorage>,
    log: Log<D>,
    state: S,
    /// Once leader, the index of its first entry: the shard serves when that is applied, so a
    /// restarted shard answers nothing before its whole log is applied.
    serving_from: Option<u64>,
}

fn entry_type_byte(entry_type: EntryType) -> u8 {
    match entry_type {
        EntryType::EntryNormal => 0,
        EntryType::EntryConfChange => 1,
        EntryType::EntryConfChangeV2 => 2,
    }
}

fn entry_type_from(byte: u8) -> Option<EntryType> {
    match byte {
        0 => Some(EntryType::EntryNormal),
        1 => Some(EntryType::EntryConfChange),
        2 => Some(EntryType::EntryConfChangeV2),
        _ => None,
    }
}

impl<D: LogDisk, S: StateMachine> Peer<D, S> {
    /// Recovers the log from `disk`, rebuilds Raft's state from it and starts an election,
    /// which a group of one wins at once.
    pub async fn open(disk: D, shard: u32, state: S) -> Result<Peer<D, S>, PeerError> {
        let (log, recovered) = Log::open(disk, shard).await?;
        if let Some((path, offset)) = &recovered.truncated {
            tracing::warn!(
                shard,
                path,
                offset,
                "torn log tail cut off (an unacknowledged write)"
            );
        }
        let storage = MemStorage::new_with_conf_state(ConfState::from((vec![NODE_ID], vec![])));
        let mut entries: Vec<Entry> = Vec::new();
        let mut hard_state = HardState::default();
        for record in recovered.records {
            match record.kind {
                RecordKind::Entry => {
                    let entry_type =
                        entry_type_from(record.entry_type).ok_or_else(|| PeerError::Apply {
                            index: record.index,
                            detail: format!("unknown entry type {}", record.entry_type),
                        })?;
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
                    let mut entry = Entry::default();
                    entry.set_entry_type(entry_type);
                    entry.index = record.index;
                    entry.term = record.term;
                    entry.data = record.payload.into();
                    entries.push(entry);
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
        let last_index = entries.last().map_or(0, |e| e.index);
        hard_state.commit = hard_state.commit.min(last_index);
        {
            let mut core = storage.wl();
            core.append(&entries)?;
            core.set_hardstate(hard_state);
        }
        drop(entries);
        let config = Config {
            id: NODE_ID,
            election_tick: 10,
            heartbeat_tick: 1,
            applied: 0,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        config.validate()?;
        let mut node = RawNode::new(&config, storage, &raft_logger(shard))?;
        node.campaign()?;
        Ok(Peer {
            node,
            log,
            state,
            serving_from: None,
        })
    }

    /// Whether the shard may serve: it leads and has applied everything from before.
    pub fn is_serving(&self) -> bool {
        matches!(self.serving_from, Some(index) if self.state.applied_index() >= index)
            && self.node.raft.state == StateRole::Leader
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// Proposes a batch entry; returns its index. Only a leader proposes.
    pub fn propose(&mut self, batch: Vec<u8>) -> Result<u64, PeerError> {
        if !self.is_leader() {
            return Err(PeerError::NotLeader);
        }
        self.node.propose(Vec::new(), batch)?;
        Ok(self.node.raft.raft_log.last_index())
    }

    pub fn tick(&mut self) {
        self.node.tick();
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    pub fn status(&self) -> PeerStatus {
        PeerStatus {
            term: self.node.raft.term,
            last_index: self.node.raft.raft_log.last_index(),
            commit_index: self.node.raft.raft_log.committed,
            applied_index: self.state.applied_index(),
            is_leader: self.is_leader(),
            log: self.log.stats(),
        }
    }

    /// Persists, advances and applies until Raft has nothing more ready. Returns the results
    /// of the applied entries that carried commands.
    pub async fn handle_ready(&mut self) -> Result<Vec<Applied>, PeerError> {
        let mut applied = Vec::new();
        while self.node.has_ready() {
            let mut ready = self.node.ready();
            // Entries committed before this Ready were persisted earlier: apply them first.
            self.apply(ready.take_committed_entries(), &mut applied)?;
            let entries = ready.take_entries();
            let hard_state = ready.hs().cloned();
            self.persist(&entries, hard_state.as_ref()).await?;
            if !entries.is_empty() {
                self.node.mut_store().wl().append(&entries)?;
            }
            if let Some(hard_state) = hard_state {
                self.node.mut_store().wl().set_hardstate(hard_state);
            }
            let mut light = self.node.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.node.mut_store().wl().mut_hard_state().commit = commit;
            }
            self.apply(light.take_committed_entries(), &mut applied)?;
            self.node.advance_apply();
        }
        if self.serving_from.is_none() && self.is_leader() {
            self.serving_from = Some(self.node.raft.raft_log.last_index());
        }
        self.compact_memory()?;
        Ok(applied)
    }

    /// Writes the entries and hard state of one Ready as one commit group.
    async fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), PeerError> {
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
        self.log.append(&records).await?;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>, applied: &mut Vec<Applied>) -> Result<(), PeerError> {
        for entry in entries {
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                // Leader no-ops (and, later, configuration changes) carry no commands.
                self.state.skip(entry.index);
                continue;
            }
            let results =
                self.state
                    .apply(entry.index, &entry.data)
                    .map_err(|e| PeerError::Apply {
                        index: entry.index,
                        detail: e.to_string(),
                    })?;
            applied.push(Applied {
                index: entry.index,
                term: entry.term,
                results,
            });
        }
        Ok(())
    }

    /// Drops applied entries from Raft's in-memory log, keeping a tail for catch-up.
    fn compact_memory(&mut self) -> Result<(), PeerError> {
        let applied = self.state.applied_index();
        let store = self.node.mut_store();
        let first = store.first_index()?;
        if applied > first + 2 * RAFT_LOG_RETAINED_ENTRIES {
            store.wl().compact(applied - RAFT_LOG_RETAINED_ENTRIES)?;
        }
        Ok(())
    }
}
