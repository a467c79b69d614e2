//! What a node counts for Prometheus (`kvsd --metrics-listen`, docs/operations.md, ADR 0020).
//!
//! Each core records into its own [`CoreMetrics`], which only that core writes: a counter is
//! a relaxed load and store of its own cache lines (no lock, no read-modify-write, nothing
//! another core writes), and the scrape (`metrics_export`) sums the cores. Shard figures the
//! shard loop already keeps (`ShardInfo`) are not copied on every change: a scrape asks for
//! them, and each shard loop publishes a fresh `ShardInfo` at its next tick.
//!
//! Request latency is measured on the executor's round clock (`runtime::round_micros`): from
//! the round that read the request to the round that queued its reply, so work done within
//! one round counts as no time and taking the time costs nothing per request.

use crate::shard_ops::ShardInfo;
use kvs_wire::message::ErrorCode;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Upper bounds of the latency histograms' buckets, in microseconds: powers of two from
/// 32 µs to about 17 s (the last bucket, +Inf, is implied). Powers of two make finding a
/// duration's bucket one leading-zeros count instead of a search.
pub const LATENCY_BUCKETS_MICROS: [u64; 20] = {
    let mut bounds = [0u64; 20];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 32 << i;
        i += 1;
    }
    bounds
};

/// The bucket of a duration: the first whose bound is at least `micros`.
#[inline]
fn bucket_of(micros: u64) -> usize {
    // Bucket i holds (16 << i, 32 << i]; 0..=32 fall in bucket 0.
    let above = micros.saturating_sub(1) >> 5;
    ((u64::BITS - above.leading_zeros()) as usize).min(LATENCY_BUCKETS_MICROS.len())
}

/// The protocols requests arrive by; the label `protocol` of the request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Native = 0,
    Resp = 1,
}

pub const PROTOCOLS: [(Protocol, &str); 2] =
    [(Protocol::Native, "native"), (Protocol::Resp, "resp")];

/// The native protocol's commands, by opcode (`kvs_wire::message::Opcode`); slot 0 holds
/// frames with an opcode that is not one.
pub const NATIVE_COMMANDS: [&str; 21] = [
    "unknown",
    "ping",
    "get",
    "put",
    "delete",
    "cas",
    "mget",
    "mput",
    "scan",
    "info",
    "document",
    "get_stale",
    "transfer_leader",
    "once",
    "backup",
    "begin",
    "in_txn",
    "commit",
    "rollback",
    "auth_start",
    "auth_finish",
];

/// The Redis commands counted by name; any other name counts as `other` (the last slot), so
/// a client sending made-up names cannot grow the metrics.
pub const RESP_COMMANDS: [&str; 47] = [
    "append",
    "auth",
    "client",
    "command",
    "config",
    "dbsize",
    "decr",
    "decrby",
    "del",
    "discard",
    "echo",
    "exec",
    "exists",
    "expire",
    "expireat",
    "flushdb",
    "get",
    "getset",
    "hello",
    "incr",
    "incrby",
    "info",
    "keys",
    "memory",
    "mget",
    "mset",
    "multi",
    "persist",
    "pexpire",
    "pexpireat",
    "ping",
    "psetex",
    "pttl",
    "quit",
    "reset",
    "scan",
    "select",
    "set",
    "setex",
    "setnx",
    "strlen",
    "ttl",
    "type",
    "unlink",
    "unwatch",
    "watch",
    "other",
];

/// The highest native error code (`ErrorCode`).
pub const ERROR_CODES_MAX: u16 = 23;

/// Error labels: slot 0 `ERR` (a Redis command error that names no code: wrong arity, a bad
/// argument), 1–[`ERROR_CODES_MAX`] the codes of [`ErrorCode`], then `NOPROTO` and `OTHER`.
pub const ERROR_LABELS: usize = ERROR_CODES_MAX as usize + 3;
const ERROR_NOPROTO: usize = ERROR_CODES_MAX as usize + 1;
const ERROR_OTHER: usize = ERROR_CODES_MAX as usize + 2;

/// The label of error slot `slot`.
pub fn error_label(slot: usize) -> &'static str {
    match slot {
        0 => "ERR",
        ERROR_NOPROTO => "NOPROTO",
        ERROR_OTHER => "OTHER",
        code => ErrorCode::from_u16(code as u16).name(),
    }
}

