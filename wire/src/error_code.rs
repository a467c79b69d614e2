//! The typed error codes of the native protocol (`docs/protocol.md`): their numbers, which
//! are part of the protocol, and their names.

/// Typed error codes a server returns. Numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    NotFound = 1,
    BadRequest = 2,
    TooLarge = 3,
    NotLeader = 4,
    NoQuorum = 5,
    DiskFull = 6,
    Internal = 7,
    VersionMismatch = 8,
    ShuttingDown = 9,
    UnknownOpcode = 10,
    Checksum = 11,
    IoError = 12,
    /// A write would give a unique index (or `_id`) a second document with one key.
    DuplicateKey = 13,
    /// The write may or may not have taken effect: it failed after it could have become
    /// durable (an I/O error on its fdatasync, or while applying an entry that is in the
    /// log). Read the key to learn which; retrying blindly may apply it twice.
    OutcomeUnknown = 14,
    /// The request went on (to the shard's leader, or into the Raft log) and no answer came
    /// in time: like OUTCOME_UNKNOWN, it may or may not have taken effect.
    Timeout = 15,
    /// The transaction was aborted because another write took its place (a write outside
    /// a transaction to a key it had locked, or a change of the shard's leader): nothing of
    /// it was applied; run it again.
    TxnConflict = 16,
    /// The transaction was chosen as the victim of a deadlock and aborted: run it again.
    Deadlock = 17,
    /// The transaction waited for a lock longer than `--lock-timeout`, or ran past
    /// `--txn-timeout`, and was aborted.
    TxnTimeout = 18,
    /// No open transaction has this id on this connection (it finished or never began).
    TxnNotFound = 19,
    /// The read's snapshot is gone: older than `--txn-max-age`, or its shard's leader
    /// changed. Nothing was read; run it again (ADR 0023).
    SnapshotTooOld = 20,
    /// The user or the password is wrong (ADR 0025). Which of the two is not said.
    AuthFailed = 21,
    /// The connection must authenticate first: only PING and AUTH pass before it.
    NoAuth = 22,
    /// The user's role does not allow the request.
    NoPerm = 23,
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::BadRequest,
            3 => ErrorCode::TooLarge,
            4 => ErrorCode::NotLeader,
            5 => ErrorCode::NoQuorum,
            6 => ErrorCode::DiskFull,
            8 => ErrorCode::VersionMismatch,
            9 => ErrorCode::ShuttingDown,
            10 => ErrorCode::UnknownOpcode,
            11 => ErrorCode::Checksum,
            12 => ErrorCode::IoError,
            13 => ErrorCode::DuplicateKey,
            14 => ErrorCode::OutcomeUnknown,
            15 => ErrorCode::Timeout,
            16 => ErrorCode::TxnConflict,
            17 => ErrorCode::Deadlock,
            18 => ErrorCode::TxnTimeout,
            19 => ErrorCode::TxnNotFound,
            20 => ErrorCode::SnapshotTooOld,
            21 => ErrorCode::AuthFailed,
            22 => ErrorCode::NoAuth,
            23 => ErrorCode::NoPerm,
            // An unknown code from a newer server is still an error; report it as internal.
            _ => ErrorCode::Internal,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::NotLeader => "NOT_LEADER",
            ErrorCode::NoQuorum => "NO_QUORUM",
            ErrorCode::DiskFull => "DISK_FULL",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::VersionMismatch => "VERSION_MISMATCH",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::UnknownOpcode => "UNKNOWN_OPCODE",
            ErrorCode::Checksum => "CHECKSUM",
            ErrorCode::IoError => "IO_ERROR",
            ErrorCode::DuplicateKey => "DUPLICATE_KEY",
            ErrorCode::OutcomeUnknown => "OUTCOME_UNKNOWN",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::TxnConflict => "TXN_CONFLICT",
            ErrorCode::Deadlock => "DEADLOCK",
            ErrorCode::TxnTimeout => "TXN_TIMEOUT",
            ErrorCode::TxnNotFound => "TXN_NOT_FOUND",
            ErrorCode::SnapshotTooOld => "SNAPSHOT_TOO_OLD",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::NoAuth => "NOAUTH",
            ErrorCode::NoPerm => "NOPERM",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
