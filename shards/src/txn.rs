//! Interactive transactions on the native protocol (ADR 0022, docs/transactions.md): BEGIN,
//! requests inside a transaction, COMMIT and ROLLBACK. The coordinator is the core serving
//! the client's connection; a transaction belongs to its connection, and closing the
//! connection rolls back what it left open.
//!
//! - Writes are buffered here until COMMIT; a write first takes its key's exclusive lock on
//!   the key's shard (waiting if another transaction holds it).
//! - Reads see the transaction's own writes. Under Serializable a read takes a shared lock
//!   (a SCAN a shared range on every shard) and then reads *fenced*: after every write its
//!   shard proposed before it. Under Read Committed a read takes no lock and sees the latest
//!   committed data.
//! - A transaction that is aborted (deadlock, lock timeout, deadline, a write outside
//!   transactions that broke its locks) loses every lock at once and is forgotten: later
//!   requests for it get TXN_NOT_FOUND.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};

use kvs_core::command::Command;
use kvs_core::sessions::wall_clock_ms;
use kvs_wire::limits::DOCUMENT_SIZE_MAX;
use kvs_wire::{shard_for_key, ErrorCode, Isolation, Request, Response};

use crate::ask::{ask, ask_all};
use crate::documents::in_txn::{self, DocWrites, TxnAccess};
use crate::lock_names;
use crate::route::{merge_scan, next_start, CoreContext};
use crate::shard::{ShardOp, ShardReply};
use crate::txn_commit::{self, Refusal};
use crate::txn_locks::{LockAsk, Mode};

/// One open transaction.
#[derive(Debug)]
pub struct Txn {
    pub id: u64,
    pub isolation: Isolation,
    pub deadline_ms: u64,
    /// Buffered writes: a value, or `None` for a delete.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Shards where it may hold locks.
    pub locked: BTreeSet<u32>,
    /// The keys (and how many ranges) each shard granted it: at commit every shard must
    /// still hold that many (a leader change loses them).
    granted: BTreeMap<u32, (BTreeSet<Vec<u8>>, u32)>,
    /// A read-only transaction's snapshot (ADR 0023): it reads there and locks nothing.
    snapshot: Option<crate::snapshot_read::Held>,
    /// Buffered document writes (ADR 0024).
    docs: DocWrites,
}

impl TxnAccess for Txn {
    fn isolation(&self) -> Isolation {
        self.isolation
    }

    fn doc_writes(&mut self) -> &mut DocWrites {
        &mut self.docs
    }

    async fn lock_name(
        &mut self,
        ctx: &CoreContext,
        shard: u32,
        name: Vec<u8>,
        mode: Mode,
    ) -> Result<(), Refusal> {
        lock(ctx, self, shard, vec![(name, mode)], None).await
    }

    fn read_op(&mut self, shard: u32, read: ShardOp, locked: bool) -> ShardOp {
        match &mut self.snapshot {
            Some(snapshot) => snapshot.read(shard, read),
            None if locked => ShardOp::Fenced(Box::new(read)),
            None => read,
        }
    }
}

impl Txn {
    /// Lets go of what it holds: its locks, or its snapshot.
    async fn end(self, ctx: &CoreContext) {
        txn_commit::release(ctx, self.id, self.locked.iter().copied()).await;
        if let Some(snapshot) = self.snapshot {
            snapshot.end(ctx).await;
        }
    }

    /// How many locks each shard granted.
    fn lock_counts(&self) -> BTreeMap<u32, u32> {
        self.granted
            .iter()
            .map(|(&shard, (keys, ranges))| (shard, keys.len() as u32 + ranges))
            .collect()
    }
}

/// A connection's open transactions. A transaction is taken out while one of its requests
/// runs, so a second request for it at the same time finds it busy.
#[derive(Debug, Default)]
pub struct OpenTxns {
    open: RefCell<HashMap<u64, Txn>>,
    busy: RefCell<BTreeSet<u64>>,
    closed: Cell<bool>,
}

fn not_found(txn: u64) -> Response {
    Response::error(
        ErrorCode::TxnNotFound,
        format!(
            "no open transaction {txn:#x} on this connection (it committed, was rolled back or \
             aborted, or never began)"
        ),
    )
}

fn refusal(refusal: Refusal) -> Response {
    Response::error(refusal.0, refusal.1)
}

/// Whether an error ends the transaction (it was aborted, or its locks are gone). A request
/// refused whole (a bad one, a CAS that did not match, a duplicate `_id`...) leaves it open.
fn aborts(code: ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::BadRequest
            | ErrorCode::VersionMismatch
            | ErrorCode::NotFound
            | ErrorCode::DuplicateKey
            | ErrorCode::TooLarge
    )
}

