//! The store against a model (`BTreeMap`), and crash recovery on a disk that tears writes.

use std::collections::BTreeMap;

use futures_lite::future::block_on;
use proptest::prelude::*;

use super::verify::verify;
use super::*;
use crate::command::{BatchEncoder, Command};
use crate::log::sim::{FaultOn, SimDisk, SimRng};
use crate::state::CommandResult;

type Store = PagedStore<crate::log::sim::SimLogFile>;
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

pub(super) fn open(disk: &SimDisk, cache_pages: usize) -> Store {
    // A small hot-key cache, so the model tests also check that it never disagrees with
    // the tree.
    let config = StoreConfig {
        cache_pages,
        hot_cache_bytes: 16 * 1024,
    };
    block_on(PagedStore::open(disk, 0, config)).unwrap()
}

/// With a hot-key cache large enough to hold every key the test uses.
fn open_with_hot_cache(disk: &SimDisk, cache_pages: usize) -> Store {
    let config = StoreConfig {
        cache_pages,
        hot_cache_bytes: 1 << 20,
    };
    block_on(PagedStore::open(disk, 0, config)).unwrap()
}

/// Runs a store into a power loss: applies `entries` as log entries 1, 2, ... with a write
/// fault armed at entry `crash_at` and checkpoints taken at random, until a write fails;
/// then the disk loses what was not synced (tearing writes). Returns how many entries
/// reached the log, which is written before an entry is applied: the failed one included.
pub(super) fn apply_until_crash(
    disk: &SimDisk,
    store: Store,
    rng: &mut SimRng,
    crash_at: u64,
    entries: &[Vec<u8>],
) -> usize {
    let mut logged = 0;
    for (index, encoded) in (1..).zip(entries) {
        logged += 1;
        if index == crash_at {
            // Crash in the middle of this entry's writes or of a checkpoint.
            disk.fail_after(FaultOn::Write, 1 + rng.below(20), 5);
        }
        if block_on(store.apply(index, 1, encoded)).is_err() {
            break;
        }
        if rng.below(3) == 0
            && block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).is_err()
        {
            break;
        }
    }
    drop(store);
    disk.crash(Some(rng));
    logged
}

/// Applies the first `logged` of `entries` (log entries 1, 2, ...) to a recovered store: what
/// recovery does with the log after the checkpoint.
pub(super) fn replay(store: &Store, entries: &[Vec<u8>], logged: usize) {
    for (index, encoded) in (1..).zip(&entries[..logged]) {
        block_on(store.apply(index, 1, encoded)).unwrap();
    }
}

fn batch(commands: &[Command]) -> Vec<u8> {
    let mut encoder = BatchEncoder::new();
    for c in commands {
        encoder.push(c);
    }
    encoder.finish()
}

fn checkpoint(store: &Store) -> Option<Checkpointed> {
    block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).unwrap()
}

fn apply_to_model(model: &mut Model, command: &Command) {
    match command {
        Command::Put { key, value } => {
            model.insert(key.clone(), value.clone());
        }
        Command::Delete { key } => {
            model.remove(key);
        }
        _ => unreachable!("the tests use puts and deletes"),
    }
}

fn assert_matches(store: &Store, model: &Model) {
    for (key, value) in model {
        let got = block_on(store.get(key)).unwrap();
        assert_eq!(got.map(|v| v.value).as_ref(), Some(value), "key {key:?}");
    }
    let all = block_on(store.scan(b"", None, usize::MAX)).unwrap();
    let expected: Vec<(Vec<u8>, Vec<u8>)> =
        model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all.len(), expected.len());
    assert!(all == expected, "a full scan returns the model in order");
    assert_eq!(store.key_count(), model.len() as u64);
}

/// A key of `len` bytes from `n`; long keys make small fanouts and tall trees.
fn key(n: u64, len: usize) -> Vec<u8> {
    let mut k = format!("{n:08}").into_bytes();
    k.resize(len.max(8), b'.');
    k
}

fn value(n: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n as usize + i) as u8).collect()
}

