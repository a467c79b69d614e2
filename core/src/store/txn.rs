//! Transactions in the tree (ADR 0022): a transaction's part applied at once, and the records
//! of two-phase commit. Both kinds of record are rows of the cluster key space, so they are in
//! every checkpoint and snapshot and every replica holds the same ones:
//!
//! - `[SPACE_CLUSTER, 'P', txn]`: a participant's prepared commands, with the primary shard,
//!   the coordinating node and the deadline (`PreparedTxn`);
//! - `[SPACE_CLUSTER, 'X', txn]`: the primary's decision, one byte (1 commit, 0 abort), then
//!   the commit version (8 bytes LE, ADR 0023; absent in records written before versions
//!   came from the clock).
//!
//! Every step is one command of one entry: a checkpoint never falls inside it, so a crash
//! leaves a step either wholly applied or not at all.

use super::{PagedStore, StoreError, SPACE_CLUSTER, SPACE_KV};
use crate::command::{decode_steps, encode_steps, Command};
use crate::log::LogFile;
use crate::state::CommandResult;

/// The key (after [`SPACE_CLUSTER`]) before a prepared transaction's id (8 bytes, BE).
pub const PREPARED: u8 = b'P';
/// The key (after [`SPACE_CLUSTER`]) before a decided transaction's id (8 bytes, BE).
pub const DECIDED: u8 = b'X';

/// Prepared records one listing reads at a time.
const LIST_SCAN: usize = 256;

fn txn_key(kind: u8, txn: u64) -> Vec<u8> {
    let mut key = vec![SPACE_CLUSTER, kind];
    key.extend_from_slice(&txn.to_be_bytes());
    key
}

/// A participant's record of a prepared transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedTxn {
    pub txn: u64,
    pub primary: u32,
    pub coordinator: u64,
    pub deadline_ms: u64,
    /// The prepared commands, user keys (as the client sent them).
    pub commands: Vec<Command>,
    /// The prepare's version (its commit version will be above it); 0 when not known
    /// (listed at start), which a snapshot read treats as "may commit below you".
    pub version: u64,
}

impl PreparedTxn {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.primary.to_le_bytes());
        out.extend_from_slice(&self.coordinator.to_le_bytes());
        out.extend_from_slice(&self.deadline_ms.to_le_bytes());
        out.extend_from_slice(&encode_steps(&self.commands));
        out
    }

    fn decode(txn: u64, bytes: &[u8]) -> Option<PreparedTxn> {
        let primary = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
        let coordinator = u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?);
        let deadline_ms = u64::from_le_bytes(bytes.get(12..20)?.try_into().ok()?);
        let commands = decode_steps(bytes.get(20..)?).ok()?;
        Some(PreparedTxn {
            txn,
            primary,
            coordinator,
            deadline_ms,
            commands,
            version: 0,
        })
    }

    /// The user keys its commands write or read.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .commands
            .iter()
            .flat_map(|c| c.step_keys().into_iter().map(<[u8]>::to_vec))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// Puts a transaction step's keys into the key-value space.
pub(super) fn step_into_tree_keys(command: &mut Command) {
    fn prefix(key: &mut Vec<u8>) {
        key.insert(0, SPACE_KV);
    }
    match command {
        Command::Put { key, .. }
        | Command::Delete { key }
        | Command::Cas { key, .. }
        | Command::Increment { key, .. }
        | Command::Append { key, .. }
        | Command::GetAndPut { key, .. }
        | Command::PutIfExists { key, .. }
        | Command::Read { key } => prefix(key),
        Command::PutMany { pairs } => pairs.iter_mut().for_each(|(key, _)| prefix(key)),
        // A document command names its documents by collection and `_id` (ADR 0024).
        Command::Document { .. } => {}
        other => unreachable!("not a transaction step: {other:?}"),
    }
}

