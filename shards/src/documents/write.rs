//! The write commands: insert, update (with upsert) and delete, each sent to the shards its
//! documents or filter place it on, with the cross-shard unique checks and retries of
//! `unique` around it.

use std::rc::Rc;

use kvs_core::doc::binary;
use kvs_core::doc::command::DocCommand;
use kvs_core::doc::query::Filter;
use kvs_core::doc::update::Update;
use kvs_core::doc::value::Value;
use kvs_core::store::docs::upsert_document;

use crate::ask::{ask, ask_all};
use crate::doc_reads::{obj, FindMode};
use crate::documents::common::{
    bad, doc_reply, docs_of, find_reads, int_of, write, Args, Fail, Out,
};
use crate::documents::placement::{new_id, pinned_id, shard_of, targets};
use crate::documents::unique::{
    asks_retry, check_unique_across, unfinished, UniqueView, WRITE_ATTEMPTS,
};
use crate::route::CoreContext;

/// Adds what other shards did to a failure's message.
fn with_done(mut fail: Fail, done: i64, what: &str) -> Fail {
    if done > 0 {
        fail.message = format!("{} ({done} documents {what} on other shards)", fail.message);
    }
    fail
}

/// An insert command's collection and documents, each with its `_id` first (a new one for a
/// document that has none). Shared with the insert inside a transaction (`in_txn`).
pub(super) fn insert_args(command: &Value) -> Out<(String, Vec<Value>)> {
    let args = Args::new(command, &["documents"])?;
    let coll = args.coll()?;
    let Some(Value::Array(given)) = args.get("documents") else {
        return Err(bad("insert: documents must be an array of documents"));
    };
    if given.is_empty() {
        return Err(bad("insert: no documents"));
    }
    let mut docs = Vec::with_capacity(given.len());
    for (i, doc) in given.iter().enumerate() {
        let Value::Object(fields) = doc else {
            return Err(bad(format!(
                "insert: document {i} is not a document: {doc}"
            )));
        };
        let id = match doc.get("_id") {
            Some(Value::Array(_)) => {
                return Err(bad(format!("insert: document {i}: _id cannot be an array")))
            }
            Some(id) => id.clone(),
            None => new_id(),
        };
        let mut out = vec![("_id".to_string(), id)];
        out.extend(fields.iter().filter(|(k, _)| k != "_id").cloned());
        docs.push(Value::Object(out));
    }
    Ok((coll, docs))
}

pub(super) async fn insert(ctx: &Rc<CoreContext>, command: &Value) -> Out<Value> {
    let (coll, docs) = insert_args(command)?;
    let ids: Vec<Value> = docs
        .iter()
        .map(|d| d.get("_id").cloned().unwrap_or(Value::Null))
        .collect();
    let mut pending: Vec<(u32, Vec<Value>)> = Vec::new();
    for doc in docs {
        let shard = shard_of(ctx, &coll, doc.get("_id").unwrap_or(&Value::Null));
        match pending.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, docs)) => docs.push(doc),
            None => pending.push((shard, vec![doc])),
        }
    }
    let mut inserted = 0;
    let mut failure = None;
    for attempt in 0..WRITE_ATTEMPTS {
        let view = UniqueView::read(ctx, &coll, attempt).await?;
        let docs: Vec<Value> = pending.iter().flat_map(|(_, d)| d.clone()).collect();
        let _lock = view.lock_for_insert(ctx, &coll, &docs).await?;
        if !view.keys.is_empty() {
            if let Err(fail) = check_unique_across(ctx, &coll, &view.keys, &docs).await {
                return Err(with_done(fail, inserted, "inserted"));
            }
        }
        let ops = pending
            .iter()
            .map(|(shard, docs)| {
                let command = DocCommand::Insert {
                    coll: coll.clone(),
                    docs: docs.clone(),
                };
                (*shard, view.write(command))
            })
            .collect();
        let mut retry = Vec::new();
        for (part, reply) in pending.into_iter().zip(ask_all(ctx, ops).await) {
            if asks_retry(&reply) {
                retry.push(part);
                continue;
            }
            match doc_reply(reply) {
                Ok(r) => inserted += int_of(&r, "inserted"),
                Err(fail) => failure = failure.or(Some(fail)),
            }
        }
        pending = retry;
        if pending.is_empty() {
            break;
        }
    }
    if !pending.is_empty() {
        failure = failure.or(Some(unfinished(&coll)));
    }
    if let Some(fail) = failure {
        return Err(with_done(fail, inserted, "inserted"));
    }
    Ok(obj(vec![
        ("inserted", Value::Int(inserted)),
        ("insertedIds", Value::Array(ids)),
    ]))
}

