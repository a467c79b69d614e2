//! Transactions with a real kvsd (ADR 0022): atomic commits over shards, isolation from other
//! clients, rollback, deadlocks, lock and transaction timeouts, writes outside transactions
//! that abort the ones they cross, and a bank whose total never changes through concurrent
//! transfers and a kill -9.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::Server;
use kvs_wire::txn_client::is_retryable;
use kvs_wire::{shard_for_key, Client, ClientError, ErrorCode, Isolation};

const SERIALIZABLE: Isolation = Isolation::Serializable;

/// Keys `prefix0`, `prefix1`, ... until one lands on each of `shards` shards.
fn one_key_per_shard(prefix: &str, shards: u32) -> Vec<Vec<u8>> {
    let mut keys: Vec<Option<Vec<u8>>> = vec![None; shards as usize];
    for i in 0.. {
        let key = format!("{prefix}{i}").into_bytes();
        let shard = shard_for_key(&key, shards) as usize;
        if keys[shard].is_none() {
            keys[shard] = Some(key);
        }
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    keys.into_iter().map(Option::unwrap).collect()
}

fn code(error: &ClientError) -> Option<ErrorCode> {
    error.code()
}

#[test]
fn a_commit_over_shards_is_all_or_nothing_and_unseen_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let (client, other) = (server.client(), server.client());
    let keys = one_key_per_shard("k", 2);
    client.put(&keys[0], b"old").unwrap();

    let txn = client.begin(SERIALIZABLE).unwrap();
    txn.put(&keys[0], b"a").unwrap();
    txn.put(&keys[1], b"b").unwrap();
    assert!(txn.delete(b"never-there").is_ok());
    assert_eq!(
        txn.get(&keys[0]).unwrap(),
        Some(b"a".to_vec()),
        "own writes"
    );
    let (pairs, _) = txn.scan(b"k", Some(b"l"), 10).unwrap();
    assert_eq!(pairs.len(), 2, "a scan sees its own writes: {pairs:?}");
    // Read Committed from another connection: the old value, without waiting.
    let reader = other.begin(Isolation::ReadCommitted).unwrap();
    assert_eq!(reader.get(&keys[0]).unwrap(), Some(b"old".to_vec()));
    assert_eq!(reader.get(&keys[1]).unwrap(), None);
    reader.commit().unwrap();
    assert_eq!(other.get(&keys[1]).unwrap(), None, "not before the commit");
    txn.commit().unwrap();
    assert_eq!(other.get(&keys[0]).unwrap(), Some(b"a".to_vec()));
    assert_eq!(other.get(&keys[1]).unwrap(), Some(b"b".to_vec()));

    // Rolled back: nothing applied, and the locks are gone.
    let txn = client.begin(SERIALIZABLE).unwrap();
    txn.put(&keys[0], b"x").unwrap();
    txn.put(&keys[1], b"y").unwrap();
    let id = txn.id();
    txn.rollback().unwrap();
    assert_eq!(other.get(&keys[0]).unwrap(), Some(b"a".to_vec()));
    let after = other.begin(SERIALIZABLE).unwrap();
    after.put(&keys[0], b"z").unwrap();
    after.commit().unwrap();
    // The finished transaction is forgotten.
    let err = client
        .call(&kvs_wire::Request::Commit { txn: id })
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TxnNotFound));

    // A CAS inside a transaction compares with the committed version.
    let version = client.get_versioned(&keys[1]).unwrap().unwrap().0;
    let txn = client.begin(SERIALIZABLE).unwrap();
    let err = txn.cas(&keys[1], version + 1, Some(b"no")).unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::VersionMismatch));
    txn.cas(&keys[1], version, Some(b"yes")).unwrap();
    txn.commit().unwrap();
    assert_eq!(client.get(&keys[1]).unwrap(), Some(b"yes".to_vec()));

    // A closed connection rolls back what it left open.
    let leaver = server.client();
    let txn = leaver.begin(SERIALIZABLE).unwrap();
    txn.put(&keys[0], b"left").unwrap();
    std::mem::forget(txn);
    drop(leaver);
    let txn = other.begin(SERIALIZABLE).unwrap();
    txn.put(&keys[0], b"after the leaver").unwrap();
    txn.commit().unwrap();
    assert_eq!(
        client.get(&keys[0]).unwrap(),
        Some(b"after the leaver".to_vec())
    );
}