impl<F: LogFile> PagedStore<F> {
    /// Applies a transaction's steps (keys already in the tree's form) in order; one result
    /// each. The caller runs it as one command.
    pub(super) async fn apply_steps(
        &self,
        index: u64,
        commands: Vec<Command>,
    ) -> Result<CommandResult, StoreError> {
        let mut results = Vec::with_capacity(commands.len());
        for command in commands {
            let result = match command {
                Command::Read { key } => CommandResult::Value {
                    found: self.current(&key).await?,
                },
                command => Box::pin(self.apply_command(index, command, Vec::new())).await?,
            };
            results.push(result);
        }
        Ok(CommandResult::Many {
            version: self.command_version(),
            results,
        })
    }

    /// The recorded decision and its commit version.
    async fn decision(&self, txn: u64) -> Result<Option<(bool, u64)>, StoreError> {
        Ok(self
            .current(&txn_key(DECIDED, txn))
            .await?
            .map(|(_, value)| {
                let version = value
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                (value.first() == Some(&1), version)
            }))
    }

    async fn prepared(&self, index: u64, txn: u64) -> Result<Option<PreparedTxn>, StoreError> {
        match self.current(&txn_key(PREPARED, txn)).await? {
            None => Ok(None),
            Some((version, bytes)) => PreparedTxn::decode(txn, &bytes)
                .map(|record| Some(PreparedTxn { version, ..record }))
                .ok_or_else(|| StoreError::Apply {
                    index,
                    detail: format!("prepared transaction {txn:#x}: malformed record"),
                }),
        }
    }

    /// Phase one: keeps the commands until the decision. Answers `Decided { commit: true }`
    /// (ready), or `Decided { commit: false }` when this shard already recorded an abort
    /// for the transaction (a recovery decided before the coordinator's prepare arrived).
    pub(super) async fn apply_prepare(
        &self,
        index: u64,
        record: PreparedTxn,
    ) -> Result<CommandResult, StoreError> {
        if matches!(self.decision(record.txn).await?, Some((false, _))) {
            return Ok(CommandResult::Decided {
                commit: false,
                version: 0,
            });
        }
        let (version, _) = self
            .put(index, txn_key(PREPARED, record.txn), record.encode())
            .await?;
        self.in_doubt.borrow_mut().insert(record.txn, version);
        self.prepared_txns
            .borrow_mut()
            .push(PreparedTxn { version, ..record });
        Ok(CommandResult::Decided {
            commit: true,
            version,
        })
    }

    /// Applies (or drops) a prepared transaction's commands and forgets the record. `None`
    /// when nothing was prepared here (already resolved).
    async fn finish_prepared(
        &self,
        index: u64,
        txn: u64,
        commit: bool,
    ) -> Result<Option<CommandResult>, StoreError> {
        let Some(record) = self.prepared(index, txn).await? else {
            return Ok(None);
        };
        self.delete(index, &txn_key(PREPARED, txn)).await?;
        self.in_doubt.borrow_mut().remove(&txn);
        if !commit {
            return Ok(Some(CommandResult::Decided {
                commit: false,
                version: 0,
            }));
        }
        let mut commands = record.commands;
        commands.iter_mut().for_each(step_into_tree_keys);
        Ok(Some(self.apply_steps(index, commands).await?))
    }

    /// The commit point, on the primary: the first decision recorded wins. A commit takes a
    /// version of at least `at_least` (above every participant's prepare), recorded with the
    /// decision, and applies the primary's own prepared commands at it (answered with their
    /// results, `Many`); otherwise the answer is the recorded decision.
    pub(super) async fn apply_decide(
        &self,
        index: u64,
        txn: u64,
        commit: bool,
        at_least: u64,
    ) -> Result<CommandResult, StoreError> {
        if let Some((commit, version)) = self.decision(txn).await? {
            return Ok(CommandResult::Decided { commit, version });
        }
        let version = if commit {
            let version = self.command_version().max(at_least);
            self.fix_version(version);
            version
        } else {
            0
        };
        let mut record = vec![u8::from(commit)];
        record.extend_from_slice(&version.to_le_bytes());
        self.put(index, txn_key(DECIDED, txn), record).await?;
        Ok(match self.finish_prepared(index, txn, commit).await? {
            Some(result @ CommandResult::Many { .. }) => result,
            _ => CommandResult::Decided { commit, version },
        })
    }

