//! Two-phase commit through three real shards (`ShardCore`: Raft, the log with group commit,
//! the paged store) on simulated disks, with a power loss at every step, many seeds (ADR 0022,
//! 0023). A seed picks the step the power fails at (after a step's entry is durable, or with
//! it proposed and not yet written), checkpoints at random steps, and how the loss tears
//! unsynced blocks; the shards reopen from their checkpoints and logs, and recovery runs as
//! a restarted node runs it (`txn_commit::recover`: the primary records an abort unless a
//! decision is there; each participant resolves by it).
//!
//! Checked for every seed: the transaction is applied on every shard or on none; applied
//! whenever its decision was acknowledged before the loss; applied at one version on every
//! shard (the commit version, ADR 0023); and a snapshot read across the three shards (the
//! shard ops a coordinator sends, `SnapshotBegin` then `AtSnapshot`) sees it whole or not at
//! all. `KVS_TXN_SIM_SEEDS=N` runs N seeds (default 100, about 40 s in a debug build), `KVS_TXN_SIM_SEED=N` replays one.

use futures_lite::future::block_on;
use kvs_core::command::Command;
use kvs_core::log::sim::{SimDisk, SimRng};
use kvs_core::state::{CommandResult, Versioned};
use kvs_core::store::StoreConfig;
use kvs_shards::shard::{ShardCore, ShardOp, ShardReply, ShardRequest, NO_ORIGIN};

const CONFIG: StoreConfig = StoreConfig {
    cache_pages: 32,
    hot_cache_bytes: 4 * 1024,
};
const SHARDS: u32 = 3;
const TXN: u64 = 0x5eed;

type Core = ShardCore<SimDisk, u64>;

fn key(shard: u32) -> Vec<u8> {
    format!("account{shard}").into_bytes()
}

/// One request through the shard as its loop runs it: taken, proposed, written and applied;
/// a read that needs the disk runs after.
fn ask(core: &mut Core, op: ShardOp) -> ShardReply {
    let mut round = core.take(vec![ShardRequest {
        op,
        reply: 1,
        origin: NO_ORIGIN,
    }]);
    let mut replies = std::mem::take(&mut round.replies);
    if let Some(batch) = round.batch.take() {
        replies.extend(core.propose(batch).replies);
    }
    let settled = block_on(core.settle());
    replies.extend(settled.replies);
    for request in round.deferred.into_iter().chain(settled.deferred) {
        replies.push((request.reply, block_on(core.read(&request.op))));
        core.disk_reads().finish(request.origin);
    }
    assert_eq!(replies.len(), 1, "one answer: {replies:?}");
    replies.pop().expect("one").1
}

/// Proposes a write and stops there: the power fails before its group is written.
fn propose_only(core: &mut Core, op: ShardOp) {
    let mut round = core.take(vec![ShardRequest {
        op,
        reply: 1,
        origin: NO_ORIGIN,
    }]);
    let batch = round.batch.take().expect("a write makes a batch");
    assert!(core.propose(batch).replies.is_empty());
}

fn write(command: Command) -> ShardOp {
    ShardOp::Write(command)
}

fn open(disk: &SimDisk, shard: u32) -> Core {
    block_on(ShardCore::open(disk.clone(), shard, CONFIG)).expect("the shard opens")
}

fn get(core: &mut Core, key: Vec<u8>) -> Option<Versioned> {
    match ask(core, ShardOp::Get { key }) {
        ShardReply::Value(found) => found,
        other => panic!("a GET answered {other:?}"),
    }
}

/// The accounts as a snapshot read across the shards sees them.
fn snapshot_read(cores: &mut [Core]) -> Vec<Option<Versioned>> {
    let began: Vec<u64> = cores
        .iter_mut()
        .map(|core| match ask(core, ShardOp::SnapshotBegin) {
            ShardReply::Snapshot(version) => version,
            other => panic!("a snapshot's start answered {other:?}"),
        })
        .collect();
    let ts = *began.iter().max().expect("three shards");
    cores
        .iter_mut()
        .zip(began)
        .enumerate()
        .map(|(shard, (core, began))| {
            let read = ShardOp::AtSnapshot {
                began,
                ts,
                keep_open: false,
                read: Box::new(ShardOp::Get {
                    key: key(shard as u32),
                }),
            };
            match ask(core, read) {
                ShardReply::Value(found) => found,
                other => panic!("a snapshot read answered {other:?}"),
            }
        })
        .collect()
}

/// The steps of the transaction, in order: prepare on each shard, the decision on the
/// primary (shard 0), the resolution on the others, forgetting the decision.
const STEPS: usize = SHARDS as usize + 1 + (SHARDS as usize - 1) + 1;

