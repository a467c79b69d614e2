//! Two-phase commit through three shards' stores with a power loss after every step, many
//! seeds: each shard's log holds the entries appended before the loss (the log is the
//! durable part; the page file loses what no checkpoint made durable, tearing writes), the
//! stores recover from their checkpoints and replay their logs, and recovery runs as a
//! restarted node runs it (`shards::txn_commit::recover`: the primary records an abort unless
//! a decision is there, each participant resolves by it). Whatever the step, the
//! transaction ends applied on every shard or on none, and applied whenever a commit was
//! decided before the loss.

use futures_lite::future::block_on;

use super::tests::open;
use crate::command::{BatchEncoder, Command};
use crate::log::sim::{SimDisk, SimRng};
use crate::state::CommandResult;

type Store = super::PagedStore<crate::log::sim::SimLogFile>;

const SHARDS: usize = 3;
const TXN: u64 = 77;

fn batch(command: Command) -> Vec<u8> {
    let mut encoder = BatchEncoder::new();
    encoder.push(&command);
    encoder.finish()
}

/// One shard: its disk, its store and its log (the entries appended so far).
struct Shard {
    disk: SimDisk,
    store: Option<Store>,
    log: Vec<Vec<u8>>,
}

impl Shard {
    fn new() -> Shard {
        let disk = SimDisk::new();
        let store = open(&disk, 32);
        Shard {
            disk,
            store: Some(store),
            log: Vec::new(),
        }
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }

    /// Appends an entry to the log and applies it; sometimes checkpoints after it.
    fn append(&mut self, command: Command, rng: &mut SimRng) -> CommandResult {
        self.log.push(batch(command));
        let index = self.log.len() as u64;
        let mut results =
            block_on(self.store().apply(index, 1, &self.log[index as usize - 1])).expect("apply");
        if rng.below(2) == 0 {
            block_on(
                self.store()
                    .checkpoint(None::<fn(usize) -> std::future::Ready<()>>),
            )
            .expect("checkpoint");
        }
        results.pop().expect("one result")
    }

    /// A power loss, then recovery: the checkpoint, and the log replayed after it.
    fn crash_and_recover(&mut self, rng: &mut SimRng) {
        drop(self.store.take());
        self.disk.crash(Some(rng));
        let store = open(&self.disk, 32);
        let from = store.applied_index() as usize;
        for (index, entry) in (1..).zip(&self.log).skip(from) {
            block_on(store.apply(index, 1, entry)).expect("replay");
        }
        self.store = Some(store);
    }
}

fn key(shard: usize) -> Vec<u8> {
    format!("k{shard}").into_bytes()
}

/// Runs the protocol's first `steps` steps (prepare on each shard, decide on the primary,
/// resolve on the others), then loses power everywhere, recovers, and checks.
fn run(steps: usize, commit_wanted: bool, seed: u64) {
    let mut rng = SimRng::new(seed);
    let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::new()).collect();
    for (i, shard) in shards.iter_mut().enumerate() {
        shard.append(
            Command::Put {
                key: key(i),
                value: b"before".to_vec(),
            },
            &mut rng,
        );
    }
    let mut done = 0;
    let mut decided = None;
    for (i, shard) in shards.iter_mut().enumerate() {
        if done == steps {
            break;
        }
        let prepare = Command::TxnPrepare {
            txn: TXN,
            locks: 0,
            primary: 0,
            coordinator: 1,
            deadline_ms: 0,
            commands: vec![Command::Put {
                key: key(i),
                value: b"after".to_vec(),
            }],
        };
        let vote = shard.append(prepare, &mut rng);
        assert!(matches!(vote, CommandResult::Decided { commit: true, .. }));
        done += 1;
    }
    if done < steps {
        let decide = Command::TxnDecide {
            txn: TXN,
            commit: commit_wanted,
            at_least: 0,
        };
        let result = shards[0].append(decide, &mut rng);
        decided = Some(match result {
            CommandResult::Decided { commit, version } => (commit, version),
            CommandResult::Many { version, .. } => (true, version),
            other => panic!("decide answered {other:?}"),
        });
        done += 1;
    }
    for shard in shards.iter_mut().skip(1) {
        if done == steps {
            break;
        }
        let (commit, version) = decided.expect("decided before resolving");
        let resolve = Command::TxnResolve {
            txn: TXN,
            commit,
            version,
        };
        shard.append(resolve, &mut rng);
        done += 1;
    }

    for shard in &mut shards {
        shard.crash_and_recover(&mut rng);
    }
    // Recovery, as a restarted node runs it.
    for i in 0..SHARDS {
        let prepared = block_on(shards[i].store().prepared_transactions()).unwrap();
        for record in prepared {
            assert_eq!(record.txn, TXN);
            let decide = Command::TxnDecide {
                txn: TXN,
                commit: false,
                at_least: 0,
            };
            let (commit, version) = match shards[0].append(decide, &mut rng) {
                CommandResult::Decided { commit, version } => (commit, version),
                CommandResult::Many { version, .. } => (true, version),
                other => panic!("decide answered {other:?}"),
            };
            if i != 0 {
                let resolve = Command::TxnResolve {
                    txn: TXN,
                    commit,
                    version,
                };
                shards[i].append(resolve, &mut rng);
            }
        }
    }
    let values: Vec<Vec<u8>> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| block_on(s.store().get(&key(i))).unwrap().unwrap().value)
        .collect();
    let applied = values.iter().filter(|v| v.as_slice() == b"after").count();
    assert!(
        applied == 0 || applied == SHARDS,
        "steps {steps}, seed {seed}: half applied: {values:?}"
    );
    if decided.map(|(commit, _)| commit) == Some(true) {
        assert_eq!(
            applied, SHARDS,
            "steps {steps}, seed {seed}: a decided commit was lost"
        );
    }
    if decided.map(|(commit, _)| commit) != Some(true) {
        assert_eq!(
            applied, 0,
            "steps {steps}, seed {seed}: applied with no commit decided"
        );
    }
    for shard in &shards {
        assert!(block_on(shard.store().prepared_transactions())
            .unwrap()
            .is_empty());
    }
}

#[test]
fn a_power_loss_after_any_step_of_two_phase_commit_ends_all_or_nothing() {
    let total_steps = SHARDS + 1 + (SHARDS - 1);
    for seed in 0..40 {
        for steps in 0..=total_steps {
            for commit_wanted in [true, false] {
                run(steps, commit_wanted, seed * 1000 + steps as u64);
            }
        }
    }
}