    /// Phase two on a participant: its prepared commands applied (answered `Many`) or
    /// dropped; `Decided { commit }` when nothing was prepared here any more.
    /// A commit's writes take exactly `version`, the primary's (0: a decision recorded before
    /// versions came from the clock; the writes then take this command's own).
    pub(super) async fn apply_resolve(
        &self,
        index: u64,
        txn: u64,
        commit: bool,
        version: u64,
    ) -> Result<CommandResult, StoreError> {
        if commit && version != 0 {
            self.fix_version(version);
        }
        Ok(self
            .finish_prepared(index, txn, commit)
            .await?
            .unwrap_or(CommandResult::Decided { commit, version }))
    }

    /// Drops the primary's decision record.
    pub(super) async fn apply_forget(
        &self,
        index: u64,
        txn: u64,
    ) -> Result<CommandResult, StoreError> {
        self.delete(index, &txn_key(DECIDED, txn)).await?;
        Ok(CommandResult::Skipped)
    }

    /// Whether a transaction prepared here at or below `ts` is not resolved yet: its commit
    /// version may be at or below `ts`, so a read at `ts` must wait for it (ADR 0023).
    pub fn in_doubt_at_or_below(&self, ts: u64) -> bool {
        self.in_doubt
            .borrow()
            .values()
            .any(|&version| version <= ts)
    }

    /// The transactions prepared on this shard and not yet resolved, for recovery. Each is
    /// also noted as in doubt (at version 0: its prepare's is not recorded) until resolved.
    pub async fn prepared_transactions(&self) -> Result<Vec<PreparedTxn>, StoreError> {
        let found = self.list_prepared().await?;
        let mut in_doubt = self.in_doubt.borrow_mut();
        for record in &found {
            in_doubt.entry(record.txn).or_insert(0);
        }
        Ok(found)
    }

    async fn list_prepared(&self) -> Result<Vec<PreparedTxn>, StoreError> {
        let end = [SPACE_CLUSTER, PREPARED + 1];
        let mut from = vec![SPACE_CLUSTER, PREPARED];
        let mut found = Vec::new();
        loop {
            let rows = self.scan_tree(&from, Some(&end), LIST_SCAN).await?;
            let Some((last, _)) = rows.last() else {
                return Ok(found);
            };
            from = last.clone();
            from.push(0);
            for (key, value) in &rows {
                let txn = key
                    .get(2..10)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                let record = txn.and_then(|txn| PreparedTxn::decode(txn, value));
                found.push(record.ok_or_else(|| StoreError::Apply {
                    index: 0,
                    detail: format!("malformed prepared record under key {key:02x?}"),
                })?);
            }
            if rows.len() < LIST_SCAN {
                return Ok(found);
            }
        }
    }

    /// The transactions whose `Txn`, `TxnDecide` or `TxnResolve` entries were applied since
    /// the last call: the shard's leader releases their locks (on every replica alike, so a
    /// leader that took over mid-way releases what it took).
    pub fn take_finished_txns(&self) -> Vec<u64> {
        std::mem::take(&mut *self.finished_txns.borrow_mut())
    }

    /// The transactions recorded as prepared since the last call: every replica locks their
    /// keys (a leader that took over applies prepares its predecessor proposed, and must not
    /// let anything write those keys before the decision).
    pub fn take_prepared_txns(&self) -> Vec<PreparedTxn> {
        std::mem::take(&mut *self.prepared_txns.borrow_mut())
    }

    pub(super) fn finished(&self, txn: u64) {
        self.finished_txns.borrow_mut().push(txn);
    }

    /// The decision the primary recorded for `txn`, if any (a read of applied state).
    pub async fn transaction_decision(&self, txn: u64) -> Result<Option<bool>, StoreError> {
        Ok(self.decision(txn).await?.map(|(commit, _)| commit))
    }
}
