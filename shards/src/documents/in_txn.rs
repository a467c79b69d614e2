//! Document commands inside a transaction (ADR 0024): insert, find, count, update, delete
//! and aggregate, run by the transaction's coordinator over its own writes.
//!
//! - A transaction's document writes are buffered here ([`DocWrites`]: each changed
//!   document's new content, or its deletion, by collection and `_id`) and go to the shards
//!   only at COMMIT, as one replace-or-insert or delete by `_id` each, inside the
//!   transaction's commit entries. Reads see them: the shards' documents with the buffered
//!   ones laid over, matched, sorted and cut here.
//! - Locks are on a collection's documents on one shard: a write takes its collection
//!   exclusively on every shard its filter (or new documents) reach before it reads what it
//!   changes, so what it computed from stays true until COMMIT; under Serializable a read
//!   takes them shared. A write outside transactions to the collection on that shard breaks
//!   them, as a key-value write breaks a key's.
//! - What the shards would refuse when the commit applies is refused when the command runs
//!   instead (a duplicate `_id`, a document too large or too deep, an index key too long):
//!   the command fails whole and the transaction goes on. A collection with a unique index
//!   besides `_id` is not written inside transactions (its keys are checked across shards
//!   under a lock a commit cannot hold; see the ADR).
//! - Index and collection commands (createIndex, drop, listIndexes...) and explain run
//!   outside transactions only.

use std::collections::BTreeMap;

use kvs_core::command::Command;
use kvs_core::doc::command::{DocCommand, DocError, DocErrorKind};
use kvs_core::doc::cursor::Sort;
use kvs_core::doc::index_key;
use kvs_core::doc::query::Filter;
use kvs_core::doc::update::Update;
use kvs_core::doc::value::{compare, Value};
use kvs_core::store::docs::{check_document, order, upsert_document, After};
use kvs_wire::{ErrorCode, Isolation};

use crate::ask::ask_all;
use crate::doc_reads::{obj, FindMode};
use crate::documents::common::{bad, doc_reply, docs_of, find_reads, index_reads, Args, Fail};
use crate::documents::placement::{new_id, pinned_id, shard_of, targets};
use crate::documents::read::{find_args, find_page, split_pipeline, FIND_FIELDS};
use crate::documents::write::{insert_args, update_args};
use crate::lock_names;
use crate::route::CoreContext;
use crate::shard::ShardOp;
use crate::txn_locks::Mode;

/// Why a request of a transaction failed: its code and message.
pub type Refusal = (ErrorCode, String);

/// What a transaction lends its document commands (its coordinator, `txn`, implements it).
pub(crate) trait TxnAccess {
    fn isolation(&self) -> Isolation;
    fn doc_writes(&mut self) -> &mut DocWrites;
    /// Takes lock `name` on `shard` in `mode`; answered once granted.
    async fn lock_name(
        &mut self,
        ctx: &CoreContext,
        shard: u32,
        name: Vec<u8>,
        mode: Mode,
    ) -> Result<(), Refusal>;
    /// The op that reads `read` on `shard` for this transaction: at its snapshot (read-only),
    /// fenced (`locked`: under a lock it holds there), or as it is.
    fn read_op(&mut self, shard: u32, read: ShardOp, locked: bool) -> ShardOp;
}

/// A transaction's buffered document writes: each document's new content, or `None` for a
/// deletion, by collection and `_id` key.
#[derive(Debug, Default)]
pub struct DocWrites {
    docs: BTreeMap<(String, Vec<u8>), Option<Value>>,
}

impl DocWrites {
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    fn get(&self, coll: &str, id: &Value) -> Option<&Option<Value>> {
        self.docs.get(&(coll.to_string(), index_key::key(id)))
    }

    fn set(&mut self, coll: &str, id: &Value, doc: Option<Value>) {
        self.docs
            .insert((coll.to_string(), index_key::key(id)), doc);
    }

    /// The commit's document commands, by shard: a replace-or-insert by `_id` for each
    /// written document, a delete by `_id` for each deleted one.
    pub fn commands(&self, ctx: &CoreContext) -> BTreeMap<u32, Vec<Command>> {
        let mut out: BTreeMap<u32, Vec<Command>> = BTreeMap::new();
        for ((coll, id_key), doc) in &self.docs {
            let id = index_key::decode(id_key).expect("an _id key this transaction encoded");
            let by_id = obj(vec![("_id", obj(vec![("$eq", id.clone())]))]);
            let command = match doc {
                Some(doc) => DocCommand::Update {
                    coll: coll.clone(),
                    filter: by_id,
                    update: doc.clone(),
                    multi: false,
                    upsert: Some(id.clone()),
                },
                None => DocCommand::Delete {
                    coll: coll.clone(),
                    filter: by_id,
                    multi: false,
                },
            };
            out.entry(shard_of(ctx, coll, &id))
                .or_default()
                .push(Command::Document {
                    body: command.encode(),
                });
        }
        out
    }
}

