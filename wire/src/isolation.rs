//! A transaction's isolation level, as BEGIN carries it (one byte) and the CLI spells it.

/// A transaction's isolation level (docs/transactions.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Each read sees the latest committed data; writes lock their keys.
    ReadCommitted = 1,
    /// As if the transactions ran one at a time: reads lock what they read.
    Serializable = 2,
}

impl Isolation {
    pub fn name(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read-committed",
            Isolation::Serializable => "serializable",
        }
    }

    pub fn parse(text: &str) -> Option<Isolation> {
        match text {
            "read-committed" => Some(Isolation::ReadCommitted),
            "serializable" => Some(Isolation::Serializable),
            _ => None,
        }
    }
}