/// Puts of 16-byte keys `range` with values of `len` bytes.
fn puts(range: std::ops::Range<u64>, len: usize) -> Vec<Command> {
    range
        .map(|k| Command::Put {
            key: key(k, 16),
            value: value(k, len),
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Put(u64, usize),
    Delete(u64),
    Checkpoint,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..400, prop_oneof![8 => 0usize..200, 1 => 1000usize..1600, 1 => 3000usize..20_000])
            .prop_map(|(k, len)| Op::Put(k, len)),
        4 => (0u64..400).prop_map(Op::Delete),
        1 => Just(Op::Checkpoint),
    ]
}

fn run_ops(ops: &[Op], key_len: usize, cache_pages: usize) {
    let disk = SimDisk::new();
    let store = open(&disk, cache_pages);
    let mut model = Model::new();
    for (i, op) in ops.iter().enumerate() {
        let index = i as u64 + 1;
        let command = match *op {
            Op::Put(k, len) => Command::Put {
                key: key(k, key_len),
                value: value(k + index, len),
            },
            Op::Delete(k) => Command::Delete {
                key: key(k, key_len),
            },
            Op::Checkpoint => {
                checkpoint(&store);
                store.skip(index, 1);
                continue;
            }
        };
        block_on(store.apply(index, 1, &batch(std::slice::from_ref(&command)))).unwrap();
        apply_to_model(&mut model, &command);
    }
    assert_matches(&store, &model);
    checkpoint(&store);
    let report = block_on(verify(&disk, 0)).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.keys, model.len() as u64);
    // What the checkpoint holds is what a restart sees.
    drop(store);
    disk.crash(None);
    let store = open(&disk, cache_pages);
    assert_matches(&store, &model);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn tree_matches_a_model(ops in proptest::collection::vec(op_strategy(), 1..600)) {
        run_ops(&ops, 8, 24);
    }

    #[test]
    fn tall_trees_with_long_keys_match_a_model(ops in proptest::collection::vec(op_strategy(), 1..600)) {
        // 400-byte keys: about nine per inner page, so a few hundred keys make three levels.
        run_ops(&ops, 400, 16);
    }
}

#[test]
fn splits_and_merges_at_every_level() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    let mut model = Model::new();
    let mut index = 0;
    let mut apply = |commands: Vec<Command>, model: &mut Model| {
        index += 1;
        block_on(store.apply(index, 1, &batch(&commands))).unwrap();
        for c in &commands {
            apply_to_model(model, c);
        }
    };
    for round in 0..20u64 {
        let puts = (0..200u64)
            .map(|i| Command::Put {
                key: key(i * 20 + round, 300),
                value: value(i, 64),
            })
            .collect();
        apply(puts, &mut model);
    }
    let height = store.stats().tree_height;
    assert!(
        height >= 3,
        "4000 keys of 300 bytes make at least three levels, got {height}"
    );
    checkpoint(&store);
    // Delete nearly everything, in an order that empties whole subtrees.
    for round in 0..20u64 {
        let deletes = (0..200u64)
            .filter(|i| !(round == 19 && i % 50 == 0))
            .map(|i| Command::Delete {
                key: key(i * 20 + round, 300),
            })
            .collect();
        apply(deletes, &mut model);
        if round % 5 == 0 {
            checkpoint(&store);
        }
    }
    assert_matches(&store, &model);
    assert!(store.stats().tree_height < height, "merges shrank the tree");
    checkpoint(&store);
    let report = block_on(verify(&disk, 0)).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // Space from deletes is reused: writing the same data again does not grow the file.
    let pages = store.stats().page_count;
    for round in 0..4u64 {
        let puts = (0..200u64)
            .map(|i| Command::Put {
                key: key(i * 20 + round, 300),
                value: value(i, 64),
            })
            .collect();
        apply(puts, &mut model);
        checkpoint(&store);
    }
    assert!(
        store.stats().page_count <= pages + 8,
        "freed pages were reused"
    );
}

#[test]
fn data_far_larger_than_the_cache_stays_within_it() {
    let disk = SimDisk::new();
    let cache = 16;
    let store = open(&disk, cache);
    let mut model = Model::new();
    let mut rng = SimRng::new(5);
    for index in 1..=200u64 {
        let commands: Vec<Command> = (0..20)
            .map(|_| {
                let k = rng.below(3000);
                Command::Put {
                    key: key(k, 16),
                    value: value(k, 200),
                }
            })
            .collect();
        block_on(store.apply(index, 1, &batch(&commands))).unwrap();
        for c in &commands {
            apply_to_model(&mut model, c);
        }
        // Back-pressure checkpoints keep dirty pages below the budget.
        assert!(store.stats().cached_pages <= cache as u64 + 8);
    }
    assert!(
        store.stats().page_count > 10 * cache as u64,
        "the data is larger than the cache"
    );
    assert_matches(&store, &model);
    assert!(store.stats().evictions > 0);
}

