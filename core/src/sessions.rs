//! Client sessions for idempotent writes (ADR 0018). A client tags each key-value write with
//! its session id and a sequence number ([`crate::command::Command::Once`]); a shard keeps,
//! per session, the results of the writes whose replies the client may not have yet, so a
//! write retried after a lost connection or a failover is answered with the result it got
//! the first time instead of being applied again.
//!
//! The record is part of the replicated state (the paged store keeps it in its cluster key
//! space, so checkpoints, snapshots and every replica have it). It stays small: the client
//! says which replies it has (`acked_below`) and those results are dropped; at most
//! [`SESSION_RESULTS_MAX`] are kept; a session not heard from for [`SESSION_TTL_MS`] is
//! forgotten by an `ExpireSessions` command the leader proposes.

use crate::result::{CommandResult, ResultDecodeError};

/// Results a session keeps at most: beyond it, the oldest is dropped (a client with more
/// writes than this unanswered at once loses exactly-once for the oldest).
pub const SESSION_RESULTS_MAX: usize = 1024;

/// How long a session not heard from is remembered: far longer than any client retries.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;

/// Milliseconds since the Unix epoch by this node's clock: when a session was last heard
/// from, for its expiry (minutes: the nodes' clocks need agree only roughly). Taken by the
/// node that receives the write and carried in the log, so every replica applies the same.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One session's record on one shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    /// The newest `at_ms` of the session's writes here.
    pub at_ms: u64,
    /// (seq, result), ascending by seq.
    pub results: Vec<(u64, CommandResult)>,
}

/// What a session's record says of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Applied before: this was its result.
    Applied(CommandResult),
    /// Not applied yet: apply it.
    New,
    /// Below what the client says it has replies for (or dropped to keep the record small):
    /// whether it was applied is not known here.
    Forgotten,
}

impl SessionRecord {
    /// Drops the results the client has (seqs below `acked_below`) and notes the time.
    pub fn acknowledge(&mut self, acked_below: u64, at_ms: u64) {
        self.results.retain(|(seq, _)| *seq >= acked_below);
        self.at_ms = self.at_ms.max(at_ms);
    }

    /// What became of write `seq` (after [`SessionRecord::acknowledge`]).
    pub fn seen(&self, seq: u64) -> Seen {
        match self.results.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(at) => Seen::Applied(self.results[at].1.clone()),
            Err(0) if self.forgot_below(seq) => Seen::Forgotten,
            Err(_) => Seen::New,
        }
    }

    /// Whether seqs up to `seq` may have been dropped: the record is full and `seq` is
    /// below everything in it.
    fn forgot_below(&self, seq: u64) -> bool {
        self.results.len() >= SESSION_RESULTS_MAX && self.results.first().is_some_and(|f| seq < f.0)
    }

    /// Takes write `seq` of `session`, whose client has the replies to the writes below
    /// `acked_below`: the answer to give without applying it (its first result, or an
    /// unknown outcome when the record no longer says), or None when it is to be applied
    /// now, and its result [`SessionRecord::record`]ed.
    pub fn before_apply(
        &mut self,
        session: u64,
        seq: u64,
        acked_below: u64,
        at_ms: u64,
    ) -> Option<CommandResult> {
        self.acknowledge(acked_below, at_ms);
        match self.seen(seq) {
            Seen::Applied(result) => Some(result),
            Seen::New if seq >= acked_below => None,
            Seen::New | Seen::Forgotten => Some(CommandResult::OutcomeUnknown {
                reason: format!(
                    "write {seq} of session {session:#x} is older than the results this \
                     shard keeps for it: whether it was applied is not known"
                ),
            }),
        }
    }

    /// Records the result of write `seq`, just applied.
    pub fn record(&mut self, seq: u64, result: CommandResult) {
        let at = match self.results.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(_) => unreachable!("write {seq} of a session applied twice"),
            Err(at) => at,
        };
        self.results.insert(at, (seq, result));
        if self.results.len() > SESSION_RESULTS_MAX {
            self.results.remove(0);
        }
    }

    /// `at_ms:u64 count:u32 (seq:u64 result){count}`
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.results.len() * 17);
        out.extend_from_slice(&self.at_ms.to_le_bytes());
        out.extend_from_slice(&(self.results.len() as u32).to_le_bytes());
        for (seq, result) in &self.results {
            out.extend_from_slice(&seq.to_le_bytes());
            result.encode_into(&mut out);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SessionRecord, ResultDecodeError> {
        let short = || ResultDecodeError("session record ends early".into());
        let at_ms = u64::from_le_bytes(bytes.get(0..8).ok_or_else(short)?.try_into().expect("8"));
        let count = u32::from_le_bytes(bytes.get(8..12).ok_or_else(short)?.try_into().expect("4"));
        let mut at = 12;
        let mut results = Vec::with_capacity((count as usize).min(SESSION_RESULTS_MAX));
        for _ in 0..count {
            let seq = u64::from_le_bytes(
                bytes
                    .get(at..at + 8)
                    .ok_or_else(short)?
                    .try_into()
                    .expect("8"),
            );
            let (result, len) = CommandResult::decode_from(&bytes[at + 8..])?;
            results.push((seq, result));
            at += 8 + len;
        }
        if at != bytes.len() {
            return Err(ResultDecodeError(format!(
                "{} bytes after the session record",
                bytes.len() - at
            )));
        }
        Ok(SessionRecord { at_ms, results })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(version: u64) -> CommandResult {
        CommandResult::Written { version }
    }

    #[test]
    fn a_write_is_seen_once_until_the_client_has_its_reply() {
        let mut record = SessionRecord::default();
        record.acknowledge(1, 10);
        assert_eq!(record.seen(1), Seen::New);
        record.record(1, written(5));
        record.acknowledge(1, 11);
        record.record(2, written(6));
        assert_eq!(record.seen(1), Seen::Applied(written(5)));
        assert_eq!(record.seen(2), Seen::Applied(written(6)));
        assert_eq!(record.seen(3), Seen::New);
        // The client has the reply to 1: its result goes.
        record.acknowledge(2, 12);
        assert_eq!(record.results.len(), 1);
        assert_eq!(record.at_ms, 12);
        let bytes = record.encode();
        assert_eq!(SessionRecord::decode(&bytes).unwrap(), record);
        for cut in 0..bytes.len() {
            assert!(SessionRecord::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn a_full_record_drops_its_oldest_and_says_so() {
        let mut record = SessionRecord::default();
        for seq in 1..=SESSION_RESULTS_MAX as u64 + 1 {
            record.record(seq, written(seq));
        }
        assert_eq!(record.results.len(), SESSION_RESULTS_MAX);
        assert_eq!(record.seen(1), Seen::Forgotten);
        assert_eq!(record.seen(2), Seen::Applied(written(2)));
    }
}
