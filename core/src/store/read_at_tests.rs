//! Reads at a timestamp against a model: random writes (small values and values large
//! enough for extents), deletes and checkpoints, with snapshots opened and closed at random;
//! every read at an open snapshot must equal the model's copy of the data taken when it
//! opened. And the history keeps the page file from reusing an extent a snapshot can read,
//! then gives it back.

use std::collections::BTreeMap;

use futures_lite::future::block_on;

use super::tests::open;
use crate::command::{BatchEncoder, Command};
use crate::log::sim::{SimDisk, SimRng};

/// The key-value pairs as the model holds them at one moment.
type Data = BTreeMap<Vec<u8>, Vec<u8>>;

fn batch(commands: &[Command]) -> Vec<u8> {
    let mut encoder = BatchEncoder::new();
    commands.iter().for_each(|c| encoder.push(c));
    encoder.finish()
}

fn value(rng: &mut SimRng, n: u64) -> Vec<u8> {
    // One write in six is large enough for an extent of its own.
    let len = if rng.below(6) == 0 { 6000 } else { 20 };
    let mut value = format!("{n}:").into_bytes();
    value.resize(len, b'.');
    value
}

#[test]
fn reads_at_a_snapshot_see_the_data_as_it_was_when_it_opened() {
    for seed in 0..20u64 {
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new();
        let store = open(&disk, 32);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut open_snapshots: Vec<(u64, Data)> = Vec::new();
        // Snapshots begun and not yet fixed, and the data after every write since the
        // oldest of them began (a snapshot is fixed at any version at or above its start).
        let mut begun: Vec<u64> = Vec::new();
        let mut states: Vec<(u64, Data)> = Vec::new();
        let mut index = 0;
        for step in 0..600u64 {
            match rng.below(22) {
                0 => {
                    let ts = store.snapshot_open(0);
                    open_snapshots.push((ts, model.clone()));
                }
                4 => {
                    let began = store.snapshot_begin(0);
                    begun.push(began);
                    states.push((began, model.clone()));
                }
                5 if !begun.is_empty() => {
                    let began = begun.swap_remove(rng.below(begun.len() as u64) as usize);
                    if rng.below(5) == 0 {
                        store.snapshot_abandon(began);
                    } else {
                        let later: Vec<_> = states.iter().filter(|(v, _)| *v >= began).collect();
                        let (ts, then) = later[rng.below(later.len() as u64) as usize].clone();
                        assert!(store.snapshot_fix(began, ts));
                        open_snapshots.push((ts, then));
                    }
                    if begun.is_empty() {
                        states.clear();
                    }
                }
                1 if !open_snapshots.is_empty() => {
                    let i = rng.below(open_snapshots.len() as u64) as usize;
                    let (ts, _) = open_snapshots.swap_remove(i);
                    store.snapshot_close(ts);
                }
                2 => {
                    block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>))
                        .unwrap();
                }
                3 if !open_snapshots.is_empty() => {
                    let (ts, then) =
                        &open_snapshots[rng.below(open_snapshots.len() as u64) as usize];
                    let start = vec![b'k', rng.below(30) as u8];
                    let limit = 1 + rng.below(12) as usize;
                    let got = block_on(store.scan_at(&start, None, limit, *ts)).unwrap();
                    let want: Vec<(Vec<u8>, Vec<u8>)> = then
                        .range(start.clone()..)
                        .take(limit)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    assert_eq!(got, want, "seed {seed}, step {step}: scan at {ts}");
                }
                _ => {
                    let key = vec![b'k', rng.below(30) as u8];
                    index += 1;
                    let command = if rng.below(4) == 0 {
                        model.remove(&key);
                        Command::Delete { key: key.clone() }
                    } else {
                        let value = value(&mut rng, step);
                        model.insert(key.clone(), value.clone());
                        Command::Put { key, value }
                    };
                    block_on(store.apply(index, 1, &batch(&[command]))).unwrap();
                    if !begun.is_empty() {
                        states.push((store.last_version(), model.clone()));
                    }
                }
            }
            for (ts, then) in &open_snapshots {
                let key = vec![b'k', rng.below(30) as u8];
                let got = block_on(store.get_at(&key, *ts)).unwrap().map(|v| v.value);
                assert_eq!(
                    got.as_ref(),
                    then.get(&key),
                    "seed {seed}, step {step}: key {key:?} at {ts}"
                );
            }
        }
        for (ts, _) in open_snapshots.drain(..) {
            store.snapshot_close(ts);
        }
        for began in begun.drain(..) {
            store.snapshot_abandon(began);
        }
        assert_eq!(store.history_stats(), Default::default());
    }
}

#[test]
fn a_hot_key_does_not_grow_the_page_file_and_an_open_snapshot_keeps_its_extent() {
    let disk = SimDisk::new();
    let store = open(&disk, 32);
    let big = |n: u8| vec![n; 9000];
    let put = |index: u64, n: u8| {
        let command = Command::Put {
            key: b"hot".to_vec(),
            value: big(n),
        };
        block_on(store.apply(index, 1, &batch(&[command]))).unwrap();
    };
    let checkpoint = || {
        block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).unwrap();
    };
    put(1, 1);
    let ts = store.snapshot_open(0);
    for index in 2..200 {
        put(index, index as u8);
        if index % 10 == 0 {
            checkpoint();
        }
    }
    // The snapshot's extent was kept from reuse all along.
    let then = block_on(store.get_at(b"hot", ts)).unwrap().unwrap();
    assert_eq!(then.value, big(1));
    assert_eq!(
        store.history_stats().versions,
        1,
        "only what the snapshot can see"
    );
    store.snapshot_close(ts);
    let grown_to = store.stats().page_count;
    for index in 200..600 {
        put(index, index as u8);
        if index % 10 == 0 {
            checkpoint();
        }
    }
    assert!(
        store.stats().page_count <= grown_to + 16,
        "the page file grew from {grown_to} to {} pages under one hot key",
        store.stats().page_count
    );
    assert_eq!(
        block_on(store.get(b"hot")).unwrap().unwrap().value,
        big(599u64 as u8)
    );
}
