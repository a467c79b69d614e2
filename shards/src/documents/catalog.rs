//! The commands on the catalogue, sent to every shard alike: createIndex (which waits for
//! every shard's build and checks a unique index's keys across shards), dropIndex,
//! listIndexes, listCollections and drop.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use kvs_core::doc::command::{check_name, DocCommand};
use kvs_core::doc::value::Value;
use kvs_core::store::docs::{default_index_name, parse_index_key};
use kvs_wire::ErrorCode;

use crate::ask::ask_all;
use crate::doc_reads::{obj, DocRead};
use crate::documents::common::{bad, doc_reply, index_reads, write, Args, Fail, Out};
use crate::documents::locks::lock_collection;
use crate::documents::unique::keys_unique_across;
use crate::route::CoreContext;
use crate::shard::ShardOp;

pub(super) async fn create_index(ctx: &Rc<CoreContext>, command: &Value) -> Out<Value> {
    let args = Args::new(command, &["key", "name", "unique"])?;
    let coll = args.coll()?;
    let Some(key) = args.get("key") else {
        return Err(bad("createIndex: no key document"));
    };
    parse_index_key(key).map_err(|e| bad(e.message))?;
    let name = match args.get("name") {
        None => default_index_name(key),
        Some(Value::String(name)) => name.clone(),
        Some(other) => return Err(bad(format!("createIndex: bad name {other}"))),
    };
    check_name("index", &name).map_err(|e| bad(e.message))?;
    let unique = args.flag("unique")?;
    let command = write(&DocCommand::CreateIndex {
        coll: coll.clone(),
        name: name.clone(),
        key: key.clone(),
        unique,
    });
    let all: Vec<u32> = (0..ctx.shard_count).collect();
    let mut created_on = Vec::new();
    let mut failure = None;
    for (&shard, reply) in all
        .iter()
        .zip(ask_all(ctx, all.iter().map(|&s| (s, command.clone())).collect()).await)
    {
        match doc_reply(reply) {
            Ok(r) if r.get("created") == Some(&Value::Bool(true)) => created_on.push(shard),
            Ok(_) => {}
            Err(fail) => failure = failure.or(Some(fail)),
        }
    }
    if let Some(fail) = failure {
        // Refused somewhere (another index of that name, say): take back what this call
        // created elsewhere, so no shard keeps an index the others lack.
        let drop = write(&DocCommand::DropIndex {
            coll: coll.clone(),
            name: name.clone(),
        });
        ask_all(ctx, created_on.iter().map(|&s| (s, drop.clone())).collect()).await;
        return Err(fail);
    }
    let created = !created_on.is_empty();
    // Wait until every shard has built it (writes go on meanwhile).
    loop {
        let ops = index_reads(&coll, all.iter().copied());
        let mut ready = true;
        for reply in ask_all(ctx, ops).await {
            let r = doc_reply(reply)?;
            let find = |list: &str| match r.get(list) {
                Some(Value::Array(items)) => items
                    .iter()
                    .find(|i| i.get("name") == Some(&Value::String(name.clone())))
                    .cloned(),
                _ => None,
            };
            match (find("indexes"), find("failed")) {
                (Some(index), _) => {
                    ready &= index.get("state") == Some(&Value::String("ready".into()))
                }
                (None, Some(failed)) => {
                    // Drop what other shards built, so the index is gone everywhere.
                    let drop = write(&DocCommand::DropIndex {
                        coll: coll.clone(),
                        name: name.clone(),
                    });
                    ask_all(ctx, all.iter().map(|&s| (s, drop.clone())).collect()).await;
                    let reason = match failed.get("error") {
                        Some(Value::String(e)) => e.clone(),
                        _ => "index build failed".into(),
                    };
                    return Err(Fail {
                        code: ErrorCode::DuplicateKey,
                        message: format!("index {name} was not built: {reason}"),
                    });
                }
                (None, None) => {
                    return Err(Fail {
                        code: ErrorCode::NotFound,
                        message: format!("index {name} was dropped while it was being built"),
                    })
                }
            }
        }
        if ready {
            if unique && ctx.shard_count > 1 {
                // Each shard built it over its own documents: look for one key on two
                // shards, with writes held off meanwhile.
                let _lock = lock_collection(ctx, &coll).await?;
                if let Err(fail) = keys_unique_across(ctx, &coll, &name).await {
                    let drop = write(&DocCommand::DropIndex {
                        coll: coll.clone(),
                        name: name.clone(),
                    });
                    ask_all(ctx, all.iter().map(|&s| (s, drop.clone())).collect()).await;
                    return Err(fail);
                }
            }
            return Ok(obj(vec![
                ("name", Value::String(name)),
                ("created", Value::Bool(created)),
            ]));
        }
        if ctx.stopping.get() {
            return Err(Fail {
                code: ErrorCode::ShuttingDown,
                message: format!("index {name} is still building; the node is stopping"),
            });
        }
        crate::runtime::wait(Duration::from_millis(10)).await;
    }
}

