//! The read commands: find (pages merged from every shard asked, with cursors), count,
//! explain, and aggregate (leading `$match` stages and a partial `$group` on the shards, the
//! rest of the pipeline here).

use kvs_core::doc::aggregate::{GroupStage, Pipeline};
use kvs_core::doc::binary;
use kvs_core::doc::cursor::{Projection, Sort};
use kvs_core::doc::query::Filter;
use kvs_core::doc::value::Value;
use kvs_core::store::docs::{order, After};
use kvs_wire::ErrorCode;

use crate::doc_reads::{obj, DocRead, FindMode};
use crate::documents::common::{bad, doc_reply, docs_of, find_reads, int_of, Args, Fail, Out};
use crate::documents::placement::targets;
use crate::route::CoreContext;
use crate::shard::ShardOp;

/// Documents one find page holds unless the command says otherwise.
const BATCH_SIZE_DEFAULT: usize = 1000;
/// JSON bytes of documents after which a find page is cut (the rest goes to the cursor).
const PAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The parts of a find-like command.
pub(super) struct FindArgs {
    pub(super) coll: String,
    pub(super) filter_value: Value,
    pub(super) filter: Filter,
    pub(super) sort_value: Value,
    pub(super) sort: Sort,
    pub(super) skip: usize,
    pub(super) limit: Option<usize>,
    pub(super) projection: Option<Projection>,
    pub(super) batch: usize,
    pub(super) cursor: Option<(Value, Option<usize>)>,
}

pub(super) fn find_args(command: &Value, allowed: &[&str]) -> Out<FindArgs> {
    let args = Args::new(command, allowed)?;
    let coll = args.coll()?;
    let filter_value = args.doc("filter")?;
    let filter = Filter::parse(&filter_value).map_err(|e| bad(e.0))?;
    let sort_value = args.doc("sort")?;
    let sort = Sort::parse(&sort_value).map_err(|e| bad(e.0))?;
    let projection = match args.get("projection") {
        None => None,
        Some(p) => Projection::parse(p).map_err(|e| bad(e.0))?,
    };
    // MongoDB reads a limit of 0 as no limit.
    let limit = args.count("limit")?.filter(|l| *l > 0);
    let batch = args
        .count("batchSize")?
        .filter(|b| *b > 0)
        .unwrap_or(BATCH_SIZE_DEFAULT);
    let cursor = match args.get("cursor") {
        None | Some(Value::Null) => None,
        Some(c) => {
            let Some(after) = c.get("after") else {
                return Err(bad(
                    "find: a cursor is {\"after\": {...}, \"remaining\": n}",
                ));
            };
            // Checked here, so a damaged cursor is a BAD_REQUEST before any shard.
            After::parse(&sort, after).map_err(|e| bad(format!("find: cursor: {}", e.message)))?;
            let remaining = match c.get("remaining") {
                None | Some(Value::Null) => None,
                Some(Value::Int(n)) if *n > 0 => Some(*n as usize),
                Some(other) => return Err(bad(format!("find: bad cursor remaining {other}"))),
            };
            Some((after.clone(), remaining))
        }
    };
    Ok(FindArgs {
        coll,
        filter_value,
        filter,
        sort_value,
        sort,
        skip: args.count("skip")?.unwrap_or(0),
        limit,
        projection,
        batch,
        cursor,
    })
}

fn query_bytes(f: &FindArgs, limit: Option<usize>, after: Option<&Value>) -> Vec<u8> {
    let mut fields = vec![
        ("filter", f.filter_value.clone()),
        ("sort", f.sort_value.clone()),
    ];
    if let Some(limit) = limit {
        fields.push(("limit", Value::Int(limit.min(i64::MAX as usize) as i64)));
    }
    if let Some(after) = after {
        fields.push(("after", after.clone()));
    }
    binary::to_bytes(&obj(fields))
}

/// The fields a find takes.
pub(super) const FIND_FIELDS: &[&str] = &[
    "filter",
    "sort",
    "skip",
    "limit",
    "projection",
    "batchSize",
    "cursor",
];

/// Where a find page starts: the cursor's position (or none), how many documents may still
/// come (None: all), and how many to skip first.
pub(super) fn page_start(f: &FindArgs) -> (Option<&Value>, Option<usize>, usize) {
    match &f.cursor {
        Some((after, remaining)) => (Some(after), *remaining, 0),
        None => (None, f.limit, f.skip),
    }
}

pub(super) async fn find(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let f = find_args(command, FIND_FIELDS)?;
    let (after, remaining, skip) = page_start(&f);
    let want = remaining.unwrap_or(usize::MAX).min(f.batch);
    let per_shard = skip.saturating_add(want).saturating_add(1);
    let query = query_bytes(&f, Some(per_shard), after);
    let shards = targets(ctx, &f.coll, &f.filter);
    let ops = find_reads(&f.coll, &shards, &query, FindMode::Documents);
    let mut docs = Vec::new();
    for reply in crate::snapshot_read::ask_all_at(ctx, ops).await {
        docs.extend(docs_of(doc_reply(reply)?));
    }
    Ok(find_page(&f, docs))
}