fn refusal(fail: Fail) -> Refusal {
    (fail.code, fail.message)
}

fn failed(error: DocError) -> Fail {
    Fail {
        code: match error.kind {
            DocErrorKind::DuplicateKey => ErrorCode::DuplicateKey,
            DocErrorKind::TooLarge => ErrorCode::TooLarge,
            DocErrorKind::NotFound => ErrorCode::NotFound,
            DocErrorKind::BadRequest | DocErrorKind::Retry => ErrorCode::BadRequest,
        },
        message: error.message,
    }
}

/// Checks a document the transaction will write: what the shards would refuse of it, and
/// that the commit's replace-or-insert carries it as it is (a field named with a `$` or a
/// dot would read as an operator or a path).
fn checked(doc: &Value, index_keys: &[Value]) -> Result<(), Refusal> {
    check_document(doc, index_keys).map_err(|e| refusal(failed(e)))?;
    match Update::parse(doc) {
        Ok(Update::Replace(_)) => Ok(()),
        _ => Err((
            ErrorCode::BadRequest,
            format!(
                "document {}: a top-level field name starts with $ or holds a dot; such a \
                 document is written outside transactions",
                doc.get("_id").unwrap_or(&Value::Null)
            ),
        )),
    }
}

/// Runs one document command inside a transaction; its reply document.
pub(crate) async fn run<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    body: &[u8],
) -> Result<Value, Refusal> {
    let text = std::str::from_utf8(body).map_err(|e| refusal(bad(format!("not UTF-8: {e}"))))?;
    let command = Value::from_json(text).map_err(|e| refusal(bad(e.0)))?;
    let name = match &command {
        Value::Object(fields) if !fields.is_empty() => fields[0].0.clone(),
        _ => return Err(refusal(bad("a command is a non-empty document"))),
    };
    let writes = matches!(name.as_str(), "insert" | "update" | "delete");
    if writes && txn.isolation() == Isolation::ReadOnly {
        return Err((
            ErrorCode::BadRequest,
            "a read-only transaction cannot write: begin a read-committed or serializable one"
                .into(),
        ));
    }
    match name.as_str() {
        "insert" => insert(ctx, txn, &command).await,
        "update" => update(ctx, txn, &command).await,
        "delete" => delete(ctx, txn, &command).await,
        "find" => find(ctx, txn, &command).await,
        "count" => count(ctx, txn, &command).await,
        "aggregate" => aggregate(ctx, txn, &command).await,
        "explain" | "createIndex" | "dropIndex" | "listIndexes" | "listCollections" | "drop" => {
            Err(refusal(bad(format!(
                "{name} cannot run inside a transaction: run it on its own"
            ))))
        }
        other => Err(refusal(bad(format!("unknown document command {other:?}")))),
    }
}

/// Locks `coll` on each of `shards` (in order, so two transactions never wait for each other
/// in a circle over one collection) in `mode`.
async fn lock<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    coll: &str,
    shards: &[u32],
    mode: Mode,
) -> Result<(), Refusal> {
    let mut shards = shards.to_vec();
    shards.sort_unstable();
    shards.dedup();
    for shard in shards {
        txn.lock_name(ctx, shard, lock_names::collection(coll), mode)
            .await?;
    }
    Ok(())
}

/// Locks `coll` on `shards` for a read: shared under Serializable, not at all otherwise
/// (Read Committed reads the latest committed documents, read-only its snapshot). Whether
/// the reads that follow are under a lock.
async fn lock_for_read<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    coll: &str,
    shards: &[u32],
) -> Result<bool, Refusal> {
    if txn.isolation() != Isolation::Serializable {
        return Ok(false);
    }
    lock(ctx, txn, coll, shards, Mode::Shared).await?;
    Ok(true)
}