fn run_seed(seed: u64) {
    let mut rng = SimRng::new(seed);
    let disks: Vec<SimDisk> = (0..SHARDS).map(|_| SimDisk::new()).collect();
    let mut cores: Vec<Core> = (0..SHARDS).map(|s| open(&disks[s as usize], s)).collect();
    for (shard, core) in cores.iter_mut().enumerate() {
        let put = Command::Put {
            key: key(shard as u32),
            value: b"before".to_vec(),
        };
        assert!(matches!(ask(core, write(put)), ShardReply::Written(_)));
    }
    // The power fails at step `fail_at` (STEPS: after the last), with that step's entry
    // proposed and never written when `half`.
    let fail_at = rng.below(STEPS as u64 + 1) as usize;
    let half = rng.below(2) == 0;
    let mut decided: Option<(bool, u64)> = None;
    let mut highest_prepare = 0;
    for step in 0..STEPS {
        if rng.below(4) == 0 {
            let shard = rng.below(u64::from(SHARDS)) as usize;
            block_on(
                cores[shard]
                    .store()
                    .checkpoint(None::<fn(usize) -> std::future::Ready<()>>),
            )
            .expect("a checkpoint");
        }
        let (shard, command) = match step {
            s if s < SHARDS as usize => (
                s,
                Command::TxnPrepare {
                    txn: TXN,
                    locks: 0,
                    primary: 0,
                    coordinator: 1,
                    deadline_ms: 0,
                    commands: vec![Command::Put {
                        key: key(s as u32),
                        value: b"after".to_vec(),
                    }],
                },
            ),
            s if s == SHARDS as usize => (
                0,
                Command::TxnDecide {
                    txn: TXN,
                    commit: true,
                    at_least: highest_prepare + 1,
                },
            ),
            s if s < STEPS - 1 => {
                let (commit, version) = decided.expect("decided before resolving");
                (
                    s - SHARDS as usize,
                    Command::TxnResolve {
                        txn: TXN,
                        commit,
                        version,
                    },
                )
            }
            _ => (0, Command::TxnForget { txn: TXN }),
        };
        if step == fail_at {
            if half {
                propose_only(&mut cores[shard], write(command));
            }
            break;
        }
        match ask(&mut cores[shard], write(command)) {
            ShardReply::Written(CommandResult::Decided {
                commit: true,
                version,
            }) if step < SHARDS as usize => highest_prepare = highest_prepare.max(version),
            ShardReply::Written(CommandResult::Many { version, .. }) if step == SHARDS as usize => {
                decided = Some((true, version))
            }
            ShardReply::Written(_) => {}
            other => panic!("seed {seed}, step {step}: {other:?}"),
        }
    }

    // The power fails on every shard at once; each reopens from its disk.
    drop(cores);
    for disk in &disks {
        disk.crash(Some(&mut rng));
    }
    let mut cores: Vec<Core> = (0..SHARDS).map(|s| open(&disks[s as usize], s)).collect();
    // Recovery, as a restarted node runs it: each shard's prepared transactions are decided
    // by the primary (an abort unless a commit is recorded), then resolved there.
    for shard in 0..SHARDS as usize {
        let prepared = block_on(cores[shard].store().prepared_transactions()).expect("a listing");
        for record in prepared {
            assert_eq!(record.txn, TXN);
            let decide = Command::TxnDecide {
                txn: TXN,
                commit: false,
                at_least: 0,
            };
            let (commit, version) = match ask(&mut cores[0], write(decide)) {
                ShardReply::Written(CommandResult::Decided { commit, version }) => {
                    (commit, version)
                }
                ShardReply::Written(CommandResult::Many { version, .. }) => (true, version),
                other => panic!("seed {seed}: a recovery's decision answered {other:?}"),
            };
            if shard != 0 {
                let resolve = Command::TxnResolve {
                    txn: TXN,
                    commit,
                    version,
                };
                ask(&mut cores[shard], write(resolve));
            }
        }
    }

    let what = format!("seed {seed}, power lost at step {fail_at} (half: {half})");
    let values: Vec<Versioned> = (0..SHARDS)
        .map(|s| get(&mut cores[s as usize], key(s)).expect("every account exists"))
        .collect();
    let applied = values.iter().filter(|v| v.value == b"after").count();
    assert!(
        applied == 0 || applied == SHARDS as usize,
        "{what}: half applied: {values:?}"
    );
    if decided.is_some() {
        assert_eq!(
            applied, SHARDS as usize,
            "{what}: an acknowledged commit was lost"
        );
    }
    if applied == SHARDS as usize {
        assert!(
            values.iter().all(|v| v.version == values[0].version),
            "{what}: the shards applied it at different versions: {values:?}"
        );
        if let Some((_, version)) = decided {
            assert_eq!(
                values[0].version, version,
                "{what}: not at the decided version"
            );
        }
    }
    let seen = snapshot_read(&mut cores);
    assert_eq!(
        seen.into_iter()
            .map(|v| v.expect("exists").value)
            .collect::<Vec<_>>(),
        values.iter().map(|v| v.value.clone()).collect::<Vec<_>>(),
        "{what}: a snapshot read"
    );
    for core in &cores {
        assert!(
            block_on(core.store().prepared_transactions())
                .expect("a listing")
                .is_empty(),
            "{what}: left prepared"
        );
    }
}

#[test]
fn two_phase_commit_through_real_shards_survives_a_power_loss_at_every_step() {
    if let Some(seed) = std::env::var("KVS_TXN_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return run_seed(seed);
    }
    let seeds: u64 = std::env::var("KVS_TXN_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    for seed in 0..seeds {
        run_seed(seed);
    }
}