#[test]
fn a_corrupt_page_is_reported_with_its_id() {
    let disk = SimDisk::new();
    let store = open(&disk, 16);
    let commands = puts(0..300, 100);
    block_on(store.apply(1, 1, &batch(&commands))).unwrap();
    checkpoint(&store);
    let root = store.state.borrow().root;
    drop(store);
    disk.with_file(PAGE_FILE, |bytes| {
        bytes[root as usize * PAGE_SIZE + 100] ^= 0xFF;
    });
    let report = block_on(verify(&disk, 0)).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&format!("page {root}"))),
        "{:?}",
        report.problems
    );
    let store = open(&disk, 16);
    match block_on(store.get(&key(1, 16))) {
        Err(StoreError::Corrupt { page, shard: 0, .. }) => assert_eq!(page, root),
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

/// The seqs of the checkpoints in the two meta slots (None: the slot holds none).
fn meta_slots(disk: &SimDisk) -> [Option<u64>; 2] {
    let file = block_on(disk.open(PAGE_FILE, false)).unwrap();
    [0u64, 1].map(|slot| {
        let bytes = block_on(file.read_at(slot * PAGE_SIZE as u64, PAGE_SIZE)).unwrap();
        page::decode_meta(&bytes, slot).ok().map(|m| m.seq)
    })
}

/// A failed checkpoint leaves the previous one durable, and the next one writes its meta
/// page into the slot the durable one does not use: a torn meta write then falls back to
/// it, never to an older checkpoint whose freed pages may have been reused. (Found in
/// review: the slot came from the sequence number the failed checkpoint had used up.)
#[test]
fn a_failed_checkpoint_keeps_the_previous_one_and_the_next_succeeds() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    block_on(store.apply(1, 1, &batch(&puts(0..100, 100)))).unwrap();
    let first = checkpoint(&store).unwrap();
    block_on(store.apply(2, 1, &batch(&puts(100..200, 100)))).unwrap();
    disk.fail_after(FaultOn::Write, 3, 28);
    let failed = block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>));
    assert!(
        matches!(failed, Err(StoreError::DiskFull { .. })),
        "{failed:?}"
    );
    assert_eq!(store.durable_checkpoint(), Some(first));
    // Space is back: the next checkpoint writes everything.
    let second = checkpoint(&store).unwrap();
    assert_eq!(second.applied_index, 2);
    let slots = meta_slots(&disk);
    assert!(
        slots.contains(&Some(first.seq)) && slots.contains(&Some(second.seq)),
        "the durable checkpoint {} and the new one {} must both be in the slots: {slots:?}",
        first.seq,
        second.seq
    );
    drop(store);
    disk.crash(None);
    let store = open(&disk, 64);
    assert_eq!(store.key_count(), 200);
    assert!(block_on(verify(&disk, 0)).unwrap().is_clean());
}

/// The crash loop: random batches, checkpoints at random moments, a crash at a random write
/// (torn: each unsynced block may or may not have landed). Recovery loads the checkpoint and
/// applies the durable log after it; the result must equal the model of every entry.
#[test]
fn crash_recovery_loop() {
    let mut from_checkpoint = 0;
    let mut mid_entry = 0;
    for seed in 0..300u64 {
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new();
        let store = open(&disk, 8 + rng.below(24) as usize);
        let entries = 5 + rng.below(40);
        let crash_at = rng.below(entries);
        let batches: Vec<Vec<Command>> = (1..=entries)
            .map(|index| {
                (0..1 + rng.below(30))
                    .map(|_| {
                        let k = rng.below(500);
                        if rng.below(4) == 0 {
                            Command::Delete { key: key(k, 24) }
                        } else {
                            let len = if rng.below(10) == 0 {
                                2000 + rng.below(9000)
                            } else {
                                rng.below(300)
                            };
                            Command::Put {
                                key: key(k, 24),
                                value: value(k + index, len as usize),
                            }
                        }
                    })
                    .collect()
            })
            .collect();
        let encoded: Vec<Vec<u8>> = batches.iter().map(|c| batch(c)).collect();
        let logged = apply_until_crash(&disk, store, &mut rng, crash_at, &encoded);
        // Every entry in the (durable) log counts, applied before the crash or not.
        let mut model = Model::new();
        for c in batches[..logged].iter().flatten() {
            apply_to_model(&mut model, c);
        }
        let store = open(&disk, 32);
        from_checkpoint += u32::from(store.applied_index() > 0);
        mid_entry += u32::from(store.state.borrow().partial_commands > 0);
        replay(&store, &encoded, logged);
        assert_matches(&store, &model);
        checkpoint(&store);
        let report = block_on(verify(&disk, 0)).unwrap();
        assert!(report.is_clean(), "seed {seed}: {:?}", report.problems);
    }
    // The loop reaches the interesting cases: recovery from a checkpoint, and from one taken
    // in the middle of an entry.
    assert!(
        from_checkpoint > 100,
        "{from_checkpoint} recoveries started from a checkpoint"
    );
    assert!(mid_entry > 0, "{mid_entry} recoveries started mid-entry");
}

