//! What a shard is asked and what it answers: the requests that reach a shard (split by
//! shard already), their origins, the replies, and INFO's per-shard figures. Plain data,
//! shared by the shard (`shard`), the routing (`route`), the servers and the peer codec.

use kvs_core::command::Command;
use kvs_core::state::{CommandResult, Versioned};
use kvs_wire::ErrorCode;
use serde::Serialize;

/// Who sent a request: requests of one origin take effect in the order they were sent. A
/// client connection is an origin; [`NO_ORIGIN`] is for senders that wait for each reply
/// before they send the next request (document coordinators), which need no ordering.
pub type Origin = u64;
pub const NO_ORIGIN: Origin = 0;
/// Set in the origin of a request another node forwarded here: it is never forwarded again
/// (a leader that lost its leadership meanwhile answers NOT_LEADER instead).
pub const FORWARDED_ORIGIN: Origin = 1 << 63;

/// Requests waiting (beyond it) that start a further commit group while one is in flight;
/// the shard's queue wakes the shard loop when it reaches this many (see
/// `ShardCore::takes_writes`).
pub const PIPELINE_WHEN_QUEUED: usize = 4;

/// What a shard is asked to do. Multi-key requests are split by shard before they get here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardOp {
    Get {
        key: Vec<u8>,
    },
    /// A GET answered from this member's own state, leader or not (never forwarded).
    GetStale {
        key: Vec<u8>,
    },
    MGet {
        keys: Vec<Vec<u8>>,
    },
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    },
    Info,
    Write(Command),
    /// A read of documents (see `documents`).
    DocRead(crate::doc_reads::DocRead),
    /// Takes a collection's write lock (see `locks`): answered with `Locked` once granted.
    Lock(crate::locks::LockRequest),
    /// Releases a lock `Lock` granted; answered with `Locked` at once.
    Unlock(crate::locks::LockRequest),
    /// Chunk `number` of backup `id` of this member's replica (id 0: start one), never
    /// forwarded (see `kvs_core::store::backup`).
    Backup {
        id: u64,
        number: u32,
    },
    /// A transaction's request to the shard's transaction lock table (`txn_locks`):
    /// answered with `Locked` when granted or done.
    TxnLock(crate::txn_locks::TxnLockOp),
    /// A read (GET, MGET, SCAN) that sees every write the shard proposed before it, whoever
    /// sent it: a transaction's read under its locks (ADR 0022).
    Fenced(Box<ShardOp>),
    /// Round one of a snapshot read across shards (ADR 0023): begins a snapshot
    /// provisionally at the shard's newest version, answered `Snapshot(version)`.
    SnapshotBegin,
    /// Round two: a read (GET, MGET, SCAN) at timestamp `ts` of the snapshot begun at
    /// `began` (fixed there first; 0: fixed by an earlier read), which it then closes unless
    /// `keep_open` (a read-only transaction's). Fenced, like `Fenced`, after the node's
    /// clock is raised past `ts`.
    AtSnapshot {
        began: u64,
        ts: u64,
        keep_open: bool,
        read: Box<ShardOp>,
    },
    /// Ends a snapshot: the one fixed at `ts` (if not 0), else the one begun at `began` and
    /// never read (another shard failed round one, or a read-only transaction ended).
    SnapshotEnd {
        began: u64,
        ts: u64,
    },
}

impl ShardOp {
    /// Lock requests are handled by the shard loop's lock tables, not by the store.
    pub fn is_lock(&self) -> bool {
        matches!(
            self,
            ShardOp::Lock(_) | ShardOp::Unlock(_) | ShardOp::TxnLock(_)
        )
    }

    /// Whether a member that does not lead may forward it to the leader: collection lock
    /// requests belong to the node whose coordinator asked, INFO and stale reads are about
    /// the node asked. Transactions' lock requests and fenced reads go to the leader, which
    /// keeps the locks.
    pub fn is_forwardable(&self) -> bool {
        !matches!(
            self,
            ShardOp::Info
                | ShardOp::Lock(_)
                | ShardOp::Unlock(_)
                | ShardOp::GetStale { .. }
                | ShardOp::Backup { .. }
        )
    }

