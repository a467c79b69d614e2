//! Committing a transaction's parts, one per shard (ADR 0022), and resolving the prepared
//! transactions a shard finds when it opens.
//!
//! - Shards the transaction only read are checked first (their locks must be intact; they are
//!   released then).
//! - One shard with writes: one `Txn` entry (the fast path).
//! - Several: two-phase commit, every step an entry in the shards' logs — `TxnPrepare` on
//!   each, `TxnDecide` on the primary (the lowest-numbered participant: the commit point,
//!   first decision wins), `TxnResolve` on the others, then `TxnForget` on the primary.
//!
//! The coordinator answers once every participant applied its part and released its locks.

use std::collections::{BTreeMap, BTreeSet};

use kvs_core::command::Command;
use kvs_core::state::CommandResult;
use kvs_core::store::txn::PreparedTxn;
use kvs_wire::ErrorCode;

use crate::ask::{ask, ask_all};
use crate::route::CoreContext;
use crate::shard::{ShardOp, ShardReply};
use crate::txn_locks::{LockAsk, TxnLockOp};

/// Why a transaction did not commit: its error code and message.
pub type Refusal = (ErrorCode, String);

/// What a shard's reply to a step means: its results, or why not.
fn results_of(reply: ShardReply) -> Result<Vec<CommandResult>, Refusal> {
    match reply {
        ShardReply::Written(CommandResult::Many { results, .. }) => Ok(results),
        ShardReply::Written(CommandResult::OutcomeUnknown { reason }) => {
            Err((ErrorCode::OutcomeUnknown, reason))
        }
        ShardReply::Error(code, message) => Err((code, message)),
        other => Err((
            ErrorCode::Internal,
            format!("unexpected reply to a transaction's commit: {other:?}"),
        )),
    }
}

/// Whether a refusal leaves the outcome unknown (the entry may still be applied).
pub fn outcome_unknown(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::OutcomeUnknown | ErrorCode::Timeout)
}

/// Asks `shard` for locks; answered once granted (or refused: deadlock, timeout).
pub async fn lock(ctx: &CoreContext, shard: u32, ask_lock: LockAsk) -> Result<(), Refusal> {
    match ask(ctx, shard, ShardOp::TxnLock(TxnLockOp::Lock(ask_lock))).await {
        ShardReply::Locked => Ok(()),
        ShardReply::Error(code, message) => Err((code, message)),
        other => Err((
            ErrorCode::Internal,
            format!("unexpected lock reply {other:?}"),
        )),
    }
}

/// How long a coordinator keeps asking for a decision or a resolution whose answer it did
/// not get (a leader failed over meanwhile): the steps are idempotent, so asking again is
/// safe, and giving up leaves the participants prepared until a recovery resolves them.
const SETTLE_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a refusal may change when asked again (no leader yet, or an unknown outcome).
fn worth_asking_again(reply: &ShardReply) -> bool {
    matches!(
        reply,
        ShardReply::Error(
            ErrorCode::NotLeader
                | ErrorCode::NoQuorum
                | ErrorCode::Timeout
                | ErrorCode::OutcomeUnknown
                | ErrorCode::ShuttingDown,
            _
        ) | ShardReply::Written(CommandResult::OutcomeUnknown { .. })
    )
}

/// Asks `shard` to apply an idempotent step of two-phase commit until it answers for sure.
async fn settle(ctx: &CoreContext, shard: u32, command: Command) -> ShardReply {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(20);
    loop {
        let reply = ask(ctx, shard, ShardOp::Write(command.clone())).await;
        if !worth_asking_again(&reply) || started.elapsed() >= SETTLE_FOR || ctx.stopping.get() {
            return reply;
        }
        crate::runtime::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    }
}

/// Releases `txn`'s locks on `shards`.
pub async fn release(ctx: &CoreContext, txn: u64, shards: impl IntoIterator<Item = u32>) {
    let ops = shards
        .into_iter()
        .map(|shard| (shard, ShardOp::TxnLock(TxnLockOp::Release { txn })))
        .collect();
    ask_all(ctx, ops).await;
}

