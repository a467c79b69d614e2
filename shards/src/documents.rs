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

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use kvs_core::command::Command;
use kvs_core::doc::aggregate::{GroupStage, Pipeline};
use kvs_core::doc::binary;
use kvs_core::doc::command::{check_name, DocCommand, DocErrorKind};
use kvs_core::doc::cursor::{Projection, Sort};
use kvs_core::doc::index_key;
use kvs_core::doc::plan::keys_of;
use kvs_core::doc::query::{Cond, Filter};
use kvs_core::doc::update::Update;
use kvs_core::doc::value::{compare, Value};
use kvs_core::log::LogFile;
use kvs_core::state::CommandResult;
use kvs_core::store::docs::{default_index_name, order, parse_index_key, upsert_document, After};
use kvs_core::store::PagedStore;
use kvs_wire::limits::DOCUMENT_SIZE_MAX;
use kvs_wire::{key_hash, ErrorCode, Response};

use crate::doc_reads::{obj, DocRead, FindMode};
use crate::route::{CoreContext, Deliver, Target};
use crate::shard::{ShardOp, ShardReply, NO_ORIGIN};

/// Documents one find page holds unless the command says otherwise.
const BATCH_SIZE_DEFAULT: usize = 1000;
/// JSON bytes of documents after which a find page is cut (the rest goes to the cursor).
const PAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Documents one index build step indexes.
const BUILD_BATCH: u32 = 512;

/// Where a shard's reply to a coordinator task lands.
#[derive(Default)]
pub struct ReplySlot {
    reply: RefCell<Option<ShardReply>>,
    waker: RefCell<Option<Waker>>,
}

impl Deliver for ReplySlot {
    fn deliver(self: Rc<Self>, _: u64, _: u32, reply: ShardReply) {
        self.fill(reply);
    }
}