impl OpenTxns {
    fn take(&self, txn: u64) -> Result<Txn, Response> {
        if self.busy.borrow().contains(&txn) {
            return Err(Response::error(
                ErrorCode::BadRequest,
                format!("transaction {txn:#x} is running another request: send one at a time"),
            ));
        }
        let taken = self
            .open
            .borrow_mut()
            .remove(&txn)
            .ok_or_else(|| not_found(txn))?;
        self.busy.borrow_mut().insert(txn);
        Ok(taken)
    }

    /// Puts a transaction back after a request, unless the connection closed meanwhile
    /// (then it is rolled back).
    async fn put_back(&self, ctx: &CoreContext, txn: Txn) {
        self.busy.borrow_mut().remove(&txn.id);
        if self.closed.get() {
            txn.end(ctx).await;
        } else {
            self.open.borrow_mut().insert(txn.id, txn);
        }
    }

    fn finished(&self, txn: u64) {
        self.busy.borrow_mut().remove(&txn);
    }

    /// The connection closed: rolls back every open transaction.
    pub async fn close(&self, ctx: &CoreContext) {
        self.closed.set(true);
        let open: Vec<Txn> = self.open.borrow_mut().drain().map(|(_, t)| t).collect();
        for txn in open {
            txn.end(ctx).await;
        }
    }
}

/// BEGIN. A read-only transaction begins its snapshot on every shard now (`origin` orders
/// that after the connection's earlier writes: it sees them).
pub async fn begin(
    ctx: &CoreContext,
    open: &OpenTxns,
    isolation: Isolation,
    origin: crate::shard::Origin,
) -> Response {
    let txns = &ctx.transactions;
    let id = txns.new_id();
    let deadline_ms = wall_clock_ms() + txns.txn_timeout.as_millis() as u64;
    let snapshot = if isolation == Isolation::ReadOnly {
        let shards: Vec<u32> = (0..ctx.shard_count).collect();
        match crate::snapshot_read::begin(ctx, origin, &shards).await {
            Ok(begun) => Some(crate::snapshot_read::Held::new(begun)),
            Err((code, message)) => return Response::error(code, message),
        }
    } else {
        None
    };
    open.open.borrow_mut().insert(
        id,
        Txn {
            id,
            isolation,
            deadline_ms,
            writes: BTreeMap::new(),
            locked: BTreeSet::new(),
            granted: BTreeMap::new(),
            snapshot,
            docs: DocWrites::default(),
        },
    );
    Response::Began { txn: id }
}

/// A request inside transaction `id`; `for_update`: its reads lock exclusively.
pub async fn run(
    ctx: &CoreContext,
    open: &OpenTxns,
    id: u64,
    request: Request,
    for_update: bool,
) -> Response {
    let mut txn = match open.take(id) {
        Ok(txn) => txn,
        Err(response) => return response,
    };
    let result = if wall_clock_ms() >= txn.deadline_ms {
        Err(past_deadline(id))
    } else {
        step(ctx, &mut txn, request, for_update).await
    };
    match result {
        Ok(response) => {
            open.put_back(ctx, txn).await;
            response
        }
        Err((code, message)) if aborts(code) => {
            open.finished(id);
            txn.end(ctx).await;
            Response::error(code, message)
        }
        Err(kept) => {
            open.put_back(ctx, txn).await;
            refusal(kept)
        }
    }
}

fn past_deadline(txn: u64) -> Refusal {
    (
        ErrorCode::TxnTimeout,
        format!("transaction {txn:#x} ran past its deadline (--txn-timeout) and was aborted"),
    )
}

