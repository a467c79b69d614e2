//! Transactions on a three-node cluster (ADR 0022): clients on every node, so lock requests,
//! fenced reads and commit steps are forwarded to shards' leaders on other nodes; a bank of
//! transfers keeps its total through a kill -9 of a shard's leader in the middle, in every
//! audit and at the end on every node; the locks of the transactions the killed node was
//! coordinating go at their deadline. The audits take turns: a serializable transaction, a
//! plain MGET and a read-only transaction (snapshot reads, ADR 0023, whose rounds are
//! forwarded to the leaders too). Document transfers (ADR 0024) from every node keep the
//! total of their bank as well.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::cluster::Cluster;
use kvs_wire::{Client, ClientError, Isolation};

const ACCOUNTS: usize = 12;
const INITIAL: i64 = 100;

fn key(i: usize) -> Vec<u8> {
    format!("acct{i:03}").into_bytes()
}

fn balance(value: Option<Vec<u8>>) -> i64 {
    String::from_utf8(value.expect("every account exists"))
        .unwrap()
        .parse()
        .unwrap()
}

fn audit(client: &Client) -> Result<Vec<i64>, ClientError> {
    audit_by(client, 0)
}

/// Every balance, read by a serializable transaction (`how` 0), a plain MGET (1) or a
/// read-only transaction (2).
fn audit_by(client: &Client, how: usize) -> Result<Vec<i64>, ClientError> {
    let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(key).collect();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let balances = |values: Vec<Option<(u64, Vec<u8>)>>| {
        values
            .into_iter()
            .map(|v| balance(v.map(|(_, value)| value)))
            .collect()
    };
    match how {
        0 => client.transact(Isolation::Serializable, 20, |txn| {
            Ok(balances(txn.mget(&refs)?))
        }),
        1 => Ok(balances(client.mget(&refs)?)),
        _ => {
            let txn = client.begin(Isolation::ReadOnly)?;
            let found = balances(txn.mget(&refs)?);
            txn.commit()?;
            Ok(found)
        }
    }
}

/// Sets the flag when dropped: stops the workers also when the test fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn check(balances: &[i64]) {
    assert!(balances.iter().all(|&b| b >= 0), "{balances:?}");
    assert_eq!(
        balances.iter().sum::<i64>(),
        ACCOUNTS as i64 * INITIAL,
        "{balances:?}"
    );
}

fn transfer(client: &Client, from: usize, to: usize, amount: i64) -> Result<(), ClientError> {
    client.transact(Isolation::Serializable, 20, |txn| {
        let have = balance(txn.get(&key(from))?);
        let amount = amount.min(have);
        let theirs = balance(txn.get(&key(to))?);
        txn.put(&key(from), (have - amount).to_string().as_bytes())?;
        txn.put(&key(to), (theirs + amount).to_string().as_bytes())
    })
}