/// What a transaction commits: its id, deadline, how many locks it took on each shard it
/// locked (the shard checks it still holds them all), and its commands per shard (user keys).
pub struct Commit<'a> {
    pub txn: u64,
    pub deadline_ms: u64,
    pub node_id: u64,
    pub locks: &'a BTreeMap<u32, u32>,
    pub parts: BTreeMap<u32, Vec<Command>>,
}

/// Commits; returns each written shard's results, in its commands' order. Every lock of the
/// transaction is released whatever the outcome.
pub async fn commit(
    ctx: &CoreContext,
    commit: Commit<'_>,
) -> Result<BTreeMap<u32, Vec<CommandResult>>, Refusal> {
    let Commit {
        txn,
        deadline_ms,
        node_id,
        locks,
        parts,
    } = commit;
    let touched: BTreeSet<u32> = locks.keys().copied().chain(parts.keys().copied()).collect();
    let locks_on = |shard: u32| locks.get(&shard).copied().unwrap_or(0);
    let checks = locks
        .iter()
        .filter(|(shard, _)| !parts.contains_key(shard))
        .map(|(&shard, &locks)| (shard, ShardOp::TxnLock(TxnLockOp::Check { txn, locks })))
        .collect();
    for reply in ask_all(ctx, checks).await {
        if let ShardReply::Error(code, message) = reply {
            release(ctx, txn, touched).await;
            return Err((code, message));
        }
    }
    let writers: Vec<u32> = parts.keys().copied().collect();
    let outcome = match writers.len() {
        0 => Ok(BTreeMap::new()),
        1 => {
            let (shard, commands) = parts.into_iter().next().expect("one part");
            let command = Command::Txn {
                txn,
                locks: locks_on(shard),
                commands,
            };
            let reply = ask(ctx, shard, ShardOp::Write(command)).await;
            results_of(reply).map(|results| BTreeMap::from([(shard, results)]))
        }
        _ => two_phase(ctx, txn, deadline_ms, node_id, parts, &locks_on).await,
    };
    release(ctx, txn, touched).await;
    outcome
}

async fn two_phase(
    ctx: &CoreContext,
    txn: u64,
    deadline_ms: u64,
    node_id: u64,
    parts: BTreeMap<u32, Vec<Command>>,
    locks_on: &dyn Fn(u32) -> u32,
) -> Result<BTreeMap<u32, Vec<CommandResult>>, Refusal> {
    let primary = *parts.keys().next().expect("two parts or more");
    let prepares = parts
        .into_iter()
        .map(|(shard, commands)| {
            let op = ShardOp::Write(Command::TxnPrepare {
                txn,
                locks: locks_on(shard),
                primary,
                coordinator: node_id,
                deadline_ms,
                commands,
            });
            (shard, op)
        })
        .collect::<Vec<_>>();
    let shards: Vec<u32> = prepares.iter().map(|(s, _)| *s).collect();
    let mut refusal = None;
    // The commit version must lie above every participant's prepare (ADR 0023): their keys
    // were locked then, so the transaction's writes are each key's newest.
    let mut highest_prepare = 0;
    for reply in ask_all(ctx, prepares).await {
        match reply {
            ShardReply::Written(CommandResult::Decided {
                commit: true,
                version,
            }) => highest_prepare = highest_prepare.max(version),
            ShardReply::Written(CommandResult::Decided { commit: false, .. }) => {
                refusal.get_or_insert((
                    ErrorCode::TxnConflict,
                    format!("transaction {txn:#x} was aborted by a recovery"),
                ));
            }
            other => {
                let why = results_of(other).err().unwrap_or((
                    ErrorCode::Internal,
                    "a prepare answered with results".to_string(),
                ));
                refusal.get_or_insert(why);
            }
        }
    }
    let decide = Command::TxnDecide {
        txn,
        commit: refusal.is_none(),
        at_least: highest_prepare + 1,
    };
    let mut results = BTreeMap::new();
    let (committed, version) = match settle(ctx, primary, decide).await {
        ShardReply::Written(CommandResult::Many {
            version,
            results: own,
        }) => {
            results.insert(primary, own);
            (true, version)
        }
        ShardReply::Written(CommandResult::Decided { commit, version }) => (commit, version),
        other => {
            // The decision's fate is unknown: the participants stay prepared (their keys
            // locked) until a recovery asks the primary.
            let (code, message) = results_of(other).err().unwrap_or((
                ErrorCode::Internal,
                "a decision answered with results".to_string(),
            ));
            let code = if code == ErrorCode::Internal {
                code
            } else {
                ErrorCode::OutcomeUnknown
            };
            return Err((code, format!("transaction {txn:#x}'s decision: {message}")));
        }
    };
    let resolved: Vec<u32> = shards
        .iter()
        .copied()
        .filter(|&s| s != primary || !committed)
        .collect();
    let replies = futures_util::future::join_all(resolved.iter().map(|&shard| {
        let resolve = Command::TxnResolve {
            txn,
            commit: committed,
            version,
        };
        settle(ctx, shard, resolve)
    }))
    .await;
    let mut all_resolved = true;
    for (shard, reply) in resolved.into_iter().zip(replies) {
        match reply {
            ShardReply::Written(CommandResult::Many { results: part, .. }) => {
                results.insert(shard, part);
            }
            ShardReply::Written(CommandResult::Decided { .. }) => {}
            other => {
                all_resolved = false;
                let (code, message) = results_of(other)
                    .err()
                    .unwrap_or((ErrorCode::Internal, "unexpected resolve reply".to_string()));
                tracing::warn!(txn, shard, %code, message, "a participant did not resolve");
            }
        }
    }
    // The decision is forgotten only once nobody can ask for it: a participant left
    // prepared is resolved later by the primary's record.
    if all_resolved {
        settle(ctx, primary, Command::TxnForget { txn }).await;
    }
    if !committed {
        return Err(refusal.unwrap_or((
            ErrorCode::TxnConflict,
            format!("transaction {txn:#x} was aborted by a recovery"),
        )));
    }
    Ok(results)
}