#[test]
fn opposite_lock_orders_deadlock_and_the_younger_transaction_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let keys = one_key_per_shard("d", 2);
    let (a, b) = (server.client(), server.client());
    let older = a.begin(SERIALIZABLE).unwrap();
    let younger = b.begin(SERIALIZABLE).unwrap();
    assert!(older.id() < younger.id());
    older.put(&keys[0], b"older").unwrap();
    younger.put(&keys[1], b"younger").unwrap();
    let barrier = Arc::new(Barrier::new(2));
    let outcome = std::thread::scope(|s| {
        let waits = s.spawn(|| {
            barrier.wait();
            older.put(&keys[1], b"older").map(|_| older)
        });
        barrier.wait();
        std::thread::sleep(Duration::from_millis(100));
        let closes = younger.put(&keys[0], b"younger");
        (waits.join().unwrap(), closes)
    });
    let (older, closed) = outcome;
    let err = closed.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::Deadlock), "{err}");
    older.unwrap().commit().unwrap();
    let c = server.client();
    assert_eq!(c.get(&keys[0]).unwrap(), Some(b"older".to_vec()));
    assert_eq!(c.get(&keys[1]).unwrap(), Some(b"older".to_vec()));
}

#[test]
fn lock_waits_and_transactions_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--lock-timeout", "300ms", "--txn-timeout", "2s"];
    let server = Server::start_with(dir.path(), 2, &flags);
    let (a, b) = (server.client(), server.client());
    let holder = a.begin(SERIALIZABLE).unwrap();
    holder.put(b"t", b"held").unwrap();
    let waiter = b.begin(SERIALIZABLE).unwrap();
    let err = waiter.put(b"t", b"waited").unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TxnTimeout), "{err}");
    // The waiter was aborted: its id is gone.
    let err = waiter.get(b"t").unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TxnNotFound), "{err}");
    holder.commit().unwrap();

    // Past --txn-timeout a transaction is aborted, and its locks go with it.
    let slow = a.begin(SERIALIZABLE).unwrap();
    slow.put(b"t", b"slow").unwrap();
    std::thread::sleep(Duration::from_millis(2300));
    let other = b.begin(SERIALIZABLE).unwrap();
    other.put(b"t", b"other").unwrap();
    other.commit().unwrap();
    let err = slow.commit().unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TxnTimeout), "{err}");
    assert_eq!(a.get(b"t").unwrap(), Some(b"other".to_vec()));
}

#[test]
fn a_write_outside_transactions_aborts_a_transaction_that_read_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let (client, plain) = (server.client(), server.client());
    plain.put(b"balance", b"10").unwrap();
    let txn = client.begin(SERIALIZABLE).unwrap();
    assert_eq!(txn.get(b"balance").unwrap(), Some(b"10".to_vec()));
    txn.put(b"copy", b"10").unwrap();
    // A plain write does not wait for the transaction's lock: it goes first, and the
    // transaction, whose read is now stale, may not commit.
    plain.put(b"balance", b"20").unwrap();
    let err = txn.commit().unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TxnConflict), "{err}");
    assert!(is_retryable(&err));
    assert_eq!(plain.get(b"copy").unwrap(), None);
}

/// Accounts spread over every shard; transfers between random pairs, each a transaction.
struct Bank {
    accounts: usize,
    initial: i64,
}

impl Bank {
    fn key(i: usize) -> Vec<u8> {
        format!("account{i:04}").into_bytes()
    }

    fn open(&self, client: &Client) {
        for i in 0..self.accounts {
            client
                .put(&Bank::key(i), self.initial.to_string().as_bytes())
                .unwrap();
        }
    }

    fn balance(value: Option<Vec<u8>>) -> i64 {
        String::from_utf8(value.expect("every account exists"))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Every balance, read in one serializable transaction (a scan, so range locks).
    fn audit(&self, client: &Client) -> Result<Vec<i64>, ClientError> {
        client.transact(SERIALIZABLE, 20, |txn| {
            let (pairs, next) = txn.scan(b"account", Some(b"accounu"), 10_000)?;
            assert!(next.is_none());
            Ok(pairs
                .into_iter()
                .map(|(_, value)| Bank::balance(Some(value)))
                .collect())
        })
    }

    /// Moves up to 10 from one account to another, never below zero.
    fn transfer(client: &Client, from: usize, to: usize, amount: i64) -> Result<(), ClientError> {
        client.transact(SERIALIZABLE, 50, |txn| {
            let have = Bank::balance(txn.get(&Bank::key(from))?);
            let amount = amount.min(have);
            if amount == 0 {
                return Ok(());
            }
            let theirs = Bank::balance(txn.get(&Bank::key(to))?);
            txn.put(&Bank::key(from), (have - amount).to_string().as_bytes())?;
            txn.put(&Bank::key(to), (theirs + amount).to_string().as_bytes())?;
            Ok(())
        })
    }
}

/// Sets the flag when dropped: stops the workers also when the test fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn check_totals(balances: &[i64], bank: &Bank) {
    assert_eq!(balances.len(), bank.accounts);
    assert!(balances.iter().all(|&b| b >= 0), "{balances:?}");
    assert_eq!(
        balances.iter().sum::<i64>(),
        bank.accounts as i64 * bank.initial,
        "{balances:?}"
    );
}

