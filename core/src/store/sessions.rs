//! The session table in the tree (ADR 0018): one row per client session, in the cluster key
//! space, holding the results of the session's writes the client may not have yet
//! ([`crate::sessions::SessionRecord`]). Being rows of the tree, they are in every
//! checkpoint and snapshot, and every replica applies the same `Once` commands to the same
//! rows, so a retried write is answered alike by whichever replica leads then.

use super::{PagedStore, StoreError, SPACE_CLUSTER};
use crate::command::Command;
use crate::log::LogFile;
use crate::sessions::SessionRecord;
use crate::state::CommandResult;

/// The key (after [`SPACE_CLUSTER`]) before a session id (8 bytes, big-endian).
pub const SESSIONS: u8 = b'S';

/// Rows an expiry scan reads at a time.
const EXPIRY_SCAN: usize = 256;

fn session_key(session: u64) -> Vec<u8> {
    let mut key = vec![SPACE_CLUSTER, SESSIONS];
    key.extend_from_slice(&session.to_be_bytes());
    key
}

impl<F: LogFile> PagedStore<F> {
    /// A session's row, or an empty record for a session new to this shard.
    async fn session_record(&self, index: u64, session: u64) -> Result<SessionRecord, StoreError> {
        match self.current(&session_key(session)).await? {
            None => Ok(SessionRecord::default()),
            Some((_, bytes)) => SessionRecord::decode(&bytes).map_err(|e| StoreError::Apply {
                index,
                detail: format!("session {session:#x}: {e}"),
            }),
        }
    }

    /// Applies a `Once`: the write, unless the session's record says it was applied (then
    /// the result it got then), and the record updated. The caller runs it as one command
    /// (no checkpoint between the write and the record).
    pub(super) async fn apply_once(
        &self,
        index: u64,
        command: Command,
    ) -> Result<CommandResult, StoreError> {
        let Command::Once {
            session,
            seq,
            acked_below,
            at_ms,
            command,
        } = command
        else {
            unreachable!("apply_once takes a Once");
        };
        let mut record = self.session_record(index, session).await?;
        let result = match record.before_apply(session, seq, acked_below, at_ms) {
            Some(answer) => answer,
            None => {
                let result = self.apply_command(index, *command, Vec::new()).await?;
                record.record(seq, result.clone());
                result
            }
        };
        self.put(index, session_key(session), record.encode())
            .await?;
        Ok(result)
    }

    /// Deletes the rows of sessions last heard from before `before_ms`.
    pub(super) async fn expire_sessions(
        &self,
        index: u64,
        before_ms: u64,
    ) -> Result<CommandResult, StoreError> {
        let end = [SPACE_CLUSTER, SESSIONS + 1];
        let mut from = vec![SPACE_CLUSTER, SESSIONS];
        let mut expired = 0i64;
        loop {
            let rows = self.scan_tree(&from, Some(&end), EXPIRY_SCAN).await?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            from = last.clone();
            from.push(0);
            let full = rows.len() == EXPIRY_SCAN;
            for (key, bytes) in rows {
                let at_ms = bytes
                    .get(0..8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8")));
                if at_ms < before_ms {
                    self.delete(index, &key).await?;
                    expired += 1;
                }
            }
            if !full {
                break;
            }
        }
        Ok(CommandResult::Integer { value: expired })
    }

    /// Sessions with a row on this shard.
    pub async fn session_count(&self) -> Result<usize, StoreError> {
        let end = [SPACE_CLUSTER, SESSIONS + 1];
        let rows = self
            .scan_tree(&[SPACE_CLUSTER, SESSIONS], Some(&end), usize::MAX)
            .await?;
        Ok(rows.len())
    }
}