/// Cuts a find's page from `docs` (those after the cursor, if any): in order, skipped,
/// limited, projected, with a cursor when more remain.
pub(super) fn find_page(f: &FindArgs, mut docs: Vec<Value>) -> Value {
    let (_, remaining, skip) = page_start(f);
    let want = remaining.unwrap_or(usize::MAX).min(f.batch);
    docs.sort_by(|a, b| order(&f.sort, a, b));
    let available = docs.len().saturating_sub(skip);
    let mut page = Vec::new();
    let mut bytes = 0;
    for doc in docs.into_iter().skip(skip).take(want) {
        bytes += doc.to_string().len();
        page.push(doc);
        if bytes >= PAGE_BYTES_MAX {
            break;
        }
    }
    let more = available > page.len() && remaining.is_none_or(|r| r > page.len());
    let cursor = match page.last() {
        Some(last) if more => {
            let token = After::token(&f.sort, last);
            let left = remaining.map_or(Value::Null, |r| Value::Int((r - page.len()) as i64));
            Some(obj(vec![("after", token), ("remaining", left)]))
        }
        _ => None,
    };
    let page = match &f.projection {
        Some(p) => page.iter().map(|d| p.apply(d)).collect(),
        None => page,
    };
    let mut out = vec![("documents", Value::Array(page))];
    if let Some(cursor) = cursor {
        out.push(("cursor", cursor));
    }
    obj(out)
}

pub(super) async fn count(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let f = find_args(command, &["filter"])?;
    let query = query_bytes(&f, None, None);
    let shards = targets(ctx, &f.coll, &f.filter);
    let ops = find_reads(&f.coll, &shards, &query, FindMode::Count);
    let mut n = 0;
    for reply in crate::snapshot_read::ask_all_at(ctx, ops).await {
        n += int_of(&doc_reply(reply)?, "count");
    }
    Ok(obj(vec![("count", Value::Int(n))]))
}

pub(super) async fn explain(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let f = find_args(command, &["filter", "sort", "skip", "limit"])?;
    let limit = f.limit.map(|l| l.saturating_add(f.skip));
    let query = query_bytes(&f, limit, None);
    let shards = targets(ctx, &f.coll, &f.filter);
    let ops = find_reads(&f.coll, &shards, &query, FindMode::Explain);
    let mut plans = Vec::new();
    let (mut keys, mut docs, mut returned) = (0, 0, 0);
    for reply in crate::snapshot_read::ask_all_at(ctx, ops).await {
        let plan = doc_reply(reply)?;
        keys += int_of(&plan, "keysExamined");
        docs += int_of(&plan, "docsExamined");
        returned += int_of(&plan, "nReturned");
        plans.push(plan);
    }
    Ok(obj(vec![
        ("collection", Value::String(f.coll.clone())),
        ("filter", f.filter_value.clone()),
        (
            "shardsAsked",
            Value::Array(shards.iter().map(|&s| Value::Int(i64::from(s))).collect()),
        ),
        ("keysExamined", Value::Int(keys)),
        ("docsExamined", Value::Int(docs)),
        ("nReturned", Value::Int(returned)),
        ("shards", Value::Array(plans)),
    ]))
}

pub(super) async fn aggregate(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let (coll, filter, mut rest) = split_pipeline(command)?;
    let parsed_filter = Filter::parse(&filter).map_err(|e| bad(e.0))?;
    // A $group right after the $match stages runs in parts on the shards, unless its
    // result depends on the order of the documents (which parts would change).
    let group = match rest.first() {
        Some(stage) => GroupStage::parse(stage)
            .map_err(|e| bad(e.0))?
            .filter(|g| !g.order_sensitive()),
        None => None,
    };
    let group_bytes = group.as_ref().map(|_| binary::to_bytes(&rest[0]));
    if group.is_some() {
        rest.remove(0);
    }
    let ops = targets(ctx, &coll, &parsed_filter)
        .into_iter()
        .map(|shard| {
            let read = DocRead::Aggregate {
                coll: coll.clone(),
                filter: binary::to_bytes(&filter),
                group: group_bytes.clone(),
            };
            (shard, ShardOp::DocRead(read))
        })
        .collect();
    let mut docs = Vec::new();
    for reply in crate::snapshot_read::ask_all_at(ctx, ops).await {
        docs.extend(docs_of(doc_reply(reply)?));
    }
    if let Some(group) = group {
        docs = group.combine(&docs).map_err(|e| Fail {
            code: ErrorCode::Internal,
            message: e.0,
        })?;
    } else {
        // Without a $sort, documents come in _id order, as one shard would give them.
        docs.sort_by(|a, b| order(&Sort::default(), a, b));
    }
    let rest = Pipeline::parse(&Value::Array(rest)).map_err(|e| bad(e.0))?;
    let docs = rest.run(docs).map_err(|e| bad(e.0))?;
    Ok(obj(vec![("documents", Value::Array(docs))]))
}

/// An aggregate command's collection, the filter of its leading `$match` stages (all of
/// them at once) and the stages after them. The whole pipeline is parsed first: a bad stage
/// anywhere is a BAD_REQUEST before any work.
pub(super) fn split_pipeline(command: &Value) -> Out<(String, Value, Vec<Value>)> {
    let args = Args::new(command, &["pipeline"])?;
    let coll = args.coll()?;
    let Some(pipeline @ Value::Array(stages)) = args.get("pipeline") else {
        return Err(bad("aggregate: pipeline must be an array of stages"));
    };
    Pipeline::parse(pipeline).map_err(|e| bad(e.0))?;
    let mut matches = Vec::new();
    let mut rest = stages.as_slice();
    while let Some((first, tail)) = rest.split_first() {
        match first.get("$match") {
            Some(filter) => {
                matches.push(filter.clone());
                rest = tail;
            }
            None => break,
        }
    }
    let filter = match matches.len() {
        0 => Value::Object(Vec::new()),
        1 => matches.pop().expect("one"),
        _ => obj(vec![("$and", Value::Array(matches))]),
    };
    Ok((coll, filter, rest.to_vec()))
}