/// The error slot of a native error code.
pub fn native_error_slot(code: ErrorCode) -> u8 {
    code as u8
}

/// The error slot of a Redis error reply (its bytes, starting with `-`): the error's first
/// word, and for kvs's `ERR CODE: message` the code.
pub fn resp_error_slot(reply: &[u8]) -> u8 {
    let line = reply.get(1..).unwrap_or_default();
    let word_end = line.iter().position(|&b| b == b' ' || b == b'\r');
    let word = &line[..word_end.unwrap_or(line.len())];
    let named = |name: &[u8]| {
        (1u16..=ERROR_CODES_MAX)
            .map(ErrorCode::from_u16)
            .find(|code| code.name().as_bytes() == name)
    };
    let slot = match word {
        b"ERR" => {
            // `ERR DISK_FULL: ...` names a code; `ERR wrong number of ...` does not.
            let rest = &line[word.len()..];
            let code = rest
                .strip_prefix(b" ")
                .and_then(|rest| rest.iter().position(|&b| b == b':').map(|at| &rest[..at]))
                .and_then(named);
            code.map_or(0, |code| code as usize)
        }
        b"NOQUORUM" => ErrorCode::NoQuorum as usize,
        b"TIMEOUT" => ErrorCode::Timeout as usize,
        b"NOPROTO" => ERROR_NOPROTO,
        b"WRONGPASS" => ErrorCode::AuthFailed as usize,
        word => named(word).map_or(ERROR_OTHER, |code| code as usize),
    };
    slot as u8
}

const fn slot_of(name: &str) -> u8 {
    let mut slot = 0;
    while slot < RESP_COMMANDS.len() {
        let (a, b) = (RESP_COMMANDS[slot].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut i = 0;
            while i < a.len() && a[i] == b[i] {
                i += 1;
            }
            if i == a.len() {
                return slot as u8;
            }
        }
        slot += 1;
    }
    panic!("not a counted command")
}
const SLOT_GET: u8 = slot_of("get");
const SLOT_SET: u8 = slot_of("set");

/// The RESP command slot of a lowercase command name.
pub fn resp_command_slot(name: &str) -> u8 {
    // The commands of nearly every request first, without a search.
    match name {
        "get" => return SLOT_GET,
        "set" => return SLOT_SET,
        _ => {}
    }
    match RESP_COMMANDS.binary_search(&name) {
        Ok(slot) => slot as u8,
        Err(_) => (RESP_COMMANDS.len() - 1) as u8,
    }
}

/// A counter only its core writes: adding is a relaxed load and store, not an atomic
/// read-modify-write; the scrape reads it from another thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram of durations in microseconds over [`LATENCY_BUCKETS_MICROS`], written by one
/// core. Its count is the sum of its buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is +Inf.
    buckets: [Counter; LATENCY_BUCKETS_MICROS.len() + 1],
    sum_micros: Counter,
}

impl Histogram {
    #[inline]
    pub fn record(&self, micros: u64) {
        let bucket = bucket_of(micros);
        debug_assert_eq!(
            bucket,
            LATENCY_BUCKETS_MICROS.partition_point(|&bound| bound < micros)
        );
        self.buckets[bucket].add(1);
        self.sum_micros.add(micros);
    }

    /// Adds this histogram's observations into `buckets` (per bucket, not cumulative) and
    /// returns the sum of its observations in microseconds.
    pub fn add_into(&self, buckets: &mut [u64; LATENCY_BUCKETS_MICROS.len() + 1]) -> u64 {
        for (into, bucket) in buckets.iter_mut().zip(&self.buckets) {
            *into += bucket.get();
        }
        self.sum_micros.get()
    }
}

/// One protocol's request figures on one core: by command, and errors by command and code.
#[derive(Debug)]
pub struct RequestMetrics {
    pub requests: Vec<Counter>,
    pub latency: Vec<Histogram>,
    /// `errors[command * ERROR_LABELS + slot]`.
    pub errors: Vec<Counter>,
}

impl RequestMetrics {
    fn new(commands: usize) -> RequestMetrics {
        RequestMetrics {
            requests: (0..commands).map(|_| Counter::default()).collect(),
            latency: (0..commands).map(|_| Histogram::default()).collect(),
            errors: (0..commands * ERROR_LABELS)
                .map(|_| Counter::default())
                .collect(),
        }
    }
}