/// An update command's parts.
pub(super) struct UpdateArgs {
    pub(super) coll: String,
    pub(super) filter_value: Value,
    pub(super) filter: Filter,
    update_value: Value,
    pub(super) update: Update,
    pub(super) upsert: bool,
}

impl UpdateArgs {
    fn command(&self, filter: &Value, multi: bool, upsert: Option<Value>) -> DocCommand {
        DocCommand::Update {
            coll: self.coll.clone(),
            filter: filter.clone(),
            update: self.update_value.clone(),
            multi,
            upsert,
        }
    }

    /// The document an upsert would insert, and the shard it belongs to.
    fn upsert_document(&self, ctx: &CoreContext) -> Out<(Value, u32)> {
        let id = pinned_id(&self.filter).unwrap_or_else(new_id);
        let doc = upsert_document(&self.filter, &self.update, id).map_err(|e| bad(e.message))?;
        let home = shard_of(ctx, &self.coll, doc.get("_id").unwrap_or(&Value::Null));
        Ok((doc, home))
    }
}

fn counts(matched: i64, modified: i64) -> Vec<(&'static str, Value)> {
    vec![
        ("matched", Value::Int(matched)),
        ("modified", Value::Int(modified)),
    ]
}

/// An update command's parts, and whether it updates every match (`multi`). Shared with the
/// update inside a transaction (`in_txn`).
pub(super) fn update_args(command: &Value) -> Out<(UpdateArgs, bool)> {
    let args = Args::new(command, &["filter", "u", "upsert", "multi"])?;
    let coll = args.coll()?;
    let filter_value = args.doc("filter")?;
    let filter = Filter::parse(&filter_value).map_err(|e| bad(e.0))?;
    let Some(update_value) = args.get("u") else {
        return Err(bad("update: no update document (field \"u\")"));
    };
    let update = Update::parse(update_value).map_err(|e| bad(e.0))?;
    let (upsert, multi) = (args.flag("upsert")?, args.flag("multi")?);
    if multi && matches!(update, Update::Replace(_)) {
        return Err(bad(
            "update: a replacement document updates one document; use operators with multi",
        ));
    }
    let u = UpdateArgs {
        coll,
        filter_value,
        filter,
        update_value: update_value.clone(),
        update,
        upsert,
    };
    Ok((u, multi))
}

pub(super) async fn update(ctx: &Rc<CoreContext>, command: &Value) -> Out<Value> {
    let (u, multi) = update_args(command)?;
    if !multi {
        return update_one(ctx, &u).await;
    }
    let reply = update_many(ctx, &u).await?;
    if u.upsert && int_of(&reply, "matched") == 0 {
        // Nothing matched anywhere: the upsert inserts its one document.
        return update_one(ctx, &u).await;
    }
    Ok(reply)
}

/// What an update would make of the documents it matches now (for the unique check).
async fn updated_versions(
    ctx: &CoreContext,
    u: &UpdateArgs,
    shards: &[u32],
    limit: i64,
    only_first: bool,
) -> Out<(Vec<Value>, Vec<Value>)> {
    let query = binary::to_bytes(&obj(vec![
        ("filter", u.filter_value.clone()),
        ("limit", Value::Int(limit)),
    ]));
    let mut matched = Vec::new();
    let reads = find_reads(&u.coll, shards, &query, FindMode::Documents);
    for reply in ask_all(ctx, reads).await {
        matched.extend(docs_of(doc_reply(reply)?));
    }
    if only_first {
        matched.truncate(1);
    }
    let mut new_docs = Vec::with_capacity(matched.len());
    for doc in &matched {
        let mut new = doc.clone();
        u.update.apply(&mut new).map_err(|e| bad(e.0))?;
        new_docs.push(new);
    }
    Ok((matched, new_docs))
}

/// `--many`: every shard at once; a shard that asks for a retry is checked and asked
/// again, alone (the others' changes stand).
async fn update_many(ctx: &Rc<CoreContext>, u: &UpdateArgs) -> Out<Value> {
    let mut pending = targets(ctx, &u.coll, &u.filter);
    let (mut matched, mut modified) = (0, 0);
    let mut failure = None;
    for attempt in 0..WRITE_ATTEMPTS {
        let view = UniqueView::read(ctx, &u.coll, attempt).await?;
        let _lock = view.lock(ctx, &u.coll).await?;
        if !view.keys.is_empty() {
            let (_, new_docs) = updated_versions(ctx, u, &pending, i64::MAX, false).await?;
            if let Err(fail) = check_unique_across(ctx, &u.coll, &view.keys, &new_docs).await {
                return Err(with_done(fail, modified, "modified"));
            }
        }
        let ops = pending
            .iter()
            .map(|&s| (s, view.write(u.command(&u.filter_value, true, None))))
            .collect();
        let mut retry = Vec::new();
        for (shard, reply) in pending.into_iter().zip(ask_all(ctx, ops).await) {
            if asks_retry(&reply) {
                retry.push(shard);
                continue;
            }
            match doc_reply(reply) {
                Ok(r) => {
                    matched += int_of(&r, "matched");
                    modified += int_of(&r, "modified");
                }
                Err(fail) => failure = failure.or(Some(fail)),
            }
        }
        pending = retry;
        if pending.is_empty() {
            break;
        }
    }
    if !pending.is_empty() {
        failure = failure.or(Some(unfinished(&u.coll)));
    }
    match failure {
        Some(fail) => Err(with_done(fail, modified, "modified")),
        None => Ok(obj(counts(matched, modified))),
    }
}

