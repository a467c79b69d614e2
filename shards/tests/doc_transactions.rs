//! Document commands inside transactions with a real kvsd (ADR 0024): a commit's documents
//! over several shards appear all at once or not at all, the transaction's reads (find,
//! count, aggregate) see its own writes, a command refused whole leaves the transaction open,
//! writes outside transactions break the ones that read the collection, concurrent
//! read-modify-writes lose nothing, and a bank of account documents keeps its total through
//! concurrent transfers, snapshot audits and a kill -9.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Server;
use kvs_wire::{Client, ClientError, ErrorCode, Isolation};
use serde_json::{json, Value};

const SERIALIZABLE: Isolation = Isolation::Serializable;

fn ids(docs: &[Value]) -> Vec<i64> {
    docs.iter().map(|d| d["_id"].as_i64().unwrap()).collect()
}

fn all(client: &Client, coll: &str) -> Vec<Value> {
    client.find(coll, &json!({"sort": {"_id": 1}})).unwrap()
}

#[test]
fn documents_commit_over_shards_all_at_once_and_the_transaction_reads_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let (client, other) = (server.client(), server.client());
    client
        .insert(
            "acct",
            &[json!({"_id": 1, "n": 10}), json!({"_id": 2, "n": 20})],
        )
        .unwrap();

    let txn = client.begin(SERIALIZABLE).unwrap();
    // Ten documents land on both shards of two.
    let docs: Vec<Value> = (3..13).map(|i| json!({"_id": i, "n": i})).collect();
    assert_eq!(txn.insert("acct", &docs).unwrap().len(), 10);
    let reply = txn
        .update(
            "acct",
            &json!({"_id": 1}),
            &json!({"$inc": {"n": 5}}),
            false,
            false,
        )
        .unwrap();
    assert_eq!(
        (reply["matched"].as_i64(), reply["modified"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(txn.remove("acct", &json!({"_id": 2}), false).unwrap(), 1);
    let reply = txn
        .update(
            "acct",
            &json!({"n": {"$gte": 10}}),
            &json!({"$set": {"big": true}}),
            false,
            true,
        )
        .unwrap();
    assert_eq!(reply["matched"].as_i64(), Some(4), "{reply}");
    // Its reads see all of that.
    let seen = txn
        .find("acct", &json!({"sort": {"n": -1}, "limit": 3}))
        .unwrap();
    assert_eq!(ids(&seen), vec![1, 12, 11], "{seen:?}");
    assert_eq!(txn.count("acct", &json!({"big": true})).unwrap(), 4);
    let total = txn
        .aggregate(
            "acct",
            &json!([{"$group": {"_id": null, "sum": {"$sum": "$n"}}}]),
        )
        .unwrap();
    assert_eq!(
        total[0]["sum"],
        json!(15 + (3..13).sum::<i64>()),
        "{total:?}"
    );
    // Paged through cursors, still over its own writes.
    let paged = txn.find("acct", &json!({"batchSize": 4})).unwrap();
    assert_eq!(ids(&paged), (1..13).filter(|i| *i != 2).collect::<Vec<_>>());
    // Nobody else sees any of it yet, and reading does not wait.
    assert_eq!(ids(&all(&other, "acct")), vec![1, 2]);
    assert_eq!(
        other.find("acct", &json!({"filter": {"_id": 1}})).unwrap()[0]["n"],
        10
    );

    txn.commit().unwrap();
    let after = all(&other, "acct");
    assert_eq!(ids(&after), (1..13).filter(|i| *i != 2).collect::<Vec<_>>());
    assert_eq!(after[0], json!({"_id": 1, "n": 15, "big": true}));
    assert_eq!(other.count("acct", &json!({"big": true})).unwrap(), 4);

    // Rolled back: nothing of it.
    let txn = client.begin(Isolation::ReadCommitted).unwrap();
    txn.remove("acct", &json!({}), true).unwrap();
    txn.insert("acct", &[json!({"_id": 100})]).unwrap();
    assert_eq!(ids(&txn.find("acct", &json!({})).unwrap()), vec![100]);
    txn.rollback().unwrap();
    assert_eq!(all(&other, "acct").len(), 11);
}

#[test]
fn a_command_refused_whole_leaves_the_transaction_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    client
        .insert("c", &[json!({"_id": 1, "tags": []})])
        .unwrap();
    client
        .insert("u", &[json!({"_id": 1, "email": "a"})])
        .unwrap();
    client
        .create_index("u", &json!({"email": 1}), None, true)
        .unwrap();

    let txn = client.begin(SERIALIZABLE).unwrap();
    txn.insert("c", &[json!({"_id": 2})]).unwrap();
    // A duplicate _id, in the store or among the command's own documents: nothing of it.
    for docs in [
        vec![json!({"_id": 3}), json!({"_id": 1})],
        vec![json!({"_id": 4}), json!({"_id": 4})],
        vec![json!({"_id": 2})],
    ] {
        let err = txn.insert("c", &docs).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::DuplicateKey), "{err}");
    }
    // An update an operator refuses, and an upsert whose _id is taken.
    let err = txn
        .update(
            "c",
            &json!({"_id": 1}),
            &json!({"$inc": {"tags": 1}}),
            false,
            false,
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    let err = txn
        .update(
            "c",
            &json!({"_id": 1, "x": 9}),
            &json!({"$set": {"y": 1}}),
            true,
            false,
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DuplicateKey), "{err}");
    // A field its commit would read as an operator or a path.
    for doc in [json!({"_id": 7, "a.b": 1}), json!({"_id": 7, "$x": 1})] {
        let err = txn.insert("c", std::slice::from_ref(&doc)).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{doc}: {err}");
    }
    // A document too large, and index and collection commands.
    let big = "x".repeat(17 << 20);
    let err = txn
        .insert("c", &[json!({"_id": 9, "big": big})])
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(ErrorCode::TooLarge | ErrorCode::BadRequest)
        ),
        "{err}"
    );
    for command in [
        json!({"createIndex": "c", "key": {"a": 1}}),
        json!({"drop": "c"}),
        json!({"listIndexes": "c"}),
        json!({"explain": "c", "filter": {}}),
    ] {
        let err = txn.document(&command).unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{command}: {err}");
    }
    // A collection with a unique index is written outside transactions only.
    let err = txn
        .insert("u", &[json!({"_id": 2, "email": "b"})])
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(err.to_string().contains("unique"), "{err}");
    // ...but read inside them.
    assert_eq!(txn.count("u", &json!({})).unwrap(), 1);
    // The transaction went on through all of that.
    assert_eq!(
        ids(&txn.find("c", &json!({"sort": {"_id": 1}})).unwrap()),
        vec![1, 2]
    );
    txn.commit().unwrap();
    assert_eq!(ids(&all(&client, "c")), vec![1, 2]);
    assert_eq!(all(&client, "c")[0], json!({"_id": 1, "tags": []}));

    // A read-only transaction reads documents and writes none.
    let txn = client.begin(Isolation::ReadOnly).unwrap();
    assert_eq!(txn.count("c", &json!({})).unwrap(), 2);
    let err = txn.insert("c", &[json!({"_id": 5})]).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    txn.commit().unwrap();
}