/// One core's figures (see the module documentation).
#[derive(Debug)]
pub struct CoreMetrics {
    pub core: usize,
    pub native: RequestMetrics,
    pub resp: RequestMetrics,
    /// Each commit group's write and fdatasync, from the round it was issued to the round
    /// its completion was seen.
    pub log_sync: Histogram,
    pub checkpoint_micros: Counter,
    pub checkpoint_bytes: Counter,
    /// Pages checkpoints wrote to the page file.
    pub page_writes: Counter,
    /// Leader changes the shard saw (a replicated shard: its group's leader changed, or
    /// became unknown).
    pub leader_changes: Counter,
    /// Ticks of the shard loop: the watchdog sees a stuck core by this standing still.
    pub loop_ticks: Counter,
    /// A scrape wants a fresh `ShardInfo` (see [`CoreMetrics::publish_if_wanted`]).
    info_wanted: AtomicBool,
    info: Mutex<Option<(u64, ShardInfo)>>,
    info_generation: AtomicU64,
}

impl CoreMetrics {
    pub fn new(core: usize) -> CoreMetrics {
        CoreMetrics {
            core,
            native: RequestMetrics::new(NATIVE_COMMANDS.len()),
            resp: RequestMetrics::new(RESP_COMMANDS.len()),
            log_sync: Histogram::default(),
            checkpoint_micros: Counter::default(),
            checkpoint_bytes: Counter::default(),
            page_writes: Counter::default(),
            leader_changes: Counter::default(),
            loop_ticks: Counter::default(),
            info_wanted: AtomicBool::new(false),
            info: Mutex::new(None),
            info_generation: AtomicU64::new(0),
        }
    }

    pub fn protocol(&self, protocol: Protocol) -> &RequestMetrics {
        match protocol {
            Protocol::Native => &self.native,
            Protocol::Resp => &self.resp,
        }
    }

    /// Counts one answered request, its latency and, if it failed, its error slot.
    #[inline]
    pub fn request_done(&self, protocol: Protocol, command: u8, micros: u64, error: Option<u8>) {
        let metrics = self.protocol(protocol);
        let command = usize::from(command).min(metrics.requests.len() - 1);
        metrics.requests[command].add(1);
        metrics.latency[command].record(micros);
        if let Some(slot) = error {
            let slot = usize::from(slot).min(ERROR_LABELS - 1);
            metrics.errors[command * ERROR_LABELS + slot].add(1);
        }
    }

    /// Called by the shard loop at each tick: publishes `info()` if a scrape asked.
    pub fn publish_if_wanted(&self, info: impl FnOnce() -> ShardInfo) {
        self.loop_ticks.add(1);
        if self.info_wanted.swap(false, Ordering::AcqRel) {
            let generation = self.info_generation.load(Ordering::Relaxed) + 1;
            *self.info.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, info()));
            self.info_generation.store(generation, Ordering::Release);
        }
    }

    /// Asks the shard loop for a fresh `ShardInfo`; returns the generation to wait past.
    pub fn want_info(&self) -> u64 {
        let generation = self.info_generation.load(Ordering::Acquire);
        self.info_wanted.store(true, Ordering::Release);
        generation
    }

    pub fn info_generation(&self) -> u64 {
        self.info_generation.load(Ordering::Acquire)
    }

    /// The last published `ShardInfo`, if any.
    pub fn info(&self) -> Option<ShardInfo> {
        let info = self.info.lock().unwrap_or_else(|e| e.into_inner());
        info.as_ref().map(|(_, info)| info.clone())
    }
}

/// Every core's figures, for the scrape.
#[derive(Debug)]
pub struct NodeMetrics {
    pub cores: Vec<Arc<CoreMetrics>>,
}

impl NodeMetrics {
    pub fn new(cores: usize) -> NodeMetrics {
        NodeMetrics {
            cores: (0..cores)
                .map(|core| Arc::new(CoreMetrics::new(core)))
                .collect(),
        }
    }
}

thread_local! {
    /// The figures of the core running on this thread (none off a node's executors): a
    /// plain pointer, so that recording costs one thread-local read and no borrow check.
    static CURRENT: Cell<Option<&'static CoreMetrics>> = const { Cell::new(None) };
}