/// COMMIT.
pub async fn commit(ctx: &CoreContext, open: &OpenTxns, id: u64) -> Response {
    let txn = match open.take(id) {
        Ok(txn) => txn,
        Err(response) => return response,
    };
    open.finished(id);
    if wall_clock_ms() >= txn.deadline_ms {
        txn.end(ctx).await;
        return refusal(past_deadline(id));
    }
    if txn.snapshot.is_some() {
        // Read-only: nothing to apply.
        txn.end(ctx).await;
        return Response::Committed(Vec::new());
    }
    let mut parts: BTreeMap<u32, Vec<Command>> = BTreeMap::new();
    // Each shard's keys, in the order of its commands.
    let mut keys: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    let locks = txn.lock_counts();
    for (key, value) in txn.writes {
        let shard = shard_for_key(&key, ctx.shard_count);
        keys.entry(shard).or_default().push(key.clone());
        let command = match value {
            Some(value) => Command::Put { key, value },
            None => Command::Delete { key },
        };
        parts.entry(shard).or_default().push(command);
    }
    // The documents' commands after the keys' on each shard (their results are not the
    // keys' versions).
    for (shard, commands) in txn.docs.commands(ctx) {
        parts.entry(shard).or_default().extend(commands);
    }
    let outcome = txn_commit::commit(
        ctx,
        txn_commit::Commit {
            txn: id,
            deadline_ms: txn.deadline_ms,
            node_id: ctx.transactions.node_id,
            locks: &locks,
            parts,
        },
    )
    .await;
    match outcome {
        Ok(results) => {
            let mut written: Vec<(Vec<u8>, u64)> = Vec::new();
            for (shard, results) in results {
                let keys = keys.remove(&shard).unwrap_or_default();
                assert!(keys.len() <= results.len(), "one result per write");
                let documents = &results[keys.len()..];
                if let Some(refused) = documents
                    .iter()
                    .find(|r| matches!(r, kvs_core::state::CommandResult::DocumentRefused { .. }))
                {
                    // Checked when the command ran, under the locks: a bug if it happens.
                    tracing::error!(
                        txn = id,
                        shard,
                        ?refused,
                        "a committed document write was refused"
                    );
                }
                for (key, result) in keys.into_iter().zip(results) {
                    let version = match result {
                        kvs_core::state::CommandResult::Written { version } => version,
                        _ => 0,
                    };
                    written.push((key, version));
                }
            }
            written.sort_unstable();
            Response::Committed(written)
        }
        Err(why) => refusal(why),
    }
}

/// ROLLBACK.
pub async fn rollback(ctx: &CoreContext, open: &OpenTxns, id: u64) -> Response {
    match open.take(id) {
        Ok(txn) => {
            open.finished(id);
            txn.end(ctx).await;
            Response::Ended
        }
        Err(response) => response,
    }
}

/// Takes locks on one shard; answered once granted.
async fn lock(
    ctx: &CoreContext,
    txn: &mut Txn,
    shard: u32,
    keys: Vec<(Vec<u8>, Mode)>,
    range: Option<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<(), Refusal> {
    txn.locked.insert(shard);
    let held = txn
        .granted
        .get(&shard)
        .map_or(0, |(keys, ranges)| keys.len() as u32 + ranges);
    let ask_lock = LockAsk {
        txn: txn.id,
        deadline_ms: txn.deadline_ms,
        held,
        keys,
        range,
    };
    let granted: Vec<Vec<u8>> = ask_lock.keys.iter().map(|(k, _)| k.clone()).collect();
    let ranges = u32::from(ask_lock.range.is_some());
    txn_commit::lock(ctx, shard, ask_lock).await?;
    let (keys, range_count) = txn.granted.entry(shard).or_default();
    keys.extend(granted);
    *range_count += ranges;
    Ok(())
}

/// Reads one key as the transaction sees it: (version, value); a version of 0 for its own
/// write. `locked`: a lock on it is held (read fenced).
async fn read_key(
    ctx: &CoreContext,
    txn: &mut Txn,
    key: &[u8],
    lock_mode: Option<Mode>,
) -> Result<Option<(u64, Vec<u8>)>, Refusal> {
    if let Some(own) = txn.writes.get(key) {
        return Ok(own.clone().map(|value| (0, value)));
    }
    let shard = shard_for_key(key, ctx.shard_count);
    let get = ShardOp::Get { key: key.to_vec() };
    let op = match (&mut txn.snapshot, lock_mode) {
        (Some(snapshot), _) => snapshot.read(shard, get),
        (None, lock_mode) => match lock_mode {
            Some(mode) => {
                lock(ctx, txn, shard, vec![(lock_names::key(key), mode)], None).await?;
                ShardOp::Fenced(Box::new(get))
            }
            None => get,
        },
    };
    match ask(ctx, shard, op).await {
        ShardReply::Value(found) => Ok(found.map(|v| (v.version, v.value))),
        ShardReply::Error(code, message) => Err((code, message)),
        other => Err((
            ErrorCode::Internal,
            format!("unexpected read reply {other:?}"),
        )),
    }
}

/// The lock a read takes: exclusive for update, else shared under Serializable and none
/// under Read Committed.
fn read_lock(txn: &Txn, for_update: bool) -> Option<Mode> {
    if for_update {
        return Some(Mode::Exclusive);
    }
    (txn.isolation == Isolation::Serializable).then_some(Mode::Shared)
}

async fn step(
    ctx: &CoreContext,
    txn: &mut Txn,
    request: Request,
    for_update: bool,
) -> Result<Response, Refusal> {
    let shard_of = |key: &[u8]| shard_for_key(key, ctx.shard_count);
    let writes = matches!(
        request,
        Request::Put { .. } | Request::Delete { .. } | Request::Cas { .. }
    );
    if writes && txn.snapshot.is_some() {
        return Err((
            ErrorCode::BadRequest,
            "a read-only transaction cannot write: begin a read-committed or serializable one"
                .into(),
        ));
    }
    Ok(match request {
        Request::Get { key } => {
            let mode = read_lock(txn, for_update);
            match read_key(ctx, txn, &key, mode).await? {
                Some((version, value)) => Response::Value { version, value },
                None => Response::error(ErrorCode::NotFound, "key not found"),
            }
        }
        Request::MGet { keys } => {
            let mode = read_lock(txn, for_update);
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(read_key(ctx, txn, &key, mode).await?);
            }
            Response::Values(values)
        }
        Request::Put { key, value } => {
            lock(
                ctx,
                txn,
                shard_of(&key),
                vec![(lock_names::key(&key), Mode::Exclusive)],
                None,
            )
            .await?;
            txn.writes.insert(key, Some(value));
            Response::Written { version: 0 }
        }
        Request::Delete { key } => {
            let existed = read_key(ctx, txn, &key, Some(Mode::Exclusive))
                .await?
                .is_some();
            txn.writes.insert(key, None);
            Response::Deleted { existed }
        }
        Request::Cas {
            key,
            expected_version,
            value,
        } => {
            if txn.writes.contains_key(&key) {
                return Err((
                    ErrorCode::BadRequest,
                    "CAS of a key this transaction already wrote: its new version is not \
                     known before COMMIT"
                        .into(),
                ));
            }
            let current = read_key(ctx, txn, &key, Some(Mode::Exclusive))
                .await?
                .map_or(0, |(version, _)| version);
            if current != expected_version {
                return Err((
                    ErrorCode::VersionMismatch,
                    format!("version mismatch: the key is at version {current}"),
                ));
            }
            txn.writes.insert(key, value);
            Response::Written { version: 0 }
        }
        Request::Scan { start, end, limit } => scan(ctx, txn, start, end, limit).await?,
        Request::Document { command } => {
            let reply = in_txn::run(ctx, txn, &command).await?.to_string();
            if reply.len() > DOCUMENT_SIZE_MAX {
                return Err((
                    ErrorCode::TooLarge,
                    format!(
                        "the reply of {} bytes exceeds the {DOCUMENT_SIZE_MAX}-byte limit",
                        reply.len()
                    ),
                ));
            }
            Response::Document(reply)
        }
        other => Response::error(
            ErrorCode::BadRequest,
            format!("{:?} cannot run inside a transaction", other.opcode()),
        ),
    })
}