    /// Whether this member answers it from its own state even in a cluster that reads
    /// through the leader (INFO, stale reads).
    pub fn is_local_read(&self) -> bool {
        matches!(
            self,
            ShardOp::Info | ShardOp::GetStale { .. } | ShardOp::Backup { .. }
        )
    }
}

/// A shard's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardReply {
    Value(Option<Versioned>),
    Values(Vec<Option<Versioned>>),
    /// A snapshot begun at this version (`SnapshotBegin`).
    Snapshot(u64),
    Scanned(Vec<(Vec<u8>, Vec<u8>)>),
    Written(CommandResult),
    Info(Box<ShardInfo>),
    /// A document read's reply, in the binary document encoding.
    Doc(Vec<u8>),
    /// A lock was granted (or released).
    Locked,
    /// A chunk of a backup (never forwarded).
    Backup(Box<kvs_wire::message::BackupChunk>),
    Error(ErrorCode, String),
}

/// One shard's part of INFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardInfo {
    pub shard: u32,
    pub keys: u64,
    /// Documents in the shard; None when its checkpoint predates the count.
    pub documents: Option<u64>,
    pub term: u64,
    pub last_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub leader: bool,
    pub log_size_bytes: u64,
    pub log_segments: u64,
    pub log_groups_written: u64,
    pub log_records_written: u64,
    pub log_syncs: u64,
    /// Commit-group fdatasyncs the ring saw complete: never fewer than the groups written.
    pub log_synced_writes_completed: u64,
    /// Commit groups written and not yet known durable.
    pub log_groups_in_flight: u64,
    pub writes_applied: u64,
    pub cache_pages: u64,
    pub hot_cache_hits: u64,
    pub hot_cache_misses: u64,
    /// Writes that went straight to the leaf the hot cache named.
    pub hinted_writes: u64,
    pub cache_capacity_pages: u64,
    /// What the resident pages take in memory (bytes), as last measured.
    pub cache_memory_bytes: u64,
    pub dirty_pages: u64,
    pub page_file_pages: u64,
    pub free_pages: u64,
    pub page_reads: u64,
    /// Page lookups the buffer pool answered, and those that missed it.
    pub pool_hits: u64,
    pub pool_misses: u64,
    pub evictions: u64,
    pub tree_height: u32,
    pub checkpoints: u64,
    pub checkpoint_index: u64,
    /// Snapshots open on the shard (ADR 0023), the old versions kept for them and their
    /// bytes.
    pub snapshots_open: u64,
    pub versions_kept: u64,
    pub version_bytes: u64,
    pub failed: Option<String>,
    /// The shard's group, on a node of a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ShardClusterInfo>,
}

/// A replicated shard's group, as this node sees it (`kvs cluster status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardClusterInfo {
    pub cluster_id: String,
    pub node_id: u64,
    /// None while the group has no leader this node knows of.
    pub leader: Option<u64>,
    /// Requests this node's shard forwarded to its leader elsewhere since it started.
    pub forwarded: u64,
    /// Snapshots this node's shard sent whole to followers, and installed from a leader,
    /// since it started.
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    /// Log entries this node's shard read back from its segments for followers that needed
    /// entries no longer in memory, since it started.
    pub entries_read_back: u64,
    /// Linearizable reads this node's shard answered from its leader lease (ADR 0019)
    /// rather than through a quorum round, since it started.
    pub reads_by_lease: u64,
    pub replicas: Vec<ReplicaInfo>,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaInfo {
    pub node: u64,
    /// Known on the leader for every replica, elsewhere only for this node's own.
    pub match_index: Option<u64>,
    pub role: String,
}

/// A member node as this node's core sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub id: u64,
    /// Its native and RESP addresses (known once it called this node).
    pub addr: Option<String>,
    pub peer_addr: String,
    pub resp_addr: Option<String>,
    pub reachable: bool,
    /// Since a frame from it last arrived (None: never).
    pub last_heard_ms: Option<u64>,
    /// Bytes this core's link has sent it (its shard's Raft traffic, forwarded requests and
    /// answers, keepalives).
    pub bytes_sent: u64,
}

/// A request with where its reply goes; `R` is the server's reply address.
#[derive(Debug)]
pub struct ShardRequest<R> {
    pub op: ShardOp,
    pub reply: R,
    pub origin: Origin,
}
