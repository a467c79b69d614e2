//! Named maximums and sizes of the storage engine, with their relations checked at compile time.

/// Alignment and granularity of every log write: direct I/O needs sector alignment, and 4 KiB
/// covers every device we run on.
pub const LOG_BLOCK_SIZE: usize = 4096;
/// A segment is closed and a new one started once it grows past this size.
pub const SEGMENT_SIZE_TARGET: u64 = 64 * 1024 * 1024;
/// Largest payload of one log record (one Raft entry). One entry carries a batch of commands.
pub const RECORD_PAYLOAD_SIZE_MAX: usize = 256 * 1024 * 1024;
/// Largest key, in bytes (same as the wire limit). Keys live in B+tree pages: a 4 KiB page
/// must hold at least two of the largest entries (see `store::page`).
pub const KEY_SIZE_MAX: usize = 1024;
/// Largest value, in bytes (same as the wire limit).
pub const VALUE_SIZE_MAX: usize = 16 * 1024 * 1024;
/// Largest key in a shard's B+tree: a key-value key with its space prefix, a document's
/// collection id and `_id`, or an index entry (index id, index key, `_id`).
pub const TREE_KEY_SIZE_MAX: usize = 1400;
/// Largest logged document command (an insert of many documents, say): the frame limit.
pub const DOC_COMMAND_SIZE_MAX: usize = 64 * 1024 * 1024;
/// A proposal batch stops taking commands once its encoding reaches this size; one command
/// larger than this still goes, alone.
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most commands in one proposal batch.
pub const BATCH_COMMANDS_MAX: usize = 16 * 1024;
/// Largest commit group (one write + one fdatasync).
pub const GROUP_BYTES_MAX: usize = RECORD_PAYLOAD_SIZE_MAX + 64 * 1024;

const _: () = assert!(LOG_BLOCK_SIZE.is_power_of_two() && LOG_BLOCK_SIZE.is_multiple_of(512));
const _: () = assert!(SEGMENT_SIZE_TARGET.is_multiple_of(LOG_BLOCK_SIZE as u64));
const _: () = assert!(KEY_SIZE_MAX + VALUE_SIZE_MAX < BATCH_BYTES_MAX * 4);
const _: () = assert!(BATCH_BYTES_MAX < RECORD_PAYLOAD_SIZE_MAX);
const _: () = assert!(DOC_COMMAND_SIZE_MAX < RECORD_PAYLOAD_SIZE_MAX);
const _: () = assert!(KEY_SIZE_MAX + 8 < TREE_KEY_SIZE_MAX);
const _: () = assert!(GROUP_BYTES_MAX < u32::MAX as usize);
/// Commit groups a shard's log may have in flight at once (written, not yet known durable).
/// The next group's write starts while earlier ones sync; replies still go out in log order.
/// Recorded in each segment's header, since recovery depends on it (see `log`).
pub const GROUPS_IN_FLIGHT_MAX: u32 = 4;