#[test]
fn a_write_outside_transactions_breaks_a_transaction_that_read_the_collection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1);
    let (client, other) = (server.client(), server.client());
    client.insert("c", &[json!({"_id": 1, "n": 1})]).unwrap();
    let txn = client.begin(SERIALIZABLE).unwrap();
    assert_eq!(txn.count("c", &json!({})).unwrap(), 1);
    txn.insert("d", &[json!({"_id": 1})]).unwrap();
    // A write outside transactions does not wait for the reader...
    other.insert("c", &[json!({"_id": 2})]).unwrap();
    // ...and the reader, whose read no longer holds, cannot commit.
    let err = txn.commit().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TxnConflict), "{err}");
    assert!(all(&client, "d").is_empty(), "nothing of it was applied");

    // A writer holds its collection: another transaction's write there waits for it.
    let first = client.begin(SERIALIZABLE).unwrap();
    first
        .update(
            "c",
            &json!({"_id": 1}),
            &json!({"$inc": {"n": 1}}),
            false,
            false,
        )
        .unwrap();
    let waiter = std::thread::spawn({
        let second = server.client();
        move || {
            second.transact(SERIALIZABLE, 50, |txn| {
                txn.update(
                    "c",
                    &json!({"_id": 1}),
                    &json!({"$inc": {"n": 10}}),
                    false,
                    false,
                )
            })
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    first.commit().unwrap();
    waiter.join().unwrap().unwrap();
    assert_eq!(all(&client, "c")[0]["n"], 12, "neither increment was lost");
}

#[test]
fn concurrent_read_modify_writes_of_documents_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    let counters: Vec<Value> = (0..4).map(|i| json!({"_id": i, "n": 0})).collect();
    client.insert("ctr", &counters).unwrap();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let client = server.client();
            std::thread::spawn(move || {
                let mut done = 0;
                for i in 0..25 {
                    let (a, b) = ((w + i) % 4, (w + i + 1) % 4);
                    // Read, then write what was read plus one, in both documents.
                    let outcome = client.transact(SERIALIZABLE, 100, |txn| {
                        for id in [a, b] {
                            let doc = txn.find("ctr", &json!({"filter": {"_id": id}}))?;
                            let n = doc[0]["n"].as_i64().unwrap();
                            txn.update(
                                "ctr",
                                &json!({"_id": id}),
                                &json!({"$set": {"n": n + 1}}),
                                false,
                                false,
                            )?;
                        }
                        Ok(())
                    });
                    match outcome {
                        Ok(()) => done += 1,
                        Err(e) if e.code() == Some(ErrorCode::TxnTimeout) => {}
                        Err(e) => panic!("a transaction failed: {e}"),
                    }
                }
                done
            })
        })
        .collect();
    let done: i64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(done > 0);
    let total: i64 = all(&client, "ctr")
        .iter()
        .map(|d| d["n"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 2 * done, "every committed increment is there once");
}