#[test]
fn a_bank_on_a_cluster_keeps_its_total_through_a_leader_kill() {
    // Transactions whose coordinator dies with the killed node hold their locks until their
    // deadline: a short one keeps the test short.
    let mut cluster = Cluster::start_with(3, 2, false, &["--txn-timeout", "5s"]);
    let leaders = cluster.wait_for_leaders();
    let all = cluster.addrs.join(",");
    let setup = Client::connect(&all).unwrap();
    for i in 0..ACCOUNTS {
        setup.put(&key(i), INITIAL.to_string().as_bytes()).unwrap();
    }
    let stop = AtomicBool::new(false);
    let committed = AtomicU64::new(0);
    let audits = AtomicU64::new(0);
    let wrong_audits = std::thread::scope(|s| {
        for worker in 0..4usize {
            let (stop, committed) = (&stop, &committed);
            // Each worker starts on another node: its transactions' locks are kept by
            // leaders elsewhere.
            let mut addrs = cluster.addrs.clone();
            addrs.rotate_left(worker % 3);
            let addrs = addrs.join(",");
            s.spawn(move || {
                let client = Client::connect(&addrs).unwrap();
                let mut seed = worker as u64 * 7919 + 3;
                while !stop.load(Ordering::Relaxed) {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let from = (seed >> 33) as usize % ACCOUNTS;
                    let to = (from + 1 + (seed >> 40) as usize % (ACCOUNTS - 1)) % ACCOUNTS;
                    // Errors are expected around the kill (unknown outcomes, timeouts);
                    // whatever happened, a transfer is all or nothing.
                    if transfer(&client, from, to, (seed >> 50) as i64 % 7 + 1).is_ok() {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let (stop, audits) = (&stop, &audits);
        let auditor_addrs = all.clone();
        let auditor = s.spawn(move || {
            let client = Client::connect(&auditor_addrs).unwrap();
            let mut wrong = Vec::new();
            let mut turn = 0;
            while !stop.load(Ordering::Relaxed) {
                turn += 1;
                if let Ok(balances) = audit_by(&client, turn % 3) {
                    if balances.iter().sum::<i64>() != ACCOUNTS as i64 * INITIAL {
                        wrong.push((turn % 3, balances));
                    }
                    audits.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            wrong
        });
        // A failed assertion below stops the workers too (the scope would wait for them).
        let _stop = StopOnDrop(stop);
        std::thread::sleep(Duration::from_millis(1500));
        let before = committed.load(Ordering::Relaxed);
        assert!(before > 0, "transfers ran before the kill");
        cluster.kill9(leaders[0] as usize - 1);
        std::thread::sleep(Duration::from_millis(4000));
        stop.store(true, Ordering::Relaxed);
        auditor.join().unwrap()
    });
    assert!(audits.load(Ordering::Relaxed) > 0, "audits ran");
    let victim = leaders[0] as usize - 1;
    cluster.restart(victim);
    cluster.wait_for_leaders();
    for addr in &cluster.addrs {
        let client = Client::connect(addr).unwrap();
        for how in 0..3 {
            let balances = (0..50)
                .find_map(|_| {
                    audit_by(&client, how)
                        .map_err(|_| std::thread::sleep(Duration::from_millis(200)))
                        .ok()
                })
                .expect("an audit succeeds once the cluster settled");
            check(&balances);
        }
    }
    assert!(
        wrong_audits.is_empty(),
        "audits during the run saw wrong totals (the final state is right): {wrong_audits:?}"
    );
    // Still usable on every node.
    let client = Client::connect(&all).unwrap();
    transfer(&client, 0, 1, 1).unwrap();
    check(&audit(&client).unwrap());
}

/// Keys `prefix0`, `prefix1`, ... until one lands on shard `shard` of `shards`.
fn key_on(prefix: &str, shard: u32, shards: u32) -> Vec<u8> {
    (0..)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .find(|k| kvs_wire::shard_for_key(k, shards) == shard)
        .unwrap()
}

/// Two transactions locking in opposite order, each lock kept by a leader on another node:
/// the cycle runs through two nodes' wait-for graphs, and is found by their exchange of
/// edges (well within the lock timeout, set long here), the younger aborted with DEADLOCK.
#[test]
fn a_deadlock_across_nodes_is_found_and_the_younger_aborted() {
    let cluster = Cluster::start_with(3, 2, false, &["--lock-timeout", "20s"]);
    cluster.wait_for_preferred_leaders();
    let leaders = cluster.wait_for_leaders();
    let (a, b) = (key_on("xa", 0, 2), key_on("xb", 1, 2));
    // Each client on the node leading the other's second key.
    let older_client = Client::connect(&cluster.addrs[leaders[0] as usize - 1]).unwrap();
    let younger_client = Client::connect(&cluster.addrs[leaders[1] as usize - 1]).unwrap();
    let older = older_client.begin(Isolation::Serializable).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let younger = younger_client.begin(Isolation::Serializable).unwrap();
    older.put(&a, b"older").unwrap();
    younger.put(&b, b"younger").unwrap();
    let (waited, closed) = std::thread::scope(|s| {
        let waits = s.spawn(|| older.put(&b, b"older").map(|_| older));
        std::thread::sleep(Duration::from_millis(100));
        let closes = younger.put(&a, b"younger");
        (waits.join().unwrap(), closes)
    });
    let err = closed.unwrap_err();
    // DEADLOCK, not TXN_TIMEOUT: the detector found it, not the 20 s lock timeout.
    assert_eq!(err.code(), Some(kvs_wire::ErrorCode::Deadlock), "{err}");
    waited.unwrap().commit().unwrap();
    let c = Client::connect(&cluster.addrs.join(",")).unwrap();
    assert_eq!(c.get(&a).unwrap(), Some(b"older".to_vec()));
    assert_eq!(c.get(&b).unwrap(), Some(b"older".to_vec()));
}

/// Document transfers (ADR 0024) from clients on every node: their collection locks and
/// fenced finds are forwarded to the shards' leaders, their commits carry document writes
/// through two-phase commit, and every audit (an aggregation in a read-only transaction, on
/// any node) sees the bank's total.
#[test]
fn document_transactions_from_every_node_keep_the_total() {
    use serde_json::json;
    let cluster = Cluster::start_with(3, 2, false, &[]);
    cluster.wait_for_leaders();
    let all = cluster.addrs.join(",");
    let setup = Client::connect(&all).unwrap();
    let accounts: Vec<_> = (0..ACCOUNTS)
        .map(|i| json!({"_id": i, "balance": INITIAL}))
        .collect();
    setup.insert("bank", &accounts).unwrap();
    let total = |client: &Client| -> Result<i64, ClientError> {
        let pipeline = json!([{"$group": {"_id": null, "sum": {"$sum": "$balance"}}}]);
        let rows = client.transact(Isolation::ReadOnly, 1, |t| t.aggregate("bank", &pipeline))?;
        Ok(rows[0]["sum"].as_i64().unwrap())
    };
    let stop = AtomicBool::new(false);
    let committed = AtomicU64::new(0);
    std::thread::scope(|s| {
        for worker in 0..3usize {
            let (stop, committed, addr) = (&stop, &committed, cluster.addrs[worker].clone());
            s.spawn(move || {
                let client = Client::connect(&addr).unwrap();
                let mut seed = worker as u64 * 7919 + 5;
                while !stop.load(Ordering::Relaxed) {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let from = (seed >> 33) as usize % ACCOUNTS;
                    let to = (from + 1 + (seed >> 40) as usize % (ACCOUNTS - 1)) % ACCOUNTS;
                    let moved = client.transact(Isolation::Serializable, 10, |t| {
                        for (id, by) in [(from, -1), (to, 1)] {
                            let inc = json!({"$inc": {"balance": by}});
                            t.update("bank", &json!({"_id": id}), &inc, false, false)?;
                        }
                        Ok(())
                    });
                    if moved.is_ok() {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        for round in 0..30 {
            let client = Client::connect(&cluster.addrs[round % 3]).unwrap();
            if let Ok(sum) = total(&client) {
                assert_eq!(
                    sum,
                    ACCOUNTS as i64 * INITIAL,
                    "audit {round} on node {}",
                    round % 3 + 1
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(
        committed.load(Ordering::Relaxed) > 10,
        "transfers committed"
    );
    for addr in &cluster.addrs {
        let client = Client::connect(addr).unwrap();
        assert_eq!(total(&client).unwrap(), ACCOUNTS as i64 * INITIAL);
    }
}
