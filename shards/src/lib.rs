//! kvs-shards: the per-core runtime, routing, Raft per shard and the `kvsd` server.
//!
//! - [`runtime`]: executors on io_uring, with TCP, timers and cross-core channels.
//! - [`log_io`]: the log's disk: O_DIRECT segment files written through io_uring.
//! - [`peer`]: one shard's Raft peer over its log and state machine (sans-runtime).
//! - [`shard`]: the shard service: batching (group commit), read ordering, replies.
//! - [`conn`]: what every client connection shares: output, ordering, limits, shutdown.
//! - [`local_reads`]: point reads a connection answers from its own core's shard (ADR 0029).
//! - [`server`]: native-protocol connections, routing of requests to shards, merging.
//! - [`documents`]: document commands: the coordinator, and the shard side of their reads.
//! - [`resp_server`]: the Redis-protocol (RESP2) listener for the key-value subset.
//! - [`node`]: starting a node: data directory, executors, cross-core mesh, shutdown.
//! - [`config`]: flags and the TOML config file.

pub mod archive;
pub mod ask;
pub mod auth;
pub mod checkpoint_task;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod data_dir;
pub mod deadlock;
pub mod doc_reads;
pub mod documents;
pub mod driver;
pub mod lease;
pub mod local;
pub mod local_reads;
pub mod lock_names;
pub mod locks;
pub mod log_io;
pub mod metrics;
pub mod metrics_export;
pub mod metrics_http;
pub mod node;
pub mod operate;
pub mod peer;
pub mod peer_storage;
pub mod pending;
pub mod raft_logger;
pub mod read_index;
pub mod request_memory;
pub mod resp_keyspace;
pub mod resp_multi;
pub mod resp_reply;
pub mod resp_server;
pub mod restore;
pub mod route;
pub mod runtime;
pub mod scan_cursors;
pub mod server;
pub mod shard;
pub mod shard_ops;
pub mod shard_reads;
pub mod shard_txn;
pub mod sighup;
pub mod snapshot;
pub mod snapshot_read;
pub mod spread;
pub mod tls;
pub mod tls_records;
pub mod txn;
pub mod txn_commit;
pub mod txn_locks;
pub mod txn_shared;
