//! kvs-core: one shard's storage engine, with no runtime, no sockets and no clock.
//!
//! - [`log`]: the shard's write-ahead log (which is also its Raft log): record and segment
//!   formats, group-commit appends, and recovery that truncates a torn tail and refuses
//!   corruption. It does its I/O through the [`log::LogDisk`] trait, so the same code runs on
//!   io_uring in `kvsd` and on a simulated, fault-injecting disk in tests.
//! - [`command`]: the commands a Raft entry carries and their encoding.
//! - [`state`]: the state machine the log is applied to ([`state::StateMachine`]) and its
//!   in-memory implementation.
//! - [`store`]: the paged B+tree store a shard's state lives in.
//! - [`doc`]: JSON documents and MongoDB query filters (parsing and matching).
//!
//! Architecture invariant: nothing here spawns a task, opens a socket or reads the clock.

// Bytes from the disk are input: storage code handles their errors, never unwraps them.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod command;
pub mod doc;
pub mod limits;
pub mod log;
pub mod result;
pub mod sessions;
pub mod state;
pub mod store;