impl ReplySlot {
    pub fn fill(&self, reply: ShardReply) {
        *self.reply.borrow_mut() = Some(reply);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

struct WaitReply(Rc<ReplySlot>);

impl Future for WaitReply {
    type Output = ShardReply;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ShardReply> {
        match self.0.reply.borrow_mut().take() {
            Some(reply) => Poll::Ready(reply),
            None => {
                *self.0.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Sends every op, then waits for all the replies (in the order of `ops`).
async fn ask_all(ctx: &CoreContext, ops: Vec<(u32, ShardOp)>) -> Vec<ShardReply> {
    let mut slots = Vec::with_capacity(ops.len());
    for (shard, op) in ops {
        let slot = Rc::new(ReplySlot::default());
        ctx.send(
            shard,
            op,
            Target::new(Rc::clone(&slot) as Rc<dyn Deliver>, 0, 0, NO_ORIGIN),
        )
        .await;
        slots.push(slot);
    }
    let mut replies = Vec::with_capacity(slots.len());
    for slot in slots {
        replies.push(WaitReply(slot).await);
    }
    replies
}

async fn ask(ctx: &CoreContext, shard: u32, op: ShardOp) -> ShardReply {
    ask_all(ctx, vec![(shard, op)])
        .await
        .pop()
        .expect("one reply")
}

// ---- the coordinator ----

/// Why a document command failed.
#[derive(Debug)]
struct Fail {
    code: ErrorCode,
    message: String,
}

fn bad(message: impl Into<String>) -> Fail {
    Fail {
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

type Out<T> = Result<T, Fail>;

/// The reply document of a shard, or its error.
fn doc_reply(reply: ShardReply) -> Out<Value> {
    match reply {
        ShardReply::Doc(bytes) => binary::from_bytes(&bytes).map_err(|e| Fail {
            code: ErrorCode::Internal,
            message: e.0,
        }),
        ShardReply::Written(CommandResult::Document { reply }) => binary::from_bytes(&reply)
            .map_err(|e| Fail {
                code: ErrorCode::Internal,
                message: e.0,
            }),
        ShardReply::Written(CommandResult::DocumentRefused { kind, message }) => Err(Fail {
            code: match kind {
                DocErrorKind::BadRequest => ErrorCode::BadRequest,
                DocErrorKind::DuplicateKey => ErrorCode::DuplicateKey,
                DocErrorKind::TooLarge => ErrorCode::TooLarge,
                DocErrorKind::NotFound => ErrorCode::NotFound,
                // Handled by the writers (`asks_retry`); seen here only if one did not.
                DocErrorKind::Retry => ErrorCode::Internal,
            },
            message,
        }),
        ShardReply::Error(code, message) => Err(Fail { code, message }),
        other => Err(Fail {
            code: ErrorCode::Internal,
            message: format!("unexpected shard reply {other:?}"),
        }),
    }
}

fn int_of(v: &Value, name: &str) -> i64 {
    match v.get(name) {
        Some(Value::Int(n)) => *n,
        _ => 0,
    }
}

fn docs_of(mut v: Value) -> Vec<Value> {
    match &mut v {
        Value::Object(fields) => match fields.iter_mut().find(|(k, _)| k == "documents") {
            Some((_, Value::Array(docs))) => std::mem::take(docs),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

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

/// The command's fields, checked against the ones it accepts.
struct Args<'a> {
    name: &'a str,
    fields: &'a [(String, Value)],
}

impl<'a> Args<'a> {
    fn new(command: &'a Value, allowed: &[&str]) -> Out<Args<'a>> {
        let Value::Object(fields) = command else {
            return Err(bad("a command is a document"));
        };
        let name = fields[0].0.as_str();
        for (k, _) in &fields[1..] {
            if !allowed.contains(&k.as_str()) {
                return Err(bad(format!("{name}: unknown field {k:?}")));
            }
        }
        Ok(Args { name, fields })
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn doc(&self, name: &str) -> Out<Value> {
        match self.get(name) {
            None => Ok(Value::Object(Vec::new())),
            Some(v @ Value::Object(_)) => Ok(v.clone()),
            Some(other) => Err(bad(format!(
                "{}: {name} must be a document, not {other}",
                self.name
            ))),
        }
    }

    fn flag(&self, name: &str) -> Out<bool> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(bad(format!(
                "{}: {name} must be true or false, not {other}",
                self.name
            ))),
        }
    }

    fn count(&self, name: &str) -> Out<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Int(n)) if *n >= 0 => Ok(Some(*n as usize)),
            Some(Value::Double(d)) if *d >= 0.0 && d.fract() == 0.0 => Ok(Some(*d as usize)),
            Some(other) => Err(bad(format!(
                "{}: {name} must be a non-negative integer, not {other}",
                self.name
            ))),
        }
    }

    /// The collection the command names.
    fn coll(&self) -> Out<String> {
        match &self.fields[0].1 {
            Value::String(name) => {
                check_name("collection", name).map_err(|e| bad(e.message))?;
                Ok(name.clone())
            }
            other => Err(bad(format!(
                "{} takes a collection name, not {other}",
                self.name
            ))),
        }
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

/// The shard a document with this `_id` lives on: a hash of the collection and the
/// `_id`'s key. FNV-1a alone keeps the parity of the bytes' low bits, and the keys of
/// small integers share theirs, so every one of them would land on one shard of two: the
/// hash is mixed (MurmurHash3's finaliser) before it picks.
fn shard_of(ctx: &CoreContext, coll: &str, id: &Value) -> u32 {
    shard_for_doc(coll, id, ctx.shard_count)
}

fn shard_for_doc(coll: &str, id: &Value, shard_count: u32) -> u32 {
    let mut key = coll.as_bytes().to_vec();
    key.push(0);
    index_key::encode(id, &mut key);
    let mut h = key_hash(&key);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(shard_count)) as u32
}

/// The one `_id` a filter pins, if it pins one (a top-level equality on a value).
fn pinned_id(filter: &Filter) -> Option<Value> {
    match filter {
        // (An array never equals an `_id`, which cannot be one: such a filter pins nothing.)
        Filter::Field { path, cond } if path.len() == 1 && path[0] == "_id" => match cond {
            Cond::Eq(v) if !matches!(v, Value::Array(_)) => Some(v.clone()),
            Cond::Every(conds) => conds.iter().find_map(|c| match c {
                Cond::Eq(v) if !matches!(v, Value::Array(_)) => Some(v.clone()),
                _ => None,
            }),
            _ => None,
        },
        Filter::And(parts) => parts.iter().find_map(pinned_id),
        _ => None,
    }
}

fn targets(ctx: &CoreContext, coll: &str, filter: &Filter) -> Vec<u32> {
    match pinned_id(filter) {
        Some(id) => vec![shard_of(ctx, coll, &id)],
        None => (0..ctx.shard_count).collect(),
    }
}

/// A new `_id`: 12 bytes as 24 hex digits, like a MongoDB ObjectId (seconds since the
/// epoch, a per-process random part, a counter), so generated ids sort by creation time.
fn new_id() -> Value {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let process = *PROCESS.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
        if random.is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = (nanos ^ u64::from(std::process::id()) << 32).to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    });
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    let count = COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
    Value::String(format!(
        "{seconds:08x}{:010x}{:06x}",
        process & 0xff_ffff_ffff,
        count & 0xff_ffff
    ))
}

/// The node's write locks for collections with unique indexes (see the module
/// documentation). An insert holds its collection *shared* and each unique key it adds:
/// inserts of different keys go on together, since a new document's keys do not depend on
/// any other document. An update (whose new keys depend on the documents it reads) and the
/// cross-shard check of a new unique index hold the collection *exclusive*. Locks are taken
/// by polling and held across one write's probe and apply; a waiting exclusive holder
/// keeps new shared ones out, so it is not starved.
#[derive(Default)]
struct LockTable {
    collections: HashMap<String, CollState>,
    keys: BTreeSet<Vec<u8>>,
}

#[derive(Default)]
struct CollState {
    shared: usize,
    exclusive: bool,
    exclusive_waiting: usize,
}

static WRITE_LOCKS: Mutex<Option<LockTable>> = Mutex::new(None);

fn with_locks<T>(f: impl FnOnce(&mut LockTable) -> T) -> T {
    let mut guard = WRITE_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(LockTable::default))
}

/// A held lock; released when dropped.
struct CollLock {
    coll: String,
    exclusive: bool,
    keys: Vec<Vec<u8>>,
}

impl Drop for CollLock {
    fn drop(&mut self) {
        with_locks(|t| {
            for key in &self.keys {
                t.keys.remove(key);
            }
            let state = t.collections.entry(self.coll.clone()).or_default();
            if self.exclusive {
                state.exclusive = false;
            } else {
                state.shared -= 1;
            }
            if state.shared == 0 && !state.exclusive && state.exclusive_waiting == 0 {
                t.collections.remove(&self.coll);
            }
        });
    }
}

const LOCK_POLL: Duration = Duration::from_micros(50);

/// Holds `coll` shared and every one of `keys` (unique keys, already prefixed by their
/// index), for an insert.
async fn lock_keys(coll: &str, keys: Vec<Vec<u8>>) -> CollLock {
    loop {
        let taken = with_locks(|t| {
            let state = t.collections.entry(coll.to_string()).or_default();
            if state.exclusive || state.exclusive_waiting > 0 {
                return false;
            }
            if keys.iter().any(|k| t.keys.contains(k)) {
                return false;
            }
            state.shared += 1;
            t.keys.extend(keys.iter().cloned());
            true
        });
        if taken {
            return CollLock {
                coll: coll.to_string(),
                exclusive: false,
                keys,
            };
        }
        crate::runtime::wait(LOCK_POLL).await;
    }
}

/// Holds `coll` exclusive: no insert, update or index check of it goes on meanwhile.
async fn lock_collection(coll: &str) -> CollLock {
    with_locks(|t| {
        t.collections
            .entry(coll.to_string())
            .or_default()
            .exclusive_waiting += 1
    });
    loop {
        let taken = with_locks(|t| {
            let state = t.collections.entry(coll.to_string()).or_default();
            if state.exclusive || state.shared > 0 {
                return false;
            }
            state.exclusive = true;
            state.exclusive_waiting -= 1;
            true
        });
        if taken {
            return CollLock {
                coll: coll.to_string(),
                exclusive: true,
                keys: Vec::new(),
            };
        }
        crate::runtime::wait(LOCK_POLL).await;
    }
}

/// What a coordinator knows of a collection's unique indexes when it writes: on a node of
/// several shards, their names and keys (read from its own core's shard). Its writes carry
/// the names ([`DocCommand::Checked`]), so a shard that has a unique index the view lacks
/// refuses them, and the coordinator looks again and retries.
struct UniqueView {
    /// None on a node of one shard: that shard checks every key itself, atomically.
    names: Option<Vec<String>>,
    keys: Vec<Value>,
}

impl UniqueView {
    /// The view for attempt `attempt` of a write: the first reads this core's shard (the
    /// indexes are the same on every shard but while one is created or dropped); after a
    /// shard asked for a retry, the union of every shard's, after a short pause.
    async fn read(ctx: &CoreContext, coll: &str, attempt: usize) -> Out<UniqueView> {
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
    async fn lock(&self, coll: &str) -> Option<CollLock> {
        if self.keys.is_empty() {
            None
        } else {
            Some(lock_collection(coll).await)
        }
    }

    /// For an insert of `docs`: holds the collection shared and the unique keys the
    /// documents would take, when there are unique indexes to check across shards.
    async fn lock_for_insert(&self, coll: &str, docs: &[Value]) -> Out<Option<CollLock>> {
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
        Ok(Some(lock_keys(coll, keys).await))
    }

    /// The write to send: checked against this view on a node of several shards.
    fn write(&self, command: DocCommand) -> ShardOp {
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
fn asks_retry(reply: &ShardReply) -> bool {
    matches!(
        reply,
        ShardReply::Written(CommandResult::DocumentRefused {
            kind: DocErrorKind::Retry,
            ..
        })
    )
}

/// Tries a write this many times while shards ask for a retry (a unique index appeared).
const WRITE_ATTEMPTS: usize = 10;

fn unfinished(coll: &str) -> Fail {
    Fail {
        code: ErrorCode::Internal,
        message: format!("the unique indexes of {coll} kept changing; the write did not finish"),
    }
}

/// Adds what other shards did to a failure's message.
fn with_done(mut fail: Fail, done: i64, what: &str) -> Fail {
    if done > 0 {
        fail.message = format!("{} ({done} documents {what} on other shards)", fail.message);
    }
    fail
}

/// Checks new versions of documents against the unique indexes of the other shards, and
/// against each other (the shards check their own documents).
async fn check_unique_across(
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

fn write(command: &DocCommand) -> ShardOp {
    ShardOp::Write(Command::Document {
        body: command.encode(),
    })
}

async fn insert(ctx: &CoreContext, command: &Value) -> Out<Value> {
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
        let _lock = view.lock_for_insert(&coll, &docs).await?;
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

/// The parts of a find-like command.
struct FindArgs {
    coll: String,
    filter_value: Value,
    filter: Filter,
    sort_value: Value,
    sort: Sort,
    skip: usize,
    limit: Option<usize>,
    projection: Option<Projection>,
    batch: usize,
    cursor: Option<(Value, Option<usize>)>,
}

fn find_args(command: &Value, allowed: &[&str]) -> Out<FindArgs> {
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

/// A read of `coll`'s index definitions for each of `shards`.
fn index_reads(coll: &str, shards: impl IntoIterator<Item = u32>) -> Vec<(u32, ShardOp)> {
    shards
        .into_iter()
        .map(|shard| {
            let read = DocRead::Indexes {
                coll: coll.to_string(),
            };
            (shard, ShardOp::DocRead(read))
        })
        .collect()
}

/// The same find read for each of `shards`.
fn find_reads(coll: &str, shards: &[u32], query: &[u8], mode: FindMode) -> Vec<(u32, ShardOp)> {
    shards
        .iter()
        .map(|&shard| {
            let read = DocRead::Find {
                coll: coll.to_string(),
                query: query.to_vec(),
                mode,
            };
            (shard, ShardOp::DocRead(read))
        })
        .collect()
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

async fn find(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let f = find_args(
        command,
        &[
            "filter",
            "sort",
            "skip",
            "limit",
            "projection",
            "batchSize",
            "cursor",
        ],
    )?;
    let (after, remaining, skip) = match &f.cursor {
        Some((after, remaining)) => (Some(after), *remaining, 0),
        None => (None, f.limit, f.skip),
    };
    let want = remaining.unwrap_or(usize::MAX).min(f.batch);
    let per_shard = skip.saturating_add(want).saturating_add(1);
    let query = query_bytes(&f, Some(per_shard), after);
    let shards = targets(ctx, &f.coll, &f.filter);
    let ops = find_reads(&f.coll, &shards, &query, FindMode::Documents);
    let mut docs = Vec::new();
    for reply in ask_all(ctx, ops).await {
        docs.extend(docs_of(doc_reply(reply)?));
    }
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
    Ok(obj(out))
}

async fn count(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let f = find_args(command, &["filter"])?;
    let query = query_bytes(&f, None, None);
    let shards = targets(ctx, &f.coll, &f.filter);
    let ops = find_reads(&f.coll, &shards, &query, FindMode::Count);
    let mut n = 0;
    for reply in ask_all(ctx, ops).await {
        n += int_of(&doc_reply(reply)?, "count");
    }
    Ok(obj(vec![("count", Value::Int(n))]))
}

async fn explain(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let f = find_args(command, &["filter", "sort", "skip", "limit"])?;
    let limit = f.limit.map(|l| l.saturating_add(f.skip));
    let query = query_bytes(&f, limit, None);
    let shards = targets(ctx, &f.coll, &f.filter);
    let ops = find_reads(&f.coll, &shards, &query, FindMode::Explain);
    let mut plans = Vec::new();
    let (mut keys, mut docs, mut returned) = (0, 0, 0);
    for reply in ask_all(ctx, ops).await {
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

/// An update command's parts.
struct UpdateArgs {
    coll: String,
    filter_value: Value,
    filter: Filter,
    update_value: Value,
    update: Update,
    upsert: bool,
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

async fn update(ctx: &CoreContext, command: &Value) -> Out<Value> {
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
async fn update_many(ctx: &CoreContext, u: &UpdateArgs) -> Out<Value> {
    let mut pending = targets(ctx, &u.coll, &u.filter);
    let (mut matched, mut modified) = (0, 0);
    let mut failure = None;
    for attempt in 0..WRITE_ATTEMPTS {
        let view = UniqueView::read(ctx, &u.coll, attempt).await?;
        let _lock = view.lock(&u.coll).await;
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
async fn update_one(ctx: &CoreContext, u: &UpdateArgs) -> Out<Value> {
    let shards = targets(ctx, &u.coll, &u.filter);
    'attempt: for attempt in 0..WRITE_ATTEMPTS {
        let view = UniqueView::read(ctx, &u.coll, attempt).await?;
        let _lock = view.lock(&u.coll).await;
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

async fn delete(ctx: &CoreContext, command: &Value) -> Out<Value> {
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

async fn aggregate(ctx: &CoreContext, command: &Value) -> Out<Value> {
    let args = Args::new(command, &["pipeline"])?;
    let coll = args.coll()?;
    let Some(pipeline @ Value::Array(stages)) = args.get("pipeline") else {
        return Err(bad("aggregate: pipeline must be an array of stages"));
    };
    // Parse it all first: a bad stage anywhere is a BAD_REQUEST before any work.
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
        rest = &rest[1..];
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
    for reply in ask_all(ctx, ops).await {
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
    let rest = Pipeline::parse(&Value::Array(rest.to_vec())).map_err(|e| bad(e.0))?;
    let docs = rest.run(docs).map_err(|e| bad(e.0))?;
    Ok(obj(vec![("documents", Value::Array(docs))]))
}

async fn create_index(ctx: &CoreContext, command: &Value) -> Out<Value> {
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
                let _lock = lock_collection(&coll).await;
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

/// Fails with DUPLICATE_KEY when two shards' entries of index `name` share a key.
async fn keys_unique_across(ctx: &CoreContext, coll: &str, name: &str) -> Out<()> {
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

async fn drop_index(ctx: &CoreContext, command: &Value) -> Out<Value> {
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

async fn list_indexes(ctx: &CoreContext, command: &Value) -> Out<Value> {
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

async fn list_collections(ctx: &CoreContext) -> Out<Value> {
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

async fn drop_collection(ctx: &CoreContext, command: &Value) -> Out<Value> {
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

/// Builds this core's shard's building indexes, a batch of documents per log entry, while
/// writes go on: each step is an ordinary write through the shard's log.
pub async fn build_indexes<F: LogFile>(
    ctx: Rc<CoreContext>,
    store: Rc<RefCell<Rc<PagedStore<F>>>>,
) {
    let shard = ctx.core as u32;
    while !ctx.stopping.get() {
        let current = Rc::clone(&store.borrow());
        let building: Vec<(String, String)> = match current.doc_collections().await {
            Ok(collections) => collections
                .iter()
                .flat_map(|c| {
                    c.indexes
                        .iter()
                        .filter(|i| !i.ready)
                        .map(|i| (c.name.clone(), i.name.clone()))
                        .collect::<Vec<_>>()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        drop(current);
        if building.is_empty() {
            crate::runtime::wait(Duration::from_millis(20)).await;
            continue;
        }
        for (coll, name) in building {
            let step = DocCommand::BuildIndex {
                coll,
                name,
                batch: BUILD_BATCH,
            };
            if let Err(fail) = doc_reply(ask(&ctx, shard, write(&step)).await) {
                tracing::debug!(shard, error = %fail.message, "index build step not applied");
                crate::runtime::wait(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_and_ordered_by_time() {
        let ids: Vec<Value> = (0..1000).map(|_| new_id()).collect();
        let mut set = std::collections::HashSet::new();
        for id in &ids {
            let Value::String(s) = id else { panic!() };
            assert_eq!(s.len(), 24);
            assert!(set.insert(s.clone()));
        }
        // Seconds lead, then the process, then a counter: ids made one after another in a
        // process sort in the order they were made.
        for pair in ids.windows(2) {
            let (Value::String(a), Value::String(b)) = (&pair[0], &pair[1]) else {
                panic!("ids are strings")
            };
            assert!(a < b, "{a} was made before {b} but sorts after it");
            assert!(a[..8] <= b[..8], "the time prefix never goes back");
        }
    }

    #[test]
    fn documents_spread_evenly_over_shards() {
        for shards in [2u32, 3, 4] {
            let mut counts = vec![0u32; shards as usize];
            for i in 0..10_000 {
                counts[shard_for_doc("c", &Value::Int(i), shards) as usize] += 1;
            }
            let even = 10_000 / shards;
            for count in &counts {
                assert!(
                    count.abs_diff(even) < even / 10,
                    "{shards} shards: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn a_filter_pins_a_shard_only_by_a_scalar_id_equality() {
        let parse = |t: &str| Filter::parse(&Value::from_json(t).unwrap()).unwrap();
        assert!(pinned_id(&parse(r#"{"_id": 5}"#)).is_some());
        assert!(pinned_id(&parse(r#"{"_id": 5, "a": 1}"#)).is_some());
        assert!(pinned_id(&parse(r#"{"_id": {"$eq": "x"}}"#)).is_some());
        assert!(pinned_id(&parse(r#"{"_id": {"$gt": 5}}"#)).is_none());
        assert!(pinned_id(&parse(r#"{"_id": [5]}"#)).is_none());
        assert!(pinned_id(&parse(r#"{"$or": [{"_id": 5}, {"_id": 6}]}"#)).is_none());
    }
}