/// Locks `coll` exclusively on `shards` for a write, and returns the key specs of its
/// indexes there (what the new documents are checked against). Refuses a collection with
/// a unique index besides `_id`.
async fn lock_for_write<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    coll: &str,
    shards: &[u32],
) -> Result<Vec<Value>, Refusal> {
    lock(ctx, txn, coll, shards, Mode::Exclusive).await?;
    let reads = index_reads(coll, shards.iter().copied())
        .into_iter()
        .map(|(shard, read)| (shard, txn.read_op(shard, read, true)))
        .collect();
    let mut keys: Vec<Value> = Vec::new();
    for reply in ask_all(ctx, reads).await {
        let reply = doc_reply(reply).map_err(refusal)?;
        let Some(Value::Array(indexes)) = reply.get("indexes") else {
            continue;
        };
        for index in indexes {
            let Some(key) = index.get("key") else {
                continue;
            };
            if let (Some(Value::Bool(true)), Some(name)) = (index.get("unique"), index.get("name"))
            {
                return Err((
                    ErrorCode::BadRequest,
                    format!(
                        "{coll} has the unique index {name}: its documents are written outside \
                         transactions (unique keys are checked across shards under a lock a \
                         transaction's commit cannot hold)"
                    ),
                ));
            }
            if !keys.iter().any(|k| compare(k, key).is_eq()) {
                keys.push(key.clone());
            }
        }
    }
    Ok(keys)
}

/// The documents of `coll` on `shards` that `filter` matches, as this transaction sees
/// them (its own writes laid over the shards'), in `_id` order.
async fn fetch<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    coll: &str,
    filter_value: &Value,
    filter: &Filter,
    shards: &[u32],
    locked: bool,
) -> Result<Vec<Value>, Refusal> {
    let query = kvs_core::doc::binary::to_bytes(&obj(vec![("filter", filter_value.clone())]));
    let reads = find_reads(coll, shards, &query, FindMode::Documents)
        .into_iter()
        .map(|(shard, read)| (shard, txn.read_op(shard, read, locked)))
        .collect();
    let mut docs = Vec::new();
    for reply in ask_all(ctx, reads).await {
        docs.extend(docs_of(doc_reply(reply).map_err(refusal)?));
    }
    let own = txn.doc_writes();
    docs.retain(|doc| {
        own.get(coll, doc.get("_id").unwrap_or(&Value::Null))
            .is_none()
    });
    docs.extend(
        own.docs
            .iter()
            .filter(|((c, _), _)| c == coll)
            .filter_map(|(_, doc)| doc.as_ref())
            .filter(|doc| filter.matches(doc))
            .cloned(),
    );
    docs.sort_by(|a, b| order(&Sort::default(), a, b));
    Ok(docs)
}

/// Whether a document with this `_id` exists as the transaction sees it (its home shard is
/// locked exclusively).
async fn exists<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    coll: &str,
    id: &Value,
) -> Result<bool, Refusal> {
    if let Some(own) = txn.doc_writes().get(coll, id) {
        return Ok(own.is_some());
    }
    let filter_value = obj(vec![("_id", obj(vec![("$eq", id.clone())]))]);
    let filter = Filter::parse(&filter_value).map_err(|e| refusal(bad(e.0)))?;
    let home = shard_of(ctx, coll, id);
    Ok(
        !fetch(ctx, txn, coll, &filter_value, &filter, &[home], true)
            .await?
            .is_empty(),
    )
}

async fn insert<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    command: &Value,
) -> Result<Value, Refusal> {
    let (coll, docs) = insert_args(command).map_err(refusal)?;
    let ids: Vec<Value> = docs
        .iter()
        .map(|d| d.get("_id").cloned().unwrap_or(Value::Null))
        .collect();
    let homes: Vec<u32> = ids.iter().map(|id| shard_of(ctx, &coll, id)).collect();
    let index_keys = lock_for_write(ctx, txn, &coll, &homes).await?;
    for (i, doc) in docs.iter().enumerate() {
        checked(doc, &index_keys)?;
        let id = &ids[i];
        if ids[..i].iter().any(|other| compare(other, id).is_eq())
            || exists(ctx, txn, &coll, id).await?
        {
            return Err((
                ErrorCode::DuplicateKey,
                format!("duplicate key: {coll} already has a document with _id {id}"),
            ));
        }
    }
    let own = txn.doc_writes();
    for (doc, id) in docs.into_iter().zip(&ids) {
        own.set(&coll, id, Some(doc));
    }
    Ok(obj(vec![
        ("inserted", Value::Int(ids.len() as i64)),
        ("insertedIds", Value::Array(ids)),
    ]))
}