async fn scan(
    ctx: &CoreContext,
    txn: &mut Txn,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    limit: u32,
) -> Result<Response, Refusal> {
    let serializable = txn.isolation == Isolation::Serializable;
    if serializable {
        // Shard by shard, in order: scanners never wait for each other in a circle.
        for shard in 0..ctx.shard_count {
            let range = Some(lock_names::key_range(&start, end.as_deref()));
            lock(ctx, txn, shard, Vec::new(), range).await?;
        }
    }
    let in_range = |key: &Vec<u8>| {
        key.as_slice() >= start.as_slice() && end.as_ref().is_none_or(|end| key < end)
    };
    // Enough from the shards that the transaction's own deletes cannot leave a short page.
    let deletes = txn
        .writes
        .iter()
        .filter(|(key, value)| value.is_none() && in_range(key))
        .count();
    let wanted = limit.saturating_add(deletes as u32);
    let ops = (0..ctx.shard_count)
        .map(|shard| {
            let scan = ShardOp::Scan {
                start: start.clone(),
                end: end.clone(),
                limit: wanted,
            };
            let op = match &mut txn.snapshot {
                Some(snapshot) => snapshot.read(shard, scan),
                None if serializable => ShardOp::Fenced(Box::new(scan)),
                None => scan,
            };
            (shard, op)
        })
        .collect();
    let replies = ask_all(ctx, ops).await;
    let (pairs, next) = match merge_scan(replies, wanted) {
        Ok(page) => page,
        Err(ShardReply::Error(code, message)) => return Err((code, message)),
        Err(other) => {
            return Err((
                ErrorCode::Internal,
                format!("unexpected scan reply {other:?}"),
            ))
        }
    };
    // The shards' page covers keys up to `next` (or everything): overlay the transaction's
    // writes there.
    let covered = |key: &Vec<u8>| next.as_ref().is_none_or(|next| key < next);
    let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = pairs.into_iter().collect();
    for (key, value) in txn.writes.iter().filter(|(k, _)| in_range(k) && covered(k)) {
        match value {
            Some(value) => merged.insert(key.clone(), value.clone()),
            None => merged.remove(key),
        };
    }
    let more = next.is_some() || merged.len() > limit as usize;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = merged.into_iter().take(limit as usize).collect();
    let next = next_start(&pairs, more);
    Ok(Response::Scanned { pairs, next })
}