#[test]
fn a_checkpoint_between_two_commands_of_one_entry_replays_only_the_rest() {
    let disk = SimDisk::new();
    // A tiny pool: back-pressure forces checkpoints in the middle of the big entry.
    let store = open(&disk, 16);
    let commands = puts(0..400, 300);
    let entry = batch(&commands);
    block_on(store.apply(1, 1, &entry)).unwrap();
    let checkpoints = store.stats().checkpoints;
    assert!(checkpoints > 0, "back-pressure checkpoints ran mid-entry");
    let durable = store.durable_checkpoint().unwrap();
    assert_eq!(
        durable.applied_index, 0,
        "the entry was not complete at any of them"
    );
    drop(store);
    disk.crash(None);
    let store = open(&disk, 16);
    assert!(store.state.borrow().partial_commands > 0);
    let results = block_on(store.apply(1, 1, &entry)).unwrap();
    assert!(results.contains(&CommandResult::Skipped));
    assert_eq!(store.key_count(), 400);
}

#[test]
fn command_semantics_match_the_memory_store() {
    use crate::state::{MemStore, StateMachine};
    let disk = SimDisk::new();
    let store = open(&disk, 32);
    let mut mem = MemStore::new();
    let big = vec![b'x'; 5000];
    let commands = vec![
        Command::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        },
        Command::Increment {
            key: b"a".to_vec(),
            delta: 41,
        },
        Command::Increment {
            key: b"n".to_vec(),
            delta: -3,
        },
        Command::Append {
            key: b"s".to_vec(),
            value: big.clone(),
        },
        Command::Append {
            key: b"s".to_vec(),
            value: b"tail".to_vec(),
        },
        Command::GetAndPut {
            key: b"s".to_vec(),
            value: b"short".to_vec(),
        },
        Command::Cas {
            key: b"a".to_vec(),
            expected_version: 1,
            value: Some(b"no".to_vec()),
        },
        Command::Cas {
            key: b"a".to_vec(),
            expected_version: 2,
            value: None,
        },
        Command::PutIfExists {
            key: b"zz".to_vec(),
            value: b"v".to_vec(),
        },
        Command::PutIfExists {
            key: b"n".to_vec(),
            value: b"v".to_vec(),
        },
        Command::PutMany {
            pairs: vec![(b"p".to_vec(), big.clone()), (b"q".to_vec(), b"2".to_vec())],
        },
        Command::Increment {
            key: b"p".to_vec(),
            delta: 1,
        },
        Command::Delete { key: b"q".to_vec() },
        Command::Delete { key: b"q".to_vec() },
    ];
    let encoded = batch(&commands);
    let ours = block_on(store.apply(1, 1, &encoded)).unwrap();
    let theirs = mem.apply(1, &encoded).unwrap();
    assert_eq!(ours, theirs);
    for k in [&b"a"[..], b"n", b"s", b"p", b"q", b"zz"] {
        assert_eq!(block_on(store.get(k)).unwrap(), mem.get(k), "key {k:?}");
    }
    assert_eq!(
        block_on(store.scan(b"", None, 100)).unwrap(),
        mem.scan(b"", None, 100)
    );
    assert_eq!(
        block_on(store.scan(b"n", Some(b"q"), 100)).unwrap(),
        mem.scan(b"n", Some(b"q"), 100)
    );
}