async fn update<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    command: &Value,
) -> Result<Value, Refusal> {
    let (u, multi) = update_args(command).map_err(refusal)?;
    let (coll, filter_value, filter, update) =
        (u.coll.as_str(), &u.filter_value, &u.filter, &u.update);
    let upsert = u.upsert;
    let shards = targets(ctx, coll, filter);
    let index_keys = lock_for_write(ctx, txn, coll, &shards).await?;
    let mut matched = fetch(ctx, txn, coll, filter_value, filter, &shards, true).await?;
    if !multi {
        matched.truncate(1);
    }
    if matched.is_empty() && upsert {
        let id = pinned_id(filter).unwrap_or_else(new_id);
        let doc = upsert_document(filter, update, id.clone()).map_err(|e| refusal(failed(e)))?;
        let home = shard_of(ctx, coll, &id);
        let index_keys = lock_for_write(ctx, txn, coll, &[home]).await?;
        checked(&doc, &index_keys)?;
        if exists(ctx, txn, coll, &id).await? {
            return Err((
                ErrorCode::DuplicateKey,
                format!("duplicate key: the upsert's _id {id} is taken in {coll} by a document the filter does not match"),
            ));
        }
        txn.doc_writes().set(coll, &id, Some(doc));
        return Ok(obj(vec![
            ("matched", Value::Int(0)),
            ("modified", Value::Int(0)),
            ("upserted", id),
        ]));
    }
    // Every new version first: the command changes all or nothing.
    let mut changed = Vec::new();
    for doc in &matched {
        let mut new = doc.clone();
        update.apply(&mut new).map_err(|e| refusal(bad(e.0)))?;
        checked(&new, &index_keys)?;
        if !compare(doc, &new).is_eq() {
            changed.push(new);
        }
    }
    let modified = changed.len() as i64;
    let own = txn.doc_writes();
    for doc in changed {
        let id = doc.get("_id").cloned().unwrap_or(Value::Null);
        own.set(coll, &id, Some(doc));
    }
    Ok(obj(vec![
        ("matched", Value::Int(matched.len() as i64)),
        ("modified", Value::Int(modified)),
    ]))
}

async fn delete<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    command: &Value,
) -> Result<Value, Refusal> {
    let args = Args::new(command, &["filter", "multi"]).map_err(refusal)?;
    let coll = args.coll().map_err(refusal)?;
    let filter_value = args.doc("filter").map_err(refusal)?;
    let filter = Filter::parse(&filter_value).map_err(|e| refusal(bad(e.0)))?;
    let multi = args.flag("multi").map_err(refusal)?;
    let shards = targets(ctx, &coll, &filter);
    lock_for_write(ctx, txn, &coll, &shards).await?;
    let mut matched = fetch(ctx, txn, &coll, &filter_value, &filter, &shards, true).await?;
    if !multi {
        matched.truncate(1);
    }
    let own = txn.doc_writes();
    for doc in &matched {
        own.set(&coll, doc.get("_id").unwrap_or(&Value::Null), None);
    }
    Ok(obj(vec![("deleted", Value::Int(matched.len() as i64))]))
}

async fn find<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    command: &Value,
) -> Result<Value, Refusal> {
    let f = find_args(command, FIND_FIELDS).map_err(refusal)?;
    let shards = targets(ctx, &f.coll, &f.filter);
    let locked = lock_for_read(ctx, txn, &f.coll, &shards).await?;
    let mut docs = fetch(
        ctx,
        txn,
        &f.coll,
        &f.filter_value,
        &f.filter,
        &shards,
        locked,
    )
    .await?;
    if let Some((after, _)) = &f.cursor {
        let after = After::parse(&f.sort, after).map_err(|e| refusal(failed(e)))?;
        docs.retain(|doc| after.precedes(&f.sort, doc));
    }
    Ok(find_page(&f, docs))
}

async fn count<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    command: &Value,
) -> Result<Value, Refusal> {
    let f = find_args(command, &["filter"]).map_err(refusal)?;
    let shards = targets(ctx, &f.coll, &f.filter);
    let locked = lock_for_read(ctx, txn, &f.coll, &shards).await?;
    let docs = fetch(
        ctx,
        txn,
        &f.coll,
        &f.filter_value,
        &f.filter,
        &shards,
        locked,
    )
    .await?;
    Ok(obj(vec![("count", Value::Int(docs.len() as i64))]))
}

/// An aggregation over the documents as the transaction sees them: the leading `$match`
/// stages select them from the shards (with the transaction's own laid over), the rest of
/// the pipeline runs here.
async fn aggregate<T: TxnAccess>(
    ctx: &CoreContext,
    txn: &mut T,
    command: &Value,
) -> Result<Value, Refusal> {
    let (coll, filter_value, rest) = split_pipeline(command).map_err(refusal)?;
    let filter = Filter::parse(&filter_value).map_err(|e| refusal(bad(e.0)))?;
    let shards = targets(ctx, &coll, &filter);
    let locked = lock_for_read(ctx, txn, &coll, &shards).await?;
    let docs = fetch(ctx, txn, &coll, &filter_value, &filter, &shards, locked).await?;
    let rest = kvs_core::doc::aggregate::Pipeline::parse(&Value::Array(rest))
        .map_err(|e| refusal(bad(e.0)))?;
    let docs = rest.run(docs).map_err(|e| refusal(bad(e.0)))?;
    Ok(obj(vec![("documents", Value::Array(docs))]))
}