pub(super) async fn drop_index(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let args = Args::new(command, &["name"])?;
    let coll = args.coll()?;
    let Some(Value::String(name)) = args.get("name") else {
        return Err(bad("dropIndex: name must be a string"));
    };
    let command = write(&DocCommand::DropIndex {
        coll: coll.clone(),
        name: name.clone(),
    });
    let mut dropped = false;
    let mut failure = None;
    for reply in ask_all(
        ctx,
        (0..ctx.shard_count).map(|s| (s, command.clone())).collect(),
    )
    .await
    {
        match doc_reply(reply) {
            Ok(_) => dropped = true,
            Err(fail) if fail.code == ErrorCode::NotFound => failure = Some(fail),
            Err(fail) => return Err(fail),
        }
    }
    match (dropped, failure) {
        (false, Some(fail)) => Err(fail),
        _ => Ok(obj(vec![("dropped", Value::Bool(true))])),
    }
}

pub(super) async fn list_indexes(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let args = Args::new(command, &[])?;
    let coll = args.coll()?;
    let ops = index_reads(&coll, 0..ctx.shard_count);
    let mut exists = false;
    // By name: the definition, ready on every shard, multikey on any.
    let mut merged: Vec<(String, Value, bool, bool)> = Vec::new();
    for reply in ask_all(ctx, ops).await {
        let r = doc_reply(reply)?;
        exists |= r.get("exists") == Some(&Value::Bool(true));
        let Some(Value::Array(indexes)) = r.get("indexes") else {
            continue;
        };
        for index in indexes {
            let Some(Value::String(name)) = index.get("name") else {
                continue;
            };
            let ready = index.get("state") == Some(&Value::String("ready".into()));
            let multikey = index.get("multikey") == Some(&Value::Bool(true));
            match merged.iter_mut().find(|m| &m.0 == name) {
                Some(m) => {
                    m.2 &= ready;
                    m.3 |= multikey;
                }
                None => merged.push((name.clone(), index.clone(), ready, multikey)),
            }
        }
    }
    if !exists {
        return Err(Fail {
            code: ErrorCode::NotFound,
            message: format!("no collection {coll}"),
        });
    }
    let mut out = vec![obj(vec![
        ("name", Value::String("_id_".into())),
        ("key", obj(vec![("_id", Value::Int(1))])),
        ("unique", Value::Bool(true)),
        ("state", Value::String("ready".into())),
    ])];
    for (name, index, ready, multikey) in merged {
        out.push(obj(vec![
            ("name", Value::String(name)),
            ("key", index.get("key").cloned().unwrap_or(Value::Null)),
            (
                "unique",
                index.get("unique").cloned().unwrap_or(Value::Bool(false)),
            ),
            ("multikey", Value::Bool(multikey)),
            (
                "state",
                Value::String(if ready { "ready" } else { "building" }.into()),
            ),
        ]));
    }
    Ok(obj(vec![("indexes", Value::Array(out))]))
}

pub(super) async fn list_collections(ctx: &CoreContext) -> Out<Value> {
    let ops = (0..ctx.shard_count)
        .map(|s| (s, ShardOp::DocRead(DocRead::Collections)))
        .collect();
    let mut names = BTreeSet::new();
    for reply in ask_all(ctx, ops).await {
        if let Some(Value::Array(found)) = doc_reply(reply)?.get("collections") {
            for name in found {
                if let Value::String(name) = name {
                    names.insert(name.clone());
                }
            }
        }
    }
    Ok(obj(vec![(
        "collections",
        Value::Array(names.into_iter().map(Value::String).collect()),
    )]))
}

pub(super) async fn drop_collection(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let args = Args::new(command, &[])?;
    let coll = args.coll()?;
    let command = write(&DocCommand::Drop { coll });
    let mut dropped = false;
    for reply in ask_all(
        ctx,
        (0..ctx.shard_count).map(|s| (s, command.clone())).collect(),
    )
    .await
    {
        dropped |= doc_reply(reply)?.get("dropped") == Some(&Value::Bool(true));
    }
    Ok(obj(vec![("dropped", Value::Bool(dropped))]))
}