const ACCOUNTS: i64 = 8;
const OPENING: i64 = 100;

/// The bank's total and whether an account is negative, by an aggregation (`txn`: inside a
/// read-only transaction, else on its own: one snapshot either way).
fn audit(client: &Client, in_txn: bool) -> Result<(i64, bool), ClientError> {
    let pipeline = json!([{"$group": {"_id": null, "sum": {"$sum": "$balance"}, "min": {"$min": "$balance"}}}]);
    let rows = if in_txn {
        client.transact(Isolation::ReadOnly, 1, |txn| {
            txn.aggregate("bank", &pipeline)
        })?
    } else {
        client.aggregate("bank", &pipeline)?
    };
    Ok((
        rows[0]["sum"].as_i64().unwrap(),
        rows[0]["min"].as_i64().unwrap() < 0,
    ))
}

#[test]
fn a_bank_of_documents_keeps_its_total_through_transfers_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 2);
    let accounts: Vec<Value> = (0..ACCOUNTS)
        .map(|i| json!({"_id": i, "balance": OPENING}))
        .collect();
    server.client().insert("bank", &accounts).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..3u64)
        .map(|w| {
            let (client, stop, committed) =
                (server.client(), Arc::clone(&stop), Arc::clone(&committed));
            std::thread::spawn(move || {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let (from, to) = ((i >> 33) as i64 % ACCOUNTS, (i >> 45) as i64 % ACCOUNTS);
                    if from == to {
                        continue;
                    }
                    let outcome = client.transact(SERIALIZABLE, 20, |txn| {
                        let found = txn.find("bank", &json!({"filter": {"_id": from}}))?;
                        let balance = found[0]["balance"].as_i64().unwrap();
                        if balance < 5 {
                            return Ok(false);
                        }
                        for (id, by) in [(from, -5), (to, 5)] {
                            let reply = txn.update(
                                "bank",
                                &json!({"_id": id}),
                                &json!({"$inc": {"balance": by}}),
                                false,
                                false,
                            )?;
                            assert_eq!(reply["matched"], 1, "{reply}");
                        }
                        Ok(true)
                    });
                    match outcome {
                        Ok(true) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        // The kill: the connection is gone.
                        Err(e) if e.code().is_none() => return,
                        Err(e)
                            if matches!(
                                e.code(),
                                Some(
                                    ErrorCode::TxnTimeout
                                        | ErrorCode::TxnConflict
                                        | ErrorCode::Deadlock
                                )
                            ) => {}
                        Err(e) => panic!("a transfer failed: {e}"),
                    }
                }
            })
        })
        .collect();
    let auditor = server.client();
    let mut audits = 0;
    while committed.load(Ordering::Relaxed) < 40 && audits < 2000 {
        for in_txn in [false, true] {
            match audit(&auditor, in_txn) {
                Ok((total, negative)) => {
                    assert_eq!(
                        total,
                        ACCOUNTS * OPENING,
                        "an audit saw money move half-way"
                    );
                    assert!(!negative, "an account went negative");
                    audits += 1;
                }
                Err(e) if e.code() == Some(ErrorCode::TxnTimeout) => {}
                Err(e) => panic!("an audit failed: {e}"),
            }
        }
    }
    assert!(committed.load(Ordering::Relaxed) > 0, "transfers ran");
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    assert_eq!(audit(&client, false).unwrap(), (ACCOUNTS * OPENING, false));
    assert_eq!(client.count("bank", &json!({})).unwrap(), ACCOUNTS as u64);
    // Still usable: the transactions in flight were resolved and their locks released.
    client
        .transact(SERIALIZABLE, 5, |txn| {
            txn.update(
                "bank",
                &json!({"_id": 0}),
                &json!({"$inc": {"balance": -1}}),
                false,
                false,
            )?;
            txn.update(
                "bank",
                &json!({"_id": 1}),
                &json!({"$inc": {"balance": 1}}),
                false,
                false,
            )
        })
        .unwrap();
    assert_eq!(audit(&client, true).unwrap(), (ACCOUNTS * OPENING, false));
}

