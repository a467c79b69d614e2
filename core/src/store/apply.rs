//! Applying the log: a batch entry's commands in order, after prefetching the pages they
//! lead to and writing their large values' extents all at once. It is the top of the store:
//! it drives writes, document commands and back-pressure, and nothing below calls it.

use super::page::{encode_extent, extent_pages, Value, PAGE_SIZE};
use super::tree::needs_extent;
use super::txn::{step_into_tree_keys, PreparedTxn};
use super::{PagedStore, StoreError, PREFERRED_LEADER, SPACE_CLUSTER, SPACE_KV};
use crate::command::{decode_batch_meta, BatchMeta, Command};
use crate::log::LogFile;
use crate::state::CommandResult;

/// Page reads one prefetch keeps in flight.
const PREFETCH_IN_FLIGHT: usize = 128;

/// Moves a key-value command's keys into the key-value space.
fn into_tree_keys(command: &mut Command) {
    fn prefix(key: &mut Vec<u8>) {
        key.insert(0, SPACE_KV);
    }
    match command.write_mut() {
        Command::Put { key, .. }
        | Command::Delete { key }
        | Command::Cas { key, .. }
        | Command::Increment { key, .. }
        | Command::Append { key, .. }
        | Command::GetAndPut { key, .. }
        | Command::PutIfExists { key, .. } => prefix(key),
        Command::PutMany { pairs } => pairs.iter_mut().for_each(|(key, _)| prefix(key)),
        Command::Read { key } => prefix(key),
        Command::Txn { commands, .. } => commands.iter_mut().for_each(step_into_tree_keys),
        // A prepared transaction's commands are kept as the client sent them and put in
        // the key-value space when they are applied.
        Command::TxnPrepare { .. }
        | Command::TxnDecide { .. }
        | Command::TxnResolve { .. }
        | Command::TxnForget { .. }
        | Command::Document { .. }
        | Command::SetPreferredLeader { .. }
        | Command::Once { .. }
        | Command::ExpireSessions { .. } => {}
    }
}

/// A batch entry to apply: its bytes, or the commands and version floor encoded into them.
enum Batch<'a> {
    Encoded(&'a [u8]),
    Decoded(Vec<Command>, u64),
}

impl<F: LogFile> PagedStore<F> {
    /// Records that `index` (an entry with no commands) is applied.
    pub fn skip(&self, index: u64, term: u64) {
        let mut st = self.state.borrow_mut();
        if index > st.applied_index {
            st.applied_index = index;
            st.applied_term = term;
            st.partial_commands = 0;
        }
    }

    /// Applies the batch entry at `index`. Entries at or below the checkpoint are already in
    /// the tree and return no results; the entry just after it skips the commands the
    /// checkpoint already holds.
    pub async fn apply(
        &self,
        index: u64,
        term: u64,
        batch: &[u8],
    ) -> Result<Vec<CommandResult>, StoreError> {
        self.apply_batch(index, term, Batch::Encoded(batch)).await
    }

    /// Like [`PagedStore::apply`], given the batch's commands and version floor as the
    /// proposing shard encoded them into the entry: a node that proposed the entry itself
    /// need not decode what it just encoded (decoding was ~5% of kvsd's CPU on SETs at
    /// pipeline 16). The commands must be exactly those the entry holds.
    pub async fn apply_commands(
        &self,
        index: u64,
        term: u64,
        commands: Vec<Command>,
        floor: u64,
    ) -> Result<Vec<CommandResult>, StoreError> {
        self.apply_batch(index, term, Batch::Decoded(commands, floor))
            .await
    }

