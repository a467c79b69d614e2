//! Unique indexes across shards: each shard checks its own documents atomically; this is
//! what the coordinator adds: its view of a collection's unique indexes, the check of new
//! keys against the other shards, and the retries when a shard's indexes changed meanwhile.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use kvs_core::doc::binary;
use kvs_core::doc::command::{DocCommand, DocErrorKind};
use kvs_core::doc::plan::keys_of;
use kvs_core::doc::value::{compare, Value};
use kvs_core::state::CommandResult;
use kvs_core::store::docs::{default_index_name, parse_index_key};
use kvs_wire::ErrorCode;

use crate::ask::ask_all;
use crate::doc_reads::DocRead;
use crate::documents::common::{bad, doc_reply, index_reads, write, Fail, Out};
use crate::documents::locks::{lock_collection, lock_keys, CollLock};
use crate::documents::placement::shard_of;
use crate::route::CoreContext;
use crate::shard::{ShardOp, ShardReply};

/// What a coordinator knows of a collection's unique indexes when it writes: on a node of
/// several shards, their names and keys (read from its own core's shard). Its writes carry
/// the names ([`DocCommand::Checked`]), so a shard that has a unique index the view lacks
/// refuses them, and the coordinator looks again and retries.
pub(super) struct UniqueView {
    /// None on a node of one shard: that shard checks every key itself, atomically.
    names: Option<Vec<String>>,
    pub(super) keys: Vec<Value>,
}

impl UniqueView {
    /// The view for attempt `attempt` of a write: the first reads this core's shard (the
    /// indexes are the same on every shard but while one is created or dropped); after a
    /// shard asked for a retry, the union of every shard's, after a short pause.
    pub(super) async fn read(ctx: &CoreContext, coll: &str, attempt: usize) -> Out<UniqueView> {
        if ctx.shard_count == 1 {
            return Ok(UniqueView {
                names: None,
                keys: Vec::new(),
            });
        }
        let shards: Vec<u32> = if attempt == 0 {
            vec![ctx.core as u32]
        } else {
            crate::runtime::wait(Duration::from_millis(attempt as u64)).await;
            (0..ctx.shard_count).collect()
        };
        let reads = index_reads(coll, shards);
        let mut names: Vec<String> = Vec::new();
        let mut keys = Vec::new();
        for reply in ask_all(ctx, reads).await {
            let reply = doc_reply(reply)?;
            let Some(Value::Array(indexes)) = reply.get("indexes") else {
                continue;
            };
            for index in indexes {
                if let (Some(Value::Bool(true)), Some(Value::String(name)), Some(key)) =
                    (index.get("unique"), index.get("name"), index.get("key"))
                {
                    if !names.contains(name) {
                        names.push(name.clone());
                        keys.push(key.clone());
                    }
                }
            }
        }
        Ok(UniqueView {
            names: Some(names),
            keys,
        })
    }

    /// Holds the collection exclusive (for an update) when there are unique indexes to
    /// check across shards.
    pub(super) async fn lock(&self, ctx: &Rc<CoreContext>, coll: &str) -> Out<Option<CollLock>> {
        if self.keys.is_empty() {
            Ok(None)
        } else {
            lock_collection(ctx, coll).await.map(Some)
        }
    }

    /// For an insert of `docs`: holds the collection shared and the unique keys the
    /// documents would take, when there are unique indexes to check across shards.
    pub(super) async fn lock_for_insert(
        &self,
        ctx: &Rc<CoreContext>,
        coll: &str,
        docs: &[Value],
    ) -> Out<Option<CollLock>> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for (i, key) in self.keys.iter().enumerate() {
            let spec = parse_index_key(key).map_err(|e| bad(e.message))?;
            for doc in docs {
                for k in keys_of(doc, &spec).0 {
                    // Tagged by collection and index name: views may list indexes in
                    // different orders.
                    let name = self.names.as_ref().and_then(|n| n.get(i));
                    let mut tagged = coll.as_bytes().to_vec();
                    tagged.push(0);
                    tagged.extend_from_slice(name.map_or(&b""[..], |n| n.as_bytes()));
                    tagged.push(0);
                    tagged.extend_from_slice(&k);
                    keys.push(tagged);
                }
            }
        }
        keys.sort();
        keys.dedup();
        lock_keys(ctx, coll, keys).await.map(Some)
    }

    /// The write to send: checked against this view on a node of several shards.
    pub(super) fn write(&self, command: DocCommand) -> ShardOp {
        match &self.names {
            None => write(&command),
            Some(names) => write(&DocCommand::Checked {
                coll: command.coll().to_string(),
                unique: names.clone(),
                command: Box::new(command),
            }),
        }
    }
}