#[test]
fn the_cli_runs_document_commands_in_a_transaction() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let txn = |input: &str| {
        let mut child = Command::new(common::kvs_binary())
            .args(["--addr", &server.addr, "txn"])
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
    let (code, out) = txn(concat!(
        "insert people {\"_id\": 1, \"name\": \"ann\", \"age\": 30}\n",
        "insert people [{\"_id\": 2, \"age\": 40}, {\"_id\": 3, \"age\": 50}]\n",
        "update people {\"_id\": 2} {\"$inc\": {\"age\": 1}}\n",
        "remove people {\"_id\": 3}\n",
        "count people\n",
        "find people --sort {\"_id\": 1}\n",
        "put k v\n",
        "commit\n",
    ));
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "{out}");
    assert_eq!(lines[5], "2", "the count: {out}");
    assert!(
        lines[6].contains("\"ann\"") && lines[7].contains("41"),
        "{out}"
    );
    assert_eq!(lines.last(), Some(&"COMMITTED"), "{out}");
    let client = server.client();
    assert_eq!(ids(&all(&client, "people")), vec![1, 2]);
    assert_eq!(client.get(b"k").unwrap(), Some(b"v".to_vec()));
    // Without a commit nothing lands.
    let (code, _) = txn("insert people {\"_id\": 9}\n");
    assert_eq!(code, 1);
    assert_eq!(client.count("people", &json!({})).unwrap(), 2);
}