    async fn apply_batch(
        &self,
        index: u64,
        term: u64,
        batch: Batch<'_>,
    ) -> Result<Vec<CommandResult>, StoreError> {
        if self.poisoned.get() {
            return Err(StoreError::Poisoned);
        }
        let (applied, partial) = {
            let st = self.state.borrow();
            (st.applied_index, st.partial_commands)
        };
        if index <= applied {
            return Ok(Vec::new());
        }
        let (mut commands, meta) = match batch {
            Batch::Encoded(batch) => decode_batch_meta(batch).map_err(|e| StoreError::Apply {
                index,
                detail: e.to_string(),
            })?,
            Batch::Decoded(commands, floor) => (commands, BatchMeta { time: None, floor }),
        };
        commands.iter_mut().for_each(into_tree_keys);
        let skip = if index == applied + 1 {
            partial as usize
        } else {
            0
        };
        self.prefetch(&commands[skip.min(commands.len())..]).await?;
        let mut extents = match self.write_extents(index, &commands, skip).await {
            Ok(extents) => extents.into_iter(),
            Err(e) => {
                self.poisoned.set(true);
                return Err(e);
            }
        };
        let mut results = Vec::with_capacity(commands.len());
        for (i, command) in commands.into_iter().enumerate() {
            let written = extents.next().unwrap_or_default();
            if i < skip {
                results.push(CommandResult::Skipped);
                continue;
            }
            self.make_room_for_writes().await?;
            self.in_command.set(true);
            self.commands_begun.set(self.commands_begun.get() + 1);
            {
                let mut st = self.state.borrow_mut();
                st.last_version = (st.last_version + 1).max(meta.floor);
                self.command_version.set(st.last_version);
            }
            let result = match command {
                Command::Once { .. } => self.apply_once(index, command).await,
                command => self.apply_command(index, command, written).await,
            };
            self.in_command.set(false);
            self.command_done.notify();
            self.command_version.set(0);
            match result {
                Ok(result) => results.push(result),
                Err(e) => {
                    self.poisoned.set(true);
                    return Err(e);
                }
            }
            self.state.borrow_mut().partial_commands = i as u32 + 1;
        }
        let mut st = self.state.borrow_mut();
        st.applied_index = index;
        st.applied_term = term;
        st.partial_commands = 0;
        Ok(results)
    }

