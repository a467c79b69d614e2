//! A transaction's isolation level, as BEGIN carries it (one byte) and the CLI spells it.

/// A transaction's isolation level (docs/transactions.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Each read sees the latest committed data; writes lock their keys.
    ReadCommitted = 1,
    /// As if the transactions ran one at a time: reads lock what they read.
    Serializable = 2,
    /// Reads only, all at one snapshot taken at BEGIN, with no locks (ADR 0023); writes are
    /// refused. Serializable: it writes nothing and reads one consistent state.
    ReadOnly = 3,
}

impl Isolation {
    pub fn name(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read-committed",
            Isolation::Serializable => "serializable",
            Isolation::ReadOnly => "read-only",
        }
    }

    pub fn parse(text: &str) -> Option<Isolation> {
        match text {
            "read-committed" => Some(Isolation::ReadCommitted),
            "serializable" => Some(Isolation::Serializable),
            "read-only" => Some(Isolation::ReadOnly),
            _ => None,
        }
    }
}