#[test]
fn the_page_file_grows_in_aligned_steps() {
    for from in [0, 4096, 1 << 20, 44_928_000, 3 << 30] {
        for needed in [from + 1, from + 4096, from + (5 << 20), from + (200 << 20)] {
            let to = growth_target(from, needed);
            assert!(to >= needed);
            assert_eq!(to % (1 << 20), 0, "grow {from} to {to} for {needed}");
            assert!(to - needed < FILE_GROWTH_MAX);
        }
    }
}

/// Reads between writes: the hot-key cache in front of the tree must follow every write.
#[test]
fn the_hot_key_cache_follows_every_write() {
    let disk = SimDisk::new();
    let store = open(&disk, 16);
    let mut model = Model::new();
    let mut rng = SimRng::new(9);
    for index in 1..=2000u64 {
        let k = rng.below(50);
        let command = match rng.below(5) {
            0 => Command::Delete { key: key(k, 8) },
            1 => Command::Put {
                key: key(k, 8),
                value: value(index, 2000 + rng.below(3000) as usize), // an extent
            },
            _ => Command::Put {
                key: key(k, 8),
                value: value(index, rng.below(200) as usize),
            },
        };
        block_on(store.apply(index, 1, &batch(std::slice::from_ref(&command)))).unwrap();
        apply_to_model(&mut model, &command);
        let probe = key(rng.below(50), 8);
        let expected = model.get(&probe);
        if let Some(got) = store.try_get(&probe) {
            assert_eq!(
                got.map(|v| v.value).as_ref(),
                expected,
                "try_get after write {index}"
            );
        }
        let got = block_on(store.get(&probe)).unwrap();
        assert_eq!(
            got.map(|v| v.value).as_ref(),
            expected,
            "get after write {index}"
        );
    }
    assert!(store.stats().hot_hits > 100, "the cache served reads");
}

/// Writes to keys the hot cache knows go straight to the leaf it names. Splits, merges,
/// checkpoints (a new epoch moves every leaf on its next write) and restarts make those names
/// stale; the tree must still equal the model, and the fast path must have been taken.
#[test]
fn writes_through_leaf_hints_follow_splits_merges_and_checkpoints() {
    let disk = SimDisk::new();
    let mut store = open_with_hot_cache(&disk, 64);
    let mut model = Model::new();
    let mut rng = SimRng::new(21);
    let mut index = 0u64;
    let mut hinted = 0;
    for round in 0..40u64 {
        let mut commands = Vec::new();
        for _ in 0..50 {
            let k = rng.below(400);
            let command = match rng.below(10) {
                0 => Command::Delete { key: key(k, 16) },
                // Same size as most values: the leaf's size does not change.
                1..=6 => Command::Put {
                    key: key(k, 16),
                    value: value(round + k, 100),
                },
                // Other sizes: the leaf may fill up or empty out.
                _ => Command::Put {
                    key: key(k, 16),
                    value: value(round, rng.below(400) as usize),
                },
            };
            apply_to_model(&mut model, &command);
            commands.push(command);
        }
        index += 1;
        block_on(store.apply(index, 1, &batch(&commands))).unwrap();
        // Reads name the leaves.
        for _ in 0..100 {
            let probe = key(rng.below(400), 16);
            let got = block_on(store.get(&probe)).unwrap();
            assert_eq!(got.map(|v| v.value).as_ref(), model.get(&probe));
            let _ = store.try_get(&probe);
        }
        if round % 7 == 3 {
            checkpoint(&store).unwrap();
        }
        if round % 13 == 12 {
            // A restart after a checkpoint (the store holds no log: what a crash loses here
            // the shard would replay from its log).
            checkpoint(&store).unwrap();
            hinted += store.stats().hinted_writes;
            drop(store);
            disk.crash(None);
            store = open_with_hot_cache(&disk, 64);
        }
    }
    assert_matches(&store, &model);
    hinted += store.stats().hinted_writes;
    assert!(hinted > 200, "writes took the hinted path: {hinted}");
    checkpoint(&store).unwrap();
    assert!(block_on(verify(&disk, 0)).unwrap().is_clean());
    drop(store);
    disk.crash(None);
    let store = open_with_hot_cache(&disk, 64);
    assert_matches(&store, &model);
}

