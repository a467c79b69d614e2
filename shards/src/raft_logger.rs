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
        // raft-rs logs every message it sends, entries and all, at debug level: formatting
        // one that nobody records costs as much as a catch-up append's megabytes of escaped
        // bytes, enough to stall a shard's loop for seconds.
        let enabled = match record.level() {
            Level::Critical | Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            Level::Info => tracing::enabled!(target: "raft", tracing::Level::INFO),
            Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::fmt;

    use super::raft_logger;

    thread_local! {
        static FORMATTED: Cell<usize> = const { Cell::new(0) };
    }

    /// A value that counts how often it was formatted (raft-rs logs whole messages, entries
    /// and all, at debug level).
    struct Costly;

    impl fmt::Debug for Costly {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            FORMATTED.with(|n| n.set(n.get() + 1));
            f.write_str("costly")
        }
    }

    #[test]
    fn records_below_the_level_tracing_records_are_not_formatted() {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let logger = raft_logger(0);
            slog::debug!(logger, "sending"; "msg" => ?Costly);
            slog::trace!(logger, "sending"; "msg" => ?Costly);
            assert_eq!(
                FORMATTED.with(Cell::get),
                0,
                "a filtered record was formatted"
            );
            slog::info!(logger, "elected"; "msg" => ?Costly);
            assert_eq!(
                FORMATTED.with(Cell::get),
                1,
                "a recorded record was not formatted"
            );
        });
    }
}