/// Whether a shard refused a write because the writer's view of the unique indexes was
/// out of date.
pub(super) fn asks_retry(reply: &ShardReply) -> bool {
    matches!(
        reply,
        ShardReply::Written(CommandResult::DocumentRefused {
            kind: DocErrorKind::Retry,
            ..
        })
    )
}

/// Tries a write this many times while shards ask for a retry (a unique index appeared).
pub(super) const WRITE_ATTEMPTS: usize = 10;

pub(super) fn unfinished(coll: &str) -> Fail {
    Fail {
        code: ErrorCode::Internal,
        message: format!("the unique indexes of {coll} kept changing; the write did not finish"),
    }
}

/// Checks new versions of documents against the unique indexes of the other shards, and
/// against each other (the shards check their own documents).
pub(super) async fn check_unique_across(
    ctx: &CoreContext,
    coll: &str,
    uniques: &[Value],
    docs: &[Value],
) -> Out<()> {
    for key in uniques {
        let spec = parse_index_key(key).map_err(|e| bad(e.message))?;
        let mut owners: HashMap<Vec<u8>, &Value> = HashMap::new();
        for doc in docs {
            let id = doc.get("_id").unwrap_or(&Value::Null);
            for k in keys_of(doc, &spec).0 {
                if let Some(other) = owners.insert(k, id) {
                    if compare(other, id) != std::cmp::Ordering::Equal {
                        return Err(Fail {
                            code: ErrorCode::DuplicateKey,
                            message: format!(
                                "duplicate key in unique index {} of {coll}: _id {other} and _id {id}",
                                default_index_name(key)
                            ),
                        });
                    }
                }
            }
        }
    }
    let mut ops = Vec::new();
    for doc in docs {
        let home = shard_of(ctx, coll, doc.get("_id").unwrap_or(&Value::Null));
        for shard in (0..ctx.shard_count).filter(|s| *s != home) {
            let read = DocRead::UniqueConflict {
                coll: coll.to_string(),
                doc: binary::to_bytes(doc),
            };
            ops.push((shard, ShardOp::DocRead(read)));
        }
    }
    for reply in ask_all(ctx, ops).await {
        if let Some(Value::String(conflict)) = doc_reply(reply)?.get("conflict") {
            return Err(Fail {
                code: ErrorCode::DuplicateKey,
                message: conflict.clone(),
            });
        }
    }
    Ok(())
}

/// Fails with DUPLICATE_KEY when two shards' entries of index `name` share a key.
pub(super) async fn keys_unique_across(ctx: &CoreContext, coll: &str, name: &str) -> Out<()> {
    let ops = (0..ctx.shard_count)
        .map(|s| {
            let read = DocRead::IndexKeys {
                coll: coll.to_string(),
                name: name.to_string(),
            };
            (s, ShardOp::DocRead(read))
        })
        .collect();
    let mut owners: HashMap<String, String> = HashMap::new();
    for reply in ask_all(ctx, ops).await {
        let Some(Value::Array(entries)) = doc_reply(reply)?.get("entries").cloned() else {
            continue;
        };
        for entry in entries {
            let Value::Array(pair) = entry else { continue };
            let [Value::String(key), Value::String(id)] = pair.as_slice() else {
                continue;
            };
            if let Some(other) = owners.insert(key.clone(), id.clone()) {
                if other != *id {
                    return Err(Fail {
                        code: ErrorCode::DuplicateKey,
                        message: format!(
                            "index {name} was not built: two documents of {coll} share a key of the unique index"
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}
