//! The shard side of document reads: what a coordinator asks a shard about its documents
//! ([`DocRead`]) and how the shard answers it from its store. Runs on the shard's core, with
//! no knowledge of connections or of the coordinator (`documents`).

use kvs_core::doc::aggregate::GroupStage;
use kvs_core::doc::binary;
use kvs_core::doc::cursor::Sort;
use kvs_core::doc::query::Filter;
use kvs_core::doc::value::Value;
use kvs_core::log::LogFile;
use kvs_core::store::docs::{After, FindQuery};
use kvs_core::store::PagedStore;
use kvs_wire::ErrorCode;

/// A read a shard runs on its documents. Queries travel in the binary document encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocRead {
    /// `query`: `{"filter", "sort", "limit"?, "after"?}`.
    Find {
        coll: String,
        query: Vec<u8>,
        mode: FindMode,
    },
    /// The documents a filter matches, grouped in part when `group` (a `$group` stage) is
    /// given.
    Aggregate {
        coll: String,
        filter: Vec<u8>,
        group: Option<Vec<u8>>,
    },
    Indexes {
        coll: String,
    },
    Collections,
    /// Whether another document holds one of `doc`'s keys in a unique index.
    UniqueConflict {
        coll: String,
        doc: Vec<u8>,
    },
    /// The entries of an index: its keys and their `_id` keys.
    IndexKeys {
        coll: String,
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindMode {
    Documents,
    Count,
    Explain,
}

/// A document of `fields`, in order.
pub fn obj(fields: Vec<(&str, Value)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn reply(value: &Value) -> Vec<u8> {
    binary::to_bytes(value)
}

fn decode(bytes: &[u8]) -> Result<Value, Fail> {
    binary::from_bytes(bytes).map_err(|e| (ErrorCode::BadRequest, e.0))
}

fn parse_query(query: &Value) -> Result<FindQuery, String> {
    let filter = Filter::parse(query.get("filter").unwrap_or(&Value::Object(Vec::new())))
        .map_err(|e| e.0)?;
    let sort =
        Sort::parse(query.get("sort").unwrap_or(&Value::Object(Vec::new()))).map_err(|e| e.0)?;
    let limit = match query.get("limit") {
        Some(Value::Int(n)) if *n >= 0 => Some(*n as usize),
        _ => None,
    };
    let after = match query.get("after") {
        Some(token) => Some(After::parse(&sort, token).map_err(|e| e.message)?),
        None => None,
    };
    Ok(FindQuery {
        filter,
        sort,
        limit,
        after,
    })
}

/// Why a document read failed: the error code and a message naming the cause.
pub type Fail = (ErrorCode, String);

/// Runs a document read on one shard's store; the reply is a document in the binary
/// encoding.
///
/// `at`: a find or an aggregate reads the documents as they were at that snapshot (ADR 0023;
/// open from before until after the call); the other reads ignore it.
pub async fn read_docs<F: LogFile>(
    store: &PagedStore<F>,
    shard: u32,
    read: &DocRead,
    at: Option<u64>,
) -> Result<Vec<u8>, Fail> {
    let failed = |e: kvs_core::store::StoreError| {
        tracing::error!(shard, error = %e, "document read failed");
        (ErrorCode::Internal, format!("shard {shard}: {e}"))
    };
    Ok(match read {
        DocRead::Find { coll, query, mode } => {
            let query = parse_query(&decode(query)?).map_err(|e| (ErrorCode::BadRequest, e))?;
            let count_only = *mode == FindMode::Count;
            let (docs, count, stats) = store
                .doc_find(coll, &query, count_only, at)
                .await
                .map_err(failed)?;
            reply(&match mode {
                FindMode::Documents => obj(vec![("documents", Value::Array(docs))]),
                FindMode::Count => obj(vec![("count", Value::Int(count as i64))]),
                FindMode::Explain => {
                    let mut plan = stats.describe(docs.len() as u64);
                    if let Value::Object(fields) = &mut plan {
                        fields.insert(0, ("shard".to_string(), Value::Int(i64::from(shard))));
                    }
                    plan
                }
            })
        }
        DocRead::Aggregate {
            coll,
            filter,
            group,
        } => {
            let filter =
                Filter::parse(&decode(filter)?).map_err(|e| (ErrorCode::BadRequest, e.0))?;
            let query = FindQuery {
                filter,
                sort: Sort::default(),
                limit: None,
                after: None,
            };
            let (docs, _, _) = store
                .doc_find(coll, &query, false, at)
                .await
                .map_err(failed)?;
            let docs = match group {
                None => docs,
                Some(stage) => {
                    let stage = GroupStage::parse(&decode(stage)?)
                        .ok()
                        .flatten()
                        .ok_or_else(|| (ErrorCode::BadRequest, "not a $group".into()))?;
                    stage
                        .partial(&docs)
                        .map_err(|e| (ErrorCode::BadRequest, e.0))?
                }
            };
            reply(&obj(vec![("documents", Value::Array(docs))]))
        }
        DocRead::Indexes { coll } => {
            let found = store.doc_collection(coll).await.map_err(failed)?;
            let (exists, indexes, failed_builds) = match found {
                None => (false, Vec::new(), Vec::new()),
                Some(c) => (
                    true,
                    c.indexes.iter().map(|i| i.describe()).collect(),
                    c.failed
                        .iter()
                        .map(|(n, e)| {
                            obj(vec![
                                ("name", Value::String(n.clone())),
                                ("error", Value::String(e.clone())),
                            ])
                        })
                        .collect(),
                ),
            };
            reply(&obj(vec![
                ("exists", Value::Bool(exists)),
                ("indexes", Value::Array(indexes)),
                ("failed", Value::Array(failed_builds)),
            ]))
        }
        DocRead::Collections => {
            let names = store
                .doc_collections()
                .await
                .map_err(failed)?
                .into_iter()
                .map(|c| Value::String(c.name))
                .collect();
            reply(&obj(vec![("collections", Value::Array(names))]))
        }
        DocRead::IndexKeys { coll, name } => {
            let hex = |b: &[u8]| Value::String(b.iter().map(|x| format!("{x:02x}")).collect());
            let entries = store
                .doc_index_keys(coll, name)
                .await
                .map_err(failed)?
                .unwrap_or_default()
                .iter()
                .map(|(key, id)| Value::Array(vec![hex(key), hex(id)]))
                .collect();
            reply(&obj(vec![("entries", Value::Array(entries))]))
        }
        DocRead::UniqueConflict { coll, doc } => {
            let doc = decode(doc)?;
            match store
                .doc_unique_conflict(coll, &doc)
                .await
                .map_err(failed)?
            {
                Some(conflict) => reply(&obj(vec![("conflict", Value::String(conflict))])),
                None => reply(&obj(vec![])),
            }
        }
    })
}

// ---- waiting for shard replies in a task ----
