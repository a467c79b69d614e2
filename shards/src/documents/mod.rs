//! Document commands: the coordinator that runs each on the shards (the shard side of its
//! reads is `doc_reads`).
//!
//! A DOCUMENT request carries a JSON command (`{"find": "people", "filter": {...}}`; the
//! commands are in `docs/documents.md`). The connection's core parses it (a bad command is
//! a BAD_REQUEST naming the part, before any shard sees it) and runs it as a task of its
//! own, so the connection goes on with other requests:
//!
//! - A document lives on the shard `hash(collection, _id)` picks. A write or read whose
//!   filter names one `_id` goes to that shard alone; others go to every shard.
//! - Writes are [`DocCommand`]s in the shard's log, applied with their index entries in one
//!   apply. `updateOne`/`deleteOne` over several shards ask them one after another until
//!   one matches.
//! - A find asks every shard for its first `skip + limit` documents in order (sort, then
//!   `_id`), merges them, and cuts pages; a page that is not the last carries a cursor: the
//!   last document's sort fields and `_id`, from which every shard resumes. No cursor
//!   state lives on the server.
//! - An aggregation runs its leading `$match` stages on every shard, and a `$group` right
//!   after them as partial groups that the coordinator combines; the rest of the pipeline
//!   runs on the coordinator.
//! - Unique indexes are checked atomically by each shard for its own documents. Across
//!   shards, the coordinator holds a per-collection lock while it asks the other shards
//!   whether a new key is taken, then writes: writes to a collection with a unique index
//!   are serialised on the node (see `docs/documents.md` for what that costs).
//! - Index builds run in the background on each shard ([`build_indexes`]); `createIndex`
//!   answers once every shard's index is ready.
//!
//! - Inside a transaction, the commands run over the transaction's own writes instead
//!   ([`in_txn`], ADR 0024).
//!
//! The files, each using only those after it in this list: this one (parsing a command and
//! dispatching it); `in_txn` (the commands inside a transaction); `write`, `read` and
//! `catalog` (the commands); `build` (each shard's
//! background index builds); `unique` (cross-shard unique checks and retries); `locks` (the
//! collection write locks); `placement` (which shard holds which `_id`); `common` (failures,
//! arguments, shard ops and replies); `ask` (the transport to the shards).
//!
//! [`DocCommand`]: kvs_core::doc::command::DocCommand

mod build;
mod catalog;
mod common;
pub mod in_txn;
mod locks;
mod placement;
mod read;
mod unique;
mod write;

use std::rc::Rc;

use kvs_core::doc::value::Value;
use kvs_wire::limits::DOCUMENT_SIZE_MAX;
use kvs_wire::{ErrorCode, Response};

pub use crate::ask::ReplySlot;
pub use crate::documents::build::build_indexes;
use crate::documents::catalog::{
    create_index, drop_collection, drop_index, list_collections, list_indexes,
};
use crate::documents::common::{bad, Out};
use crate::documents::read::{aggregate, count, explain, find};
use crate::documents::write::{delete, insert, update};
use crate::route::CoreContext;

/// Runs one DOCUMENT request.
pub async fn handle(ctx: &Rc<CoreContext>, body: &[u8]) -> Response {
    match run(ctx, body).await {
        Ok(value) => {
            let text = value.to_string();
            if text.len() > DOCUMENT_SIZE_MAX {
                return Response::error(
                    ErrorCode::TooLarge,
                    format!(
                        "the reply of {} bytes exceeds the {DOCUMENT_SIZE_MAX}-byte limit",
                        text.len()
                    ),
                );
            }
            Response::Document(text)
        }
        Err(fail) => Response::error(fail.code, fail.message),
    }
}

async fn run(ctx: &Rc<CoreContext>, body: &[u8]) -> Out<Value> {
    let text = std::str::from_utf8(body).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    let command = Value::from_json(text).map_err(|e| bad(e.0))?;
    let name = match &command {
        Value::Object(fields) if !fields.is_empty() => fields[0].0.clone(),
        _ => return Err(bad("a command is a non-empty document")),
    };
    match name.as_str() {
        "insert" => insert(ctx, &command).await,
        "find" => find(ctx, &command).await,
        "count" => count(ctx, &command).await,
        "update" => update(ctx, &command).await,
        "delete" => delete(ctx, &command).await,
        "aggregate" => aggregate(ctx, &command).await,
        "explain" => explain(ctx, &command).await,
        "createIndex" => create_index(ctx, &command).await,
        "dropIndex" => drop_index(ctx, &command).await,
        "listIndexes" => list_indexes(ctx, &command).await,
        "listCollections" => list_collections(ctx).await,
        "drop" => drop_collection(ctx, &command).await,
        other => Err(bad(format!("unknown document command {other:?}"))),
    }
}
