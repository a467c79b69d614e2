//! Bridges raft-rs's slog logger to `tracing`, so Raft's messages land in kvsd's log with
//! everything else.

use std::fmt::Write as _;

use slog::{Drain, Level, OwnedKVList, Record, KV};

struct KeyValues(String);

impl slog::Serializer for KeyValues {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// A slog drain that re-emits every record as a tracing event under the `raft` target.
struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KeyValues(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let message = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{message}{}", kv.0),
            Level::Warning => tracing::warn!(target: "raft", "{message}{}", kv.0),
            Level::Info => tracing::info!(target: "raft", "{message}{}", kv.0),
            Level::Debug => tracing::debug!(target: "raft", "{message}{}", kv.0),
            Level::Trace => tracing::trace!(target: "raft", "{message}{}", kv.0),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that writes through `tracing`, tagged with the shard.
pub fn raft_logger(shard: u32) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("shard" => shard))
}