/// Written keys are cached with their leaf, and after a checkpoint seals the leaf only the
/// first write walks the tree to copy it: the others follow the copy.
#[test]
fn after_a_checkpoint_one_write_per_leaf_walks_the_tree() {
    let disk = SimDisk::new();
    let store = open_with_hot_cache(&disk, 64);
    // Twenty keys of 100-byte values: one leaf.
    block_on(store.apply(1, 1, &batch(&puts(0..20, 100)))).unwrap();
    assert_eq!(store.stats().tree_height, 1);
    let before = store.stats().hinted_writes;
    block_on(store.apply(2, 1, &batch(&puts(0..20, 100)))).unwrap();
    assert_eq!(
        store.stats().hinted_writes - before,
        20,
        "written keys are cached with their place"
    );
    checkpoint(&store).unwrap();
    let before = store.stats().hinted_writes;
    block_on(store.apply(3, 1, &batch(&puts(0..20, 100)))).unwrap();
    assert_eq!(
        store.stats().hinted_writes - before,
        19,
        "the first write copies the sealed leaf, the rest follow it"
    );
    let mut model = Model::new();
    for command in puts(0..20, 100) {
        apply_to_model(&mut model, &command);
    }
    assert_matches(&store, &model);
}

/// A command is durable in the log before it is applied, so a back-pressure checkpoint that
/// fails for lack of space must not fail it: the store goes over its budget, asks the shard
/// to refuse new writes, and lifts that once a checkpoint succeeds.
#[test]
fn a_full_disk_during_back_pressure_fails_no_applied_command() {
    let disk = SimDisk::new();
    let store = open(&disk, 16);
    let commands = puts(0..200, 300);
    disk.fail_after(FaultOn::Write, 2, 28);
    block_on(store.apply(1, 1, &batch(&commands))).unwrap();
    assert_eq!(store.key_count(), 200);
    let (disk_full, _) = store.write_refusal().expect("new writes are refused");
    assert!(disk_full);
    // Space is back: the next checkpoint succeeds and writes are welcome again.
    checkpoint(&store).unwrap();
    assert!(store.write_refusal().is_none());
    drop(store);
    disk.crash(None);
    let store = open(&disk, 16);
    assert_eq!(store.key_count(), 200);
    assert!(block_on(verify(&disk, 0)).unwrap().is_clean());
}

/// A write tagged with a session applies once: its retry gets the first result (even across
/// a checkpoint and a reopen, as on another replica), a write the client has the reply to is
/// forgotten, and an expiry removes sessions not heard from.
#[test]
fn a_retried_session_write_applies_once() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    let once = |seq: u64, acked_below: u64, at_ms: u64, command: Command| Command::Once {
        session: 42,
        seq,
        acked_below,
        at_ms,
        command: Box::new(command),
    };
    let incr = Command::Increment {
        key: b"n".to_vec(),
        delta: 5,
    };
    let apply = |store: &Store, index: u64, command: Command| {
        block_on(store.apply(index, 1, &batch(&[command])))
            .unwrap()
            .remove(0)
    };
    assert_eq!(
        apply(&store, 1, once(1, 1, 1000, incr.clone())),
        CommandResult::Integer { value: 5 }
    );
    // The retry, in another entry: the same answer, and no second increment.
    assert_eq!(
        apply(&store, 2, once(1, 1, 1000, incr.clone())),
        CommandResult::Integer { value: 5 }
    );
    assert_eq!(
        apply(&store, 3, once(2, 1, 1001, incr.clone())),
        CommandResult::Integer { value: 10 }
    );
    checkpoint(&store);
    drop(store);
    let store = open(&disk, 64);
    assert_eq!(
        apply(&store, 4, once(2, 2, 1002, incr.clone())),
        CommandResult::Integer { value: 10 }
    );
    // The client said it has the reply to 1: a write 1 now is not applied.
    assert!(matches!(
        apply(&store, 5, once(1, 2, 1003, incr.clone())),
        CommandResult::OutcomeUnknown { .. }
    ));
    assert_eq!(block_on(store.get(b"n")).unwrap().unwrap().value, b"10");
    assert_eq!(block_on(store.session_count()).unwrap(), 1);
    assert_eq!(
        apply(&store, 6, Command::ExpireSessions { before_ms: 1003 }),
        CommandResult::Integer { value: 0 }
    );
    assert_eq!(
        apply(&store, 7, Command::ExpireSessions { before_ms: 1004 }),
        CommandResult::Integer { value: 1 }
    );
    assert_eq!(block_on(store.session_count()).unwrap(), 0);
    // Forgotten, a session starts afresh.
    assert_eq!(
        apply(&store, 8, once(3, 3, 2000, incr)),
        CommandResult::Integer { value: 15 }
    );
    // Session rows are not keys: a scan of the key-value space does not see them.
    assert_eq!(block_on(store.scan(b"", None, 100)).unwrap().len(), 1);
}