/// Resolves the transactions prepared on `shard` when it opened (its locks on their keys are
/// already held): asks each one's primary for the decision — proposing an abort there if
/// there is none yet, once the transaction's deadline passed or at once when this node was
/// its coordinator (a coordinator does not survive its node's restart) — then applies it
/// here and releases the locks.
pub async fn recover(ctx: &CoreContext, shard: u32, node_id: u64, prepared: Vec<PreparedTxn>) {
    for record in prepared {
        let txn = record.txn;
        if record.coordinator != node_id {
            let now = kvs_core::sessions::wall_clock_ms();
            if record.deadline_ms > now {
                let wait = std::time::Duration::from_millis(record.deadline_ms - now);
                crate::runtime::sleep(wait).await;
            }
        }
        let decide = Command::TxnDecide {
            txn,
            commit: false,
            at_least: 0,
        };
        let (commit, version) = loop {
            match ask(ctx, record.primary, ShardOp::Write(decide.clone())).await {
                ShardReply::Written(CommandResult::Decided { commit, version }) => {
                    break (commit, version)
                }
                ShardReply::Written(CommandResult::Many { version, .. }) => break (true, version),
                other => {
                    tracing::warn!(txn, shard, ?other, "asking a transaction's primary again");
                    crate::runtime::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        };
        if record.primary != shard {
            let resolve = Command::TxnResolve {
                txn,
                commit,
                version,
            };
            let reply = ask(ctx, shard, ShardOp::Write(resolve)).await;
            if let ShardReply::Error(code, message) = reply {
                tracing::error!(txn, shard, %code, message, "resolving a prepared transaction");
                continue;
            }
        }
        tracing::info!(
            txn,
            shard,
            commit,
            "resolved a transaction prepared before a restart"
        );
        release(ctx, txn, [shard]).await;
    }
}

/// When a shard loop starts: shares the node's wait-for graph with its lock table, takes the
/// locks of the transactions its store has prepared, and resolves them in a task of their
/// own (see [`recover`]).
pub async fn hold_and_recover<D, R>(
    ctx: &std::rc::Rc<CoreContext>,
    driver: &mut crate::driver::ShardDriver<D, R>,
) where
    D: kvs_core::log::LogDisk + Clone,
{
    let txns = &ctx.transactions;
    driver
        .txns_mut()
        .configure(std::sync::Arc::clone(&txns.graph), txns.lock_timeout);
    let shard = driver.shard().shard_id();
    let prepared = match driver.shard().store().prepared_transactions().await {
        Ok(prepared) => prepared,
        Err(error) => {
            tracing::error!(shard, %error, "reading the prepared transactions failed");
            return;
        }
    };
    if prepared.is_empty() {
        return;
    }
    for record in &prepared {
        driver.txns_mut().hold_prepared(
            record.txn,
            crate::lock_names::of_steps(&record.commands),
            record.deadline_ms,
        );
    }
    tracing::info!(
        shard,
        count = prepared.len(),
        "resolving prepared transactions"
    );
    let (ctx, node_id) = (std::rc::Rc::clone(ctx), txns.node_id);
    crate::runtime::spawn_local(async move { recover(&ctx, shard, node_id, prepared).await })
        .detach();
}

/// A member that became its group's leader takes the locks of the transactions its store
/// holds prepared: nothing may write their keys before their decision. (Prepared records in
/// entries it has yet to apply are not seen here; see ADR 0022.)
pub async fn hold_prepared_on_leading<D, R>(driver: &mut crate::driver::ShardDriver<D, R>)
where
    D: kvs_core::log::LogDisk + Clone,
{
    match driver.shard().store().prepared_transactions().await {
        Ok(prepared) => {
            for record in prepared {
                driver.txns_mut().hold_prepared(
                    record.txn,
                    crate::lock_names::of_steps(&record.commands),
                    record.deadline_ms,
                );
            }
        }
        Err(error) => {
            let shard = driver.shard().shard_id();
            tracing::error!(shard, %error, "reading the prepared transactions failed");
        }
    }
}

/// On a node of a cluster, core 0's part in finding deadlocks across nodes (see
/// `deadlock`): every `GOSSIP_INTERVAL` it sends the node's lock waits to the other nodes,
/// takes theirs, and looks for cycles through everyone's.
pub fn gossip_waits(
    ctx: &CoreContext,
    links: &crate::cluster::transport::Links,
    last: &mut std::time::Instant,
) {
    let graph = &ctx.transactions.graph;
    for (node, edges) in links.take_waits() {
        graph.set_remote(node, edges);
    }
    if ctx.core != 0 || last.elapsed() < crate::deadlock::GOSSIP_INTERVAL {
        return;
    }
    *last = std::time::Instant::now();
    let edges = graph.local_edges();
    if !edges.is_empty() {
        links.send_waits(&edges);
    }
    graph.detect_across_nodes();
}

/// How often a leader looks for prepared transactions past their deadline.
const OVERDUE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A shard loop's watch on prepared transactions whose coordinator never finished them (it
/// died, or its node did before this one's replica saw the prepare): once such a transaction
/// is past its deadline, its primary is asked for the decision (recording an abort unless a
/// commit is there) and it is resolved here, so its locks do not stay forever.
#[derive(Default)]
pub struct Overdue {
    last: std::cell::Cell<Option<std::time::Instant>>,
    resolving: std::rc::Rc<std::cell::RefCell<BTreeSet<u64>>>,
}

impl Overdue {
    /// Called on the loop's ticks; looks once per `OVERDUE_INTERVAL`, on a leader.
    pub async fn look<D, R>(
        &self,
        ctx: &std::rc::Rc<CoreContext>,
        driver: &crate::driver::ShardDriver<D, R>,
    ) where
        D: kvs_core::log::LogDisk + Clone,
    {
        if self
            .last
            .get()
            .is_some_and(|last| last.elapsed() < OVERDUE_INTERVAL)
            || !driver.shard().is_leader()
        {
            return;
        }
        self.last.set(Some(std::time::Instant::now()));
        let Ok(prepared) = driver.shard().store().prepared_transactions().await else {
            return;
        };
        let now = kvs_core::sessions::wall_clock_ms();
        let shard = driver.shard().shard_id();
        for record in prepared {
            if record.deadline_ms > now || !self.resolving.borrow_mut().insert(record.txn) {
                continue;
            }
            tracing::info!(
                txn = record.txn,
                shard,
                "resolving a transaction past its deadline"
            );
            let (ctx, resolving) = (std::rc::Rc::clone(ctx), std::rc::Rc::clone(&self.resolving));
            let (txn, node_id) = (record.txn, ctx.transactions.node_id);
            crate::runtime::spawn_local(async move {
                recover(&ctx, shard, node_id, vec![record]).await;
                resolving.borrow_mut().remove(&txn);
            })
            .detach();
        }
    }
}