/// Makes `metrics` the calling executor thread's. Its figures live as long as the process
/// from then on (one `CoreMetrics` per core per node started, a few KiB).
pub fn set_current(metrics: Arc<CoreMetrics>) {
    let leaked: &'static Arc<CoreMetrics> = Box::leak(Box::new(metrics));
    let leaked: &'static CoreMetrics = leaked;
    CURRENT.with(|current| current.set(Some(leaked)));
}

/// Runs `f` on this core's figures, if this thread is a node's core.
#[inline]
pub fn with_current(f: impl FnOnce(&CoreMetrics)) {
    if let Some(metrics) = CURRENT.with(Cell::get) {
        f(metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_and_native_opcode_has_its_own_label() {
        for number in 1..=ERROR_CODES_MAX {
            let code = ErrorCode::from_u16(number);
            assert!(
                number == 7 || code != ErrorCode::Internal,
                "code {number} is unknown"
            );
            let slot = usize::from(native_error_slot(code));
            assert!(slot < ERROR_LABELS, "{code}");
            assert_eq!(error_label(slot), code.name());
            let line = format!("-{} something\r\n", code.name());
            assert_eq!(usize::from(resp_error_slot(line.as_bytes())), slot);
        }
        assert_eq!(
            error_label(usize::from(resp_error_slot(b"-WRONGPASS x\r\n"))),
            "AUTH_FAILED"
        );
        for opcode in 1..=20u8 {
            let name = kvs_wire::Opcode::from_u8(opcode).map(|o| format!("{o:?}"));
            let label = NATIVE_COMMANDS.get(usize::from(opcode));
            assert_eq!(
                label.map(|l| l.replace('_', "")),
                name.map(|n| n.to_ascii_lowercase()),
                "opcode {opcode}"
            );
        }
    }

    #[test]
    fn resp_command_names_are_sorted_for_the_binary_search() {
        let named = &RESP_COMMANDS[..RESP_COMMANDS.len() - 1];
        assert!(named.windows(2).all(|w| w[0] < w[1]), "{named:?}");
        assert_eq!(RESP_COMMANDS[resp_command_slot("get") as usize], "get");
        assert_eq!(
            RESP_COMMANDS[resp_command_slot("no-such") as usize],
            "other"
        );
    }

    #[test]
    fn redis_error_replies_are_labelled_by_their_code() {
        let label = |reply: &[u8]| error_label(resp_error_slot(reply).into());
        assert_eq!(label(b"-ERR wrong number of arguments\r\n"), "ERR");
        assert_eq!(label(b"-ERR DISK_FULL: no space\r\n"), "DISK_FULL");
        assert_eq!(label(b"-NOQUORUM no leader\r\n"), "NO_QUORUM");
        assert_eq!(label(b"-TIMEOUT gone on\r\n"), "TIMEOUT");
        assert_eq!(label(b"-NOPROTO sorry\r\n"), "NOPROTO");
        assert_eq!(label(b"-WRONGTYPE x\r\n"), "OTHER");
        assert_eq!(label(b"-"), "OTHER");
    }

    #[test]
    fn a_histogram_puts_each_duration_in_the_first_bucket_that_holds_it() {
        let histogram = Histogram::default();
        let last = *LATENCY_BUCKETS_MICROS.last().unwrap();
        for micros in [0, 32, 33, 64, 65, last, last + 1] {
            histogram.record(micros);
        }
        let mut buckets = [0; LATENCY_BUCKETS_MICROS.len() + 1];
        let sum = histogram.add_into(&mut buckets);
        assert_eq!(sum, 194 + 2 * last + 1);
        assert_eq!(buckets[0], 2, "0 and 32 are within 32");
        assert_eq!(buckets[1], 2, "33 and 64 are within 64");
        assert_eq!(buckets[2], 1, "65 is within 128");
        assert_eq!(buckets[LATENCY_BUCKETS_MICROS.len() - 1], 1);
        assert_eq!(buckets[LATENCY_BUCKETS_MICROS.len()], 1, "+Inf");
        for micros in 0..100_000 {
            assert_eq!(
                bucket_of(micros),
                LATENCY_BUCKETS_MICROS.partition_point(|&bound| bound < micros)
            );
        }
    }
}
