//! Snapshot reads across shards (ADR 0023) against a real kvsd: a multi-shard MGET or SCAN
//! outside any transaction reads every shard at one timestamp, so it never sees part of a
//! transaction that spans shards. Transfers between accounts on different shards run as
//! transactions (two-phase commit) while plain MGETs and SCANs add up the balances: every
//! sum must be the bank's total. And once the reads are done no snapshot stays open and no
//! old version is kept.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::Server;
use kvs_wire::{Client, ErrorCode, Isolation};

const ACCOUNTS: usize = 16;
const INITIAL: i64 = 100;

fn key(i: usize) -> Vec<u8> {
    format!("account{i:04}").into_bytes()
}

fn balance(value: &[u8]) -> i64 {
    std::str::from_utf8(value).unwrap().parse().unwrap()
}

fn transfer(client: &Client, from: usize, to: usize, amount: i64) {
    client
        .transact(Isolation::Serializable, 100, |txn| {
            let have = balance(&txn.get(&key(from))?.expect("an account"));
            let theirs = balance(&txn.get(&key(to))?.expect("an account"));
            let amount = amount.min(have);
            txn.put(&key(from), (have - amount).to_string().as_bytes())?;
            txn.put(&key(to), (theirs + amount).to_string().as_bytes())?;
            Ok(())
        })
        .unwrap();
}