/// One document: the shards one after another until one matches; with unique indexes to
/// check across shards, the document checked is the one written (its `_id` joins the
/// filter). No match and `upsert`: the new document goes to its own shard.
async fn update_one(ctx: &Rc<CoreContext>, u: &UpdateArgs) -> Out<Value> {
    let shards = targets(ctx, &u.coll, &u.filter);
    'attempt: for attempt in 0..WRITE_ATTEMPTS {
        let view = UniqueView::read(ctx, &u.coll, attempt).await?;
        let _lock = view.lock(ctx, &u.coll).await?;
        if !view.keys.is_empty() {
            let (matched, new_docs) = updated_versions(ctx, u, &shards, 1, true).await?;
            if let Some(doc) = matched.first() {
                check_unique_across(ctx, &u.coll, &view.keys, &new_docs[..1]).await?;
                let id = doc.get("_id").cloned().unwrap_or(Value::Null);
                let pinned = obj(vec![(
                    "$and",
                    Value::Array(vec![
                        u.filter_value.clone(),
                        obj(vec![("_id", obj(vec![("$eq", id.clone())]))]),
                    ]),
                )]);
                let home = shard_of(ctx, &u.coll, &id);
                let reply = ask(ctx, home, view.write(u.command(&pinned, false, None))).await;
                if asks_retry(&reply) {
                    continue 'attempt;
                }
                let r = doc_reply(reply)?;
                if int_of(&r, "matched") == 0 {
                    // Changed or gone since it was read: look again.
                    continue 'attempt;
                }
                return Ok(r);
            }
        } else {
            for &shard in &shards {
                let reply = ask(
                    ctx,
                    shard,
                    view.write(u.command(&u.filter_value, false, None)),
                )
                .await;
                if asks_retry(&reply) {
                    // Nothing was changed yet: start again with a fresh view.
                    continue 'attempt;
                }
                let r = doc_reply(reply)?;
                if int_of(&r, "matched") > 0 {
                    return Ok(r);
                }
            }
        }
        if !u.upsert {
            return Ok(obj(counts(0, 0)));
        }
        let (doc, home) = u.upsert_document(ctx)?;
        if !view.keys.is_empty() {
            check_unique_across(ctx, &u.coll, &view.keys, std::slice::from_ref(&doc)).await?;
        }
        let id = doc.get("_id").cloned().unwrap_or(Value::Null);
        let reply = ask(
            ctx,
            home,
            view.write(u.command(&u.filter_value, false, Some(id))),
        )
        .await;
        if asks_retry(&reply) {
            continue 'attempt;
        }
        let r = doc_reply(reply)?;
        let mut out = counts(int_of(&r, "matched"), int_of(&r, "modified"));
        if let Some(id) = r.get("upserted") {
            out.push(("upserted", id.clone()));
        }
        return Ok(obj(out));
    }
    Err(unfinished(&u.coll))
}

pub(super) async fn delete(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let args = Args::new(command, &["filter", "multi"])?;
    let coll = args.coll()?;
    let filter_value = args.doc("filter")?;
    let filter = Filter::parse(&filter_value).map_err(|e| bad(e.0))?;
    let multi = args.flag("multi")?;
    let command = write(&DocCommand::Delete {
        coll: coll.clone(),
        filter: filter_value,
        multi,
    });
    let shards = targets(ctx, &coll, &filter);
    let mut deleted = 0;
    if multi {
        let ops = shards.iter().map(|&s| (s, command.clone())).collect();
        let mut failure = None;
        for reply in ask_all(ctx, ops).await {
            match doc_reply(reply) {
                Ok(r) => deleted += int_of(&r, "deleted"),
                Err(fail) => failure = failure.or(Some(fail)),
            }
        }
        if let Some(fail) = failure {
            return Err(with_done(fail, deleted, "deleted"));
        }
    } else {
        for shard in shards {
            deleted += int_of(
                &doc_reply(ask(ctx, shard, command.clone()).await)?,
                "deleted",
            );
            if deleted > 0 {
                break;
            }
        }
    }
    Ok(obj(vec![("deleted", Value::Int(deleted))]))
}