#[test]
fn a_bank_keeps_its_total_through_concurrent_transfers_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 2);
    let bank = Bank {
        accounts: 16,
        initial: 100,
    };
    bank.open(&server.client());
    let stop = AtomicBool::new(false);
    let committed = AtomicU64::new(0);
    let addr = server.addr.clone();
    std::thread::scope(|s| {
        for worker in 0..4u64 {
            let (stop, committed, addr) = (&stop, &committed, addr.clone());
            s.spawn(move || {
                let client = Client::connect(&addr).unwrap();
                let mut seed = worker * 7919 + 1;
                while !stop.load(Ordering::Relaxed) {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let from = (seed >> 33) as usize % 16;
                    let to = (from + 1 + (seed >> 40) as usize % 15) % 16;
                    match Bank::transfer(&client, from, to, (seed >> 50) as i64 % 10 + 1) {
                        Ok(()) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        // The server died under it: the outcome of that one is unknown.
                        Err(_) => return,
                    }
                }
            });
        }
        // A failed assertion below stops the transfers too (the scope would otherwise wait
        // for them forever: CI once hung here).
        let _stop = StopOnDrop(&stop);
        let auditor = server.client();
        let mut audited = 0;
        for _ in 0..20 {
            match bank.audit(&auditor) {
                Ok(balances) => {
                    check_totals(&balances, &bank);
                    audited += 1;
                }
                // Every attempt aborted under contention (a lock wait ran out): it read
                // nothing to check.
                Err(e) if e.code().is_some() => eprintln!("an audit gave up: {e}"),
                Err(e) => panic!("an audit failed: {e}"),
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(audited > 0, "audits ran");
        assert!(committed.load(Ordering::Relaxed) > 0, "transfers ran");
        // Kill -9 in the middle of the transfers.
        server.kill9();
        stop.store(true, Ordering::Relaxed);
    });
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    check_totals(&bank.audit(&client).unwrap(), &bank);
    // Still usable: the prepared transactions were resolved and their locks released.
    Bank::transfer(&client, 0, 1, 5).unwrap();
    check_totals(&bank.audit(&client).unwrap(), &bank);
}

#[test]
fn transactions_are_refused_clearly_when_misused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1);
    let client = server.client();
    let txn = client.begin(Isolation::ReadCommitted).unwrap();
    txn.put(b"k", b"v").unwrap();
    let err = txn.cas(b"k", 0, Some(b"w")).unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::BadRequest), "{err}");
    // Still open after a refused request.
    txn.commit().unwrap();
    let err = client
        .call(&kvs_wire::Request::InTxn {
            txn: 12345,
            for_update: false,
            request: Box::new(kvs_wire::Request::Get { key: b"k".to_vec() }),
        })
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TxnNotFound), "{err}");
}

/// `kvs txn`: stdin's lines as one transaction; COMMITTED and exit 0, or the abort's reason
/// and exit 1.
#[test]
fn the_cli_runs_stdin_as_one_transaction() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(dir.path(), 2, &["--lock-timeout", "200ms"]);
    let txn = |args: &[&str], input: &str| {
        let mut child = Command::new(common::kvs_binary())
            .args(["--addr", &server.addr, "txn"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = txn(&[], "put x 1\nput y 2\nget x\nscan\ncommit\n");
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "OK\nOK\n1\nx\t1\ny\t2\nCOMMITTED\n");
    let client = server.client();
    assert_eq!(client.get(b"y").unwrap(), Some(b"2".to_vec()));
    let (code, out) = txn(&["--isolation", "read-committed"], "del x\nrollback\n");
    assert_eq!((code, out.as_str()), (1, "OK\nROLLED BACK\n"));
    assert_eq!(client.get(b"x").unwrap(), Some(b"1".to_vec()));
    // Aborted by the server: another transaction holds x past the lock timeout.
    let holder = client.begin(SERIALIZABLE).unwrap();
    holder.put(b"x", b"held").unwrap();
    let (code, out) = txn(&[], "put x 3\ncommit\n");
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("ABORTED TXN_TIMEOUT"), "{out}");
    holder.commit().unwrap();
    let (code, out) = txn(&[], "put z 1\n");
    assert_eq!(code, 1, "no commit, no transaction: {out}");
    assert_eq!(client.get(b"z").unwrap(), None);
}