/// A pool of `pages` pages (at 4 KiB each) filled with `count` entries of `key_len`-byte keys
/// and `value_len`-byte values, then measured: its capacity in pages and the bytes a page
/// was measured to cost.
fn fitted_pool(pages: usize, count: u64, key_len: usize, value_len: usize) -> (usize, usize) {
    let mut st = tree::State::new(pages);
    for i in 0..count {
        let n = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let entry = page::Entry {
            key: key::Key::new(&key(n, key_len)),
            version: i,
            value: page::Value::Inline(vec![7; value_len]),
        };
        assert!(st.insert(entry, i + 1).is_ok(), "every page is resident");
    }
    for _ in 0..16 {
        st.fit_budget();
    }
    (st.capacity, st.page_memory)
}

#[test]
fn the_pool_holds_as_many_pages_as_its_memory_budget_fits() {
    // Short keys and empty values (an index's entries) cost more in memory than on disk:
    // fewer pages fit; 1000-byte values cost less: more do, up to twice the nominal count.
    let (index_pages, index_memory) = fitted_pool(4096, 100_000, 30, 0);
    assert!(
        index_memory > page::PAGE_SIZE * 5 / 4,
        "{index_memory} bytes a page"
    );
    assert!(index_pages < 4096 * 4 / 5, "{index_pages} pages");
    let (value_pages, value_memory) = fitted_pool(4096, 20_000, 16, 1000);
    assert!(
        value_memory < page::PAGE_SIZE,
        "{value_memory} bytes a page"
    );
    assert!(
        value_pages > 4096 && value_pages <= 8192,
        "{value_pages} pages"
    );
    // Whatever the entries, pages times their cost stays within the budget.
    for (pages, memory) in [(index_pages, index_memory), (value_pages, value_memory)] {
        assert!(pages * memory <= 4096 * page::PAGE_SIZE);
    }
}

#[test]
fn a_lookup_resumed_where_it_last_stopped_follows_a_split_of_that_leaf() {
    // A key's walk stops at a page that is not resident; the page is loaded, and then a write
    // splits it, moving the key to a new page. The key's next lookup must find it: the
    // split changed the tree's shape, so the walk starts at the root again.
    let mut st = tree::State::new(4096);
    let entry = |n: u64| page::Entry {
        key: key::Key::new(&key(n * 10, 16)),
        version: n,
        value: page::Value::Inline(vec![7; 100]),
    };
    for n in 0..200 {
        assert!(st.insert(entry(n), n + 1).is_ok());
    }
    let wanted = key(1000, 16);
    assert!(st.lookup(&wanted).unwrap().is_some());
    let leaf = st.last_place.leaf;
    assert_ne!(leaf, 0);
    // Evict the key's leaf, and let its lookup stop there.
    let frame = st.frames.remove(&leaf).expect("resident");
    st.dirty -= usize::from(frame.dirty);
    assert_eq!(st.lookup(&wanted), Err(tree::Miss(leaf)));
    st.insert_loaded(leaf, frame.node, frame.lsn, frame.epoch);
    // Keys just below the wanted one fill its leaf until it splits.
    let mut lsn = 1000;
    for n in 1..=30 {
        lsn += 1;
        let below = page::Entry {
            key: key::Key::new(&key(1000 - n, 16)),
            version: lsn,
            value: page::Value::Inline(vec![8; 100]),
        };
        assert!(st.insert(below, lsn).is_ok());
    }
    let found = st.lookup(&wanted).unwrap();
    assert!(found.is_some(), "the key moved with the split and is found");
    assert_ne!(
        st.last_place.leaf, leaf,
        "the split moved it to the new page"
    );
}