/// Stops the transfers when the audit ends, also by a failed assertion (the scope would
/// otherwise wait for them forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn shard_stats(client: &Client) -> Vec<(u64, u64)> {
    let info: serde_json::Value = serde_json::from_str(&client.info().unwrap()).unwrap();
    info["shard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["snapshots_open"].as_u64().unwrap(),
                s["versions_kept"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn plain_mget_and_scan_see_every_cross_shard_transaction_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    for i in 0..ACCOUNTS {
        client.put(&key(i), INITIAL.to_string().as_bytes()).unwrap();
    }
    let total = ACCOUNTS as i64 * INITIAL;
    let stop = AtomicBool::new(false);
    let transfers = AtomicU64::new(0);
    let (mut mgets, mut scans) = (0, 0);
    std::thread::scope(|s| {
        for worker in 0..3u64 {
            let (stop, transfers, addr) = (&stop, &transfers, server.addr.clone());
            s.spawn(move || {
                let client = Client::connect(&addr).unwrap();
                let mut seed = worker * 7919 + 1;
                while !stop.load(Ordering::Relaxed) {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let from = (seed >> 33) as usize % ACCOUNTS;
                    let to = (from + 1 + (seed >> 40) as usize % (ACCOUNTS - 1)) % ACCOUNTS;
                    transfer(&client, from, to, (seed >> 50) as i64 % 10 + 1);
                    transfers.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(key).collect();
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            let values = client.mget(&keys).unwrap();
            let sum: i64 = values
                .iter()
                .map(|v| balance(&v.as_ref().expect("an account").1))
                .sum();
            assert_eq!(sum, total, "an MGET saw part of a transfer: {values:?}");
            mgets += 1;
            let (pairs, next) = client.scan(b"account", Some(b"accounu"), 1000).unwrap();
            assert!(next.is_none());
            assert_eq!(pairs.len(), ACCOUNTS);
            let sum: i64 = pairs.iter().map(|(_, v)| balance(v)).sum();
            assert_eq!(sum, total, "a SCAN saw part of a transfer: {pairs:?}");
            scans += 1;
        }
    });
    assert!(
        transfers.load(Ordering::Relaxed) > 50,
        "transfers ran: {}",
        transfers.load(Ordering::Relaxed)
    );
    eprintln!(
        "{mgets} MGETs and {scans} SCANs during {} transfers",
        transfers.load(Ordering::Relaxed)
    );
    assert_eq!(
        shard_stats(&client),
        vec![(0, 0); 2],
        "every snapshot closed, every old version dropped"
    );
}

#[test]
fn a_snapshot_read_over_shards_that_hold_nothing_yet_answers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    let keys: Vec<Vec<u8>> = (0..8).map(|i| format!("k{i}").into_bytes()).collect();
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    assert_eq!(client.mget(&keys).unwrap(), vec![None; keys.len()]);
    assert_eq!(client.scan(b"", None, 10).unwrap(), (vec![], None));
    let txn = client.begin(Isolation::ReadOnly).unwrap();
    assert_eq!(txn.get(b"k1").unwrap(), None);
    txn.commit().unwrap();
    client.put(b"k1", b"1").unwrap();
    assert_eq!(client.mget(&keys).unwrap()[1].as_ref().unwrap().1, b"1");
    assert_eq!(shard_stats(&client), vec![(0, 0); 2]);
}

#[test]
fn a_snapshot_read_sees_every_write_acknowledged_before_it_and_versions_keep_growing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    let keys: Vec<Vec<u8>> = (0..8).map(|i| format!("k{i}").into_bytes()).collect();
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let mut last_versions = vec![0; keys.len()];
    for round in 0..50 {
        for (i, k) in keys.iter().enumerate() {
            let version = client.put(k, format!("{round}:{i}").as_bytes()).unwrap();
            assert!(version > last_versions[i], "a key's versions only grow");
            last_versions[i] = version;
        }
        let values = client.mget(&keys).unwrap();
        for (i, value) in values.iter().enumerate() {
            let (version, value) = value.as_ref().expect("written");
            assert_eq!(value, format!("{round}:{i}").as_bytes());
            assert_eq!(*version, last_versions[i]);
        }
        let (pairs, _) = client.scan(b"k", None, 100).unwrap();
        assert_eq!(pairs.len(), keys.len());
        assert!(pairs
            .iter()
            .all(|(_, v)| v.starts_with(format!("{round}:").as_bytes())));
    }
}

#[test]
fn a_read_only_transaction_reads_one_snapshot_however_long_it_runs_and_takes_no_locks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    for i in 0..ACCOUNTS {
        client.put(&key(i), INITIAL.to_string().as_bytes()).unwrap();
    }
    let total = ACCOUNTS as i64 * INITIAL;
    let stop = AtomicBool::new(false);
    let transfers = AtomicU64::new(0);
    let mut rounds_with_transfers = 0;
    std::thread::scope(|s| {
        for worker in 0..3u64 {
            let (stop, transfers, addr) = (&stop, &transfers, server.addr.clone());
            s.spawn(move || {
                let client = Client::connect(&addr).unwrap();
                let mut seed = worker * 104_729 + 3;
                while !stop.load(Ordering::Relaxed) {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let from = (seed >> 33) as usize % ACCOUNTS;
                    let to = (from + 1 + (seed >> 40) as usize % (ACCOUNTS - 1)) % ACCOUNTS;
                    transfer(&client, from, to, (seed >> 50) as i64 % 10 + 1);
                    transfers.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        for round in 0..10 {
            let before = transfers.load(Ordering::Relaxed);
            let txn = client.begin(Isolation::ReadOnly).unwrap();
            // One key at a time, slowly: transfers commit in between, on the keys it read
            // (they would wait for a serializable reader's locks; these do not).
            let mut sum = 0;
            for i in 0..ACCOUNTS {
                sum += balance(&txn.get(&key(i)).unwrap().expect("an account"));
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            assert_eq!(sum, total, "round {round}: a read-only transaction's reads");
            let (pairs, _) = txn.scan(b"account", Some(b"accounu"), 1000).unwrap();
            let scanned: i64 = pairs.iter().map(|(_, v)| balance(v)).sum();
            assert_eq!(scanned, total, "round {round}: its scan");
            if round == 0 {
                let refused = txn.put(&key(0), b"1").unwrap_err();
                assert_eq!(refused.code(), Some(ErrorCode::BadRequest), "{refused}");
            }
            txn.commit().unwrap();
            rounds_with_transfers += usize::from(transfers.load(Ordering::Relaxed) > before);
        }
    });
    assert!(rounds_with_transfers > 0, "transfers went on while it read");
    // No lock: a transaction writes a key an open read-only one read, and commits (behind a
    // serializable reader's shared lock it would wait out the lock timeout and fail with
    // TXN_TIMEOUT).
    let reader = client.begin(Isolation::ReadOnly).unwrap();
    let seen = reader.get(&key(0)).unwrap();
    let writer = server.client();
    writer
        .transact(Isolation::Serializable, 1, |txn| txn.put(&key(0), b"0"))
        .unwrap();
    assert_eq!(
        reader.get(&key(0)).unwrap(),
        seen,
        "the reader's snapshot holds"
    );
    reader.commit().unwrap();
    assert_eq!(shard_stats(&client), vec![(0, 0); 2]);
}

#[test]
fn a_snapshot_older_than_the_maximum_age_is_closed_and_reading_it_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), 2, &["--txn-max-age", "1s"]);
    let client = server.client();
    client.put(b"a", b"1").unwrap();
    let txn = client.begin(Isolation::ReadOnly).unwrap();
    assert_eq!(txn.get(b"a").unwrap(), Some(b"1".to_vec()));
    client.put(b"a", b"2").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let err = txn.get(b"a").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SnapshotTooOld), "{err}");
    assert_eq!(
        shard_stats(&client),
        vec![(0, 0); 2],
        "closed, versions dropped"
    );
    // A fresh one reads the newest value.
    let txn = client.begin(Isolation::ReadOnly).unwrap();
    assert_eq!(txn.get(b"a").unwrap(), Some(b"2".to_vec()));
    txn.rollback().unwrap();
    assert_eq!(shard_stats(&client), vec![(0, 0); 2]);
}