    /// Writes the extents of a batch's unconditional puts (`Put`, `PutMany`) all at once;
    /// returns, per command, the stored value of each of its pairs that got one. Each put
    /// would otherwise wait for its own extent's page write in turn (measured: YCSB-A with
    /// 4 KiB values ran at a third of the 1 KiB rate). The log holds the values, so a crash
    /// before the entries are applied loses nothing: the extents are unreferenced and the
    /// allocator, rebuilt from the checkpoint, has their pages free again.
    async fn write_extents(
        &self,
        index: u64,
        commands: &[Command],
        skip: usize,
    ) -> Result<Vec<Vec<Option<Value>>>, StoreError> {
        // Most batches have no large value: then allocate nothing per command (an empty
        // result means "no extents", as the apply loop reads it).
        let has_extent = commands.iter().skip(skip).any(|command| match command {
            Command::Put { key, value } => needs_extent(key, value),
            Command::PutMany { pairs } => pairs.iter().any(|(k, v)| needs_extent(k, v)),
            _ => false,
        });
        if !has_extent {
            return Ok(Vec::new());
        }
        let mut stored: Vec<Vec<Option<Value>>> = Vec::with_capacity(commands.len());
        let mut writes = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            let pairs: Vec<(&[u8], &[u8])> = match command {
                _ if i < skip => Vec::new(),
                Command::Put { key, value } => vec![(key, value)],
                Command::PutMany { pairs } => pairs
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.as_slice()))
                    .collect(),
                _ => Vec::new(),
            };
            let mut of_command = Vec::with_capacity(pairs.len());
            for (key, value) in pairs {
                if !needs_extent(key, value) {
                    of_command.push(None);
                    continue;
                }
                let pages = extent_pages(value.len());
                let (first, epoch) = {
                    let mut st = self.state.borrow_mut();
                    let first = st.alloc_extent(pages);
                    st.reserved.insert(first, pages);
                    (first, st.epoch)
                };
                let mut bytes = self.file.alloc(pages as usize * PAGE_SIZE);
                encode_extent(value, first, index, epoch, bytes.as_mut());
                writes.push((first, bytes));
                of_command.push(Some(Value::Extent {
                    first,
                    pages,
                    len: value.len() as u32,
                    lsn: index,
                }));
            }
            stored.push(of_command);
        }
        if writes.is_empty() {
            return Ok(stored);
        }
        let page_count = self.state.borrow().page_count;
        self.grow_to(page_count).await?;
        // At most this many in flight, as for checkpoint writes.
        const CHUNK: usize = 64;
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let pending: Vec<_> = writes
                .by_ref()
                .take(CHUNK)
                .map(|(first, bytes)| self.file.write_at(bytes, first * PAGE_SIZE as u64))
                .collect();
            for result in futures_util::future::join_all(pending).await {
                result.map_err(|e| StoreError::io("write", &self.path, e))?;
            }
        }
        Ok(stored)
    }

    /// Reads the pages the commands' keys lead to, many at once, so that applying them
    /// (one at a time, in order) mostly finds them cached instead of waiting for each miss.
    ///
    /// When the previous entry read no page at all, the working set is cached and the walk
    /// would only double the tree lookups of the apply: skip it (measured: the prefetch's
    /// lookups were a third of kvsd's CPU on cached SETs).
    async fn prefetch(&self, commands: &[Command]) -> Result<(), StoreError> {
        let loads = self.state.borrow().loads;
        let missed_last_time = loads != self.loads_at_last_apply.replace(loads);
        if !missed_last_time {
            return Ok(());
        }
        let room = self.state.borrow().capacity / 4;
        let mut keys: Vec<&[u8]> = Vec::new();
        for command in commands {
            match command.write() {
                Command::Put { key, .. }
                | Command::Delete { key }
                | Command::Cas { key, .. }
                | Command::Increment { key, .. }
                | Command::Append { key, .. }
                | Command::GetAndPut { key, .. }
                | Command::PutIfExists { key, .. } => keys.push(key),
                Command::PutMany { pairs } => keys.extend(pairs.iter().map(|(k, _)| k.as_slice())),
                Command::Read { .. }
                | Command::Txn { .. }
                | Command::TxnPrepare { .. }
                | Command::TxnDecide { .. }
                | Command::TxnResolve { .. }
                | Command::TxnForget { .. }
                | Command::Document { .. }
                | Command::SetPreferredLeader { .. }
                | Command::Once { .. }
                | Command::ExpireSessions { .. } => {}
            }
            if keys.len() >= room {
                break;
            }
        }
        if keys.len() < 2 {
            return Ok(());
        }
        keys.sort_unstable();
        keys.dedup();
        for chunk in keys.chunks(PREFETCH_IN_FLIGHT) {
            let lookups = chunk
                .iter()
                .map(|key| self.run(move |st| st.lookup(key).map(|_| ())));
            for result in futures_util::future::join_all(lookups).await {
                result?;
            }
        }
        Ok(())
    }

    /// `written`: the extents `write_extents` wrote for this command's pairs (a `Once`'s
    /// write has none: it may not be applied at all).
    pub(super) async fn apply_command(
        &self,
        index: u64,
        command: Command,
        written: Vec<Option<Value>>,
    ) -> Result<CommandResult, StoreError> {
        let mut written = written.into_iter();
        Ok(match command {
            Command::Put { key, value } => {
                let stored = written.next().flatten();
                let (version, _) = self.put_stored(index, key, value, stored).await?;
                CommandResult::Written { version }
            }
            Command::Delete { key } => CommandResult::Deleted {
                existed: self.delete(index, &key).await?,
            },
            Command::Cas {
                key,
                expected_version,
                value,
            } => {
                let current = self
                    .run(|st| st.lookup(&key))
                    .await?
                    .map_or(0, |e| e.version);
                if current != expected_version {
                    return Ok(CommandResult::VersionMismatch { current });
                }
                match value {
                    Some(value) => {
                        let (version, _) = self.put(index, key, value).await?;
                        CommandResult::Written { version }
                    }
                    None => {
                        self.delete(index, &key).await?;
                        CommandResult::Written { version: 0 }
                    }
                }
            }
            Command::PutMany { pairs } => {
                let mut versions = Vec::with_capacity(pairs.len());
                for (key, value) in pairs {
                    let stored = written.next().flatten();
                    versions.push(self.put_stored(index, key, value, stored).await?.0);
                }
                CommandResult::WrittenMany { versions }
            }
            Command::Increment { key, delta } => {
                let current = match self.current(&key).await? {
                    None => 0,
                    Some((_, value)) => match std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                    {
                        Some(n) => n,
                        None => {
                            return Ok(CommandResult::Refused {
                                reason: "value is not an integer or out of range".into(),
                            })
                        }
                    },
                };
                let Some(value) = current.checked_add(delta) else {
                    return Ok(CommandResult::Refused {
                        reason: "increment or decrement would overflow".into(),
                    });
                };
                self.put(index, key, value.to_string().into_bytes()).await?;
                CommandResult::Integer { value }
            }
            Command::Append { key, value } => {
                let mut joined = self
                    .current(&key)
                    .await?
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                if joined.len() + value.len() > crate::limits::VALUE_SIZE_MAX {
                    return Ok(CommandResult::Refused {
                        reason: "the value would exceed 16 MiB".into(),
                    });
                }
                joined.extend_from_slice(&value);
                let length = joined.len() as i64;
                self.put(index, key, joined).await?;
                CommandResult::Integer { value: length }
            }
            Command::GetAndPut { key, value } => {
                let previous = self.current(&key).await?.map(|(_, v)| v);
                self.put(index, key, value).await?;
                CommandResult::Replaced { previous }
            }
            Command::PutIfExists { key, value } => {
                if self.run(|st| st.lookup(&key)).await?.is_none() {
                    return Ok(CommandResult::Skipped);
                }
                let (version, _) = self.put(index, key, value).await?;
                CommandResult::Written { version }
            }
            Command::Document { body } => self.apply_document(index, &body).await?,
            Command::SetPreferredLeader { node } => {
                let key = vec![SPACE_CLUSTER, PREFERRED_LEADER];
                let (version, _) = self.put(index, key, node.to_le_bytes().to_vec()).await?;
                self.preferred_leader.set(Some(Some(node)));
                CommandResult::Written { version }
            }
            Command::ExpireSessions { before_ms } => self.expire_sessions(index, before_ms).await?,
            Command::Once { .. } => unreachable!("a Once is applied by apply_once"),
            Command::Read { key } => CommandResult::Value {
                found: self.current(&key).await?,
            },
            Command::Txn { txn, commands, .. } => {
                let result = self.apply_steps(index, commands).await?;
                self.finished(txn);
                result
            }
            Command::TxnPrepare {
                txn,
                locks: _,
                primary,
                coordinator,
                deadline_ms,
                commands,
            } => {
                let record = PreparedTxn {
                    txn,
                    primary,
                    coordinator,
                    deadline_ms,
                    commands,
                    version: 0,
                };
                self.apply_prepare(index, record).await?
            }
            Command::TxnDecide {
                txn,
                commit,
                at_least,
            } => {
                let result = self.apply_decide(index, txn, commit, at_least).await?;
                self.finished(txn);
                result
            }
            Command::TxnResolve {
                txn,
                commit,
                version,
            } => {
                let result = self.apply_resolve(index, txn, commit, version).await?;
                self.finished(txn);
                result
            }
            Command::TxnForget { txn } => self.apply_forget(index, txn).await?,
        })
    }
}
