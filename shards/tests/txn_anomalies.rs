//! Concurrent random transactions against a real kvsd, their history checked for Adya's
//! anomalies (`kvs_lincheck::txn`): Serializable must show none; Read Committed, weaker on
//! purpose, must show no G0/G1 and does show G2 (lost updates: read-modify-writes that read
//! without a lock), which proves the checker sees what it must. Snapshot readers (read-only
//! transactions and plain MGETs over both shards, ADR 0023) among serializable writers must
//! not add one either: each reads a state some serial order of the writers produced. The same
//! holds of transactions over documents (ADR 0024): find and update by `_id` inside them.

mod common;

use std::sync::Mutex;

use common::Server;
use kvs_lincheck::txn::{check, check_read_committed, Anomaly, Op, Status, Txn};
use kvs_wire::client::VersionedValue;
use kvs_wire::txn_client::is_retryable;
use kvs_wire::{Client, ClientError, ErrorCode, Isolation};
use serde_json::json;

const KEYS: u64 = 6;

fn key(k: u64) -> Vec<u8> {
    format!("anomaly{k}").into_bytes()
}

/// What the transactions read and write: key-value pairs, or documents (ADR 0024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    Keys,
    Documents,
}

/// The collection of the document histories: document `_id` k stands for key `key(k)`.
const COLL: &str = "anomaly";

/// A document's version as the history records it: its counter, then the writer's id. Under
/// Serializable a document's writes install in the order of its counter (each read it under
/// a lock), so these versions order as the writes did; two writes that read the same counter
/// (a lost update) still differ, and the checker finds the cycle. (Under Read Committed a
/// write may install a smaller counter after a larger one: these versions would misorder
/// them, so documents are checked at Serializable only; the key-value history shows that
/// the checker catches Read Committed's lost updates.)
fn doc_version(n: u64, writer: u64) -> u64 {
    n * 10_000_000 + writer % 10_000_000
}

/// One random transaction: a few reads, and read-modify-writes of some keys. Records what it
/// read (with versions) and, once committed, what it wrote.
fn one(client: &Client, isolation: Isolation, seed: &mut u64, id: u64, data: Data) -> Txn {
    let mut next = || {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    };
    let mut ops = Vec::new();
    let mut written: Vec<Vec<u8>> = Vec::new();
    let outcome: Result<Vec<(Vec<u8>, u64)>, ClientError> = (|| {
        let txn = client.begin(isolation)?;
        let mut doc_writes = Vec::new();
        for _ in 0..1 + next() % 4 {
            let i = next() % KEYS;
            let k = key(i);
            if written.contains(&k) {
                continue;
            }
            // (version, counter) as read.
            let (version, n) = match data {
                Data::Keys => match txn.get_versioned(&k)? {
                    Some((v, value)) => {
                        (Some(v), String::from_utf8(value).unwrap().parse().unwrap())
                    }
                    None => (None, 0),
                },
                Data::Documents => {
                    let found = txn.find(COLL, &json!({"filter": {"_id": i}}))?;
                    match found.first() {
                        Some(doc) => (doc["w"].as_u64(), doc["n"].as_u64().unwrap()),
                        None => (None, 0),
                    }
                }
            };
            ops.push(Op::Read {
                key: k.clone(),
                version,
            });
            if next() % 2 == 0 {
                match data {
                    Data::Keys => txn.put(&k, (n + 1).to_string().as_bytes())?,
                    Data::Documents => {
                        let w = doc_version(n + 1, id);
                        let set = json!({"$set": {"n": n + 1, "w": w}});
                        txn.update(COLL, &json!({"_id": i}), &set, true, false)?;
                        doc_writes.push((k.clone(), w));
                    }
                }
                written.push(k);
            }
        }
        let versions = txn.commit()?;
        Ok(match data {
            Data::Keys => versions,
            Data::Documents => doc_writes,
        })
    })();
    let status = match &outcome {
        Ok(_) => Status::Committed,
        Err(e) if is_retryable(e) || e.code() == Some(ErrorCode::TxnTimeout) => Status::Aborted,
        Err(e) if e.code().is_some() => Status::Aborted,
        Err(_) => Status::Unknown,
    };
    let versions = outcome.unwrap_or_default();
    for k in written {
        let version = versions.iter().find(|(w, _)| *w == k).map(|(_, v)| *v);
        ops.push(Op::Write { key: k, version });
    }
    Txn { id, status, ops }
}

/// A snapshot reader: 2 to 4 keys read by a read-only transaction or, when `plain`, by one
/// MGET outside any transaction.
fn reader(client: &Client, seed: &mut u64, id: u64, plain: bool) -> Txn {
    let mut next = || {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    };
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for _ in 0..2 + next() % 3 {
        let k = key(next() % KEYS);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let read: Result<Vec<Option<VersionedValue>>, ClientError> = if plain {
        client.mget(&refs)
    } else {
        (|| {
            let txn = client.begin(Isolation::ReadOnly)?;
            let mut found = Vec::new();
            for k in &refs {
                found.push(txn.get_versioned(k)?);
            }
            txn.commit()?;
            Ok(found)
        })()
    };
    match read {
        Ok(found) => Txn {
            id,
            status: Status::Committed,
            ops: keys
                .into_iter()
                .zip(found)
                .map(|(key, v)| Op::Read {
                    key,
                    version: v.map(|(version, _)| version),
                })
                .collect(),
        },
        Err(_) => Txn {
            id,
            status: Status::Aborted,
            ops: Vec::new(),
        },
    }
}

fn run(isolation: Isolation, per_client: u64) -> Vec<Txn> {
    run_with_readers(isolation, per_client, 0, Data::Keys)
}

/// `readers` threads of snapshot readers besides the four writers.
fn run_with_readers(isolation: Isolation, per_client: u64, readers: u64, data: Data) -> Vec<Txn> {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let history = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for worker in 0..4u64 {
            let (history, addr) = (&history, server.addr.clone());
            s.spawn(move || {
                let client = Client::connect(&addr).unwrap();
                let mut seed = worker + 11;
                for i in 0..per_client {
                    let txn = one(&client, isolation, &mut seed, worker * 1_000_000 + i, data);
                    history.lock().unwrap().push(txn);
                }
            });
        }
        for r in 0..readers {
            let (history, addr) = (&history, server.addr.clone());
            s.spawn(move || {
                let client = Client::connect(&addr).unwrap();
                let mut seed = r + 101;
                for i in 0..per_client * 2 {
                    let txn = reader(&client, &mut seed, (10 + r) * 1_000_000 + i, i % 2 == 0);
                    history.lock().unwrap().push(txn);
                }
            });
        }
    });
    history.into_inner().unwrap()
}

#[test]
fn serializable_histories_have_no_anomalies() {
    let history = run(Isolation::Serializable, 150);
    let committed = history
        .iter()
        .filter(|t| t.status == Status::Committed)
        .count();
    assert!(
        committed > 100,
        "{committed} of {} committed",
        history.len()
    );
    let report = check(&history);
    assert!(report.is_serializable(), "{report}");
}

#[test]
fn snapshot_readers_among_serializable_writers_add_no_anomaly() {
    let history = run_with_readers(Isolation::Serializable, 150, 2, Data::Keys);
    let reads = history
        .iter()
        .filter(|t| t.id >= 10_000_000 && t.status == Status::Committed)
        .count();
    assert!(reads > 300, "{reads} snapshot reads committed");
    let report = check(&history);
    assert!(report.is_serializable(), "{report}");
}

#[test]
fn read_committed_histories_show_lost_updates_and_nothing_worse() {
    let history = run(Isolation::ReadCommitted, 150);
    let report = check_read_committed(&history);
    assert!(report.anomalies.is_empty(), "{report}");
    let full = check(&history);
    assert!(
        full.anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::G2 { .. })),
        "read committed under contention let no G2 through: {full}"
    );
}

#[test]
fn serializable_document_histories_have_no_anomalies() {
    let history = run_with_readers(Isolation::Serializable, 100, 0, Data::Documents);
    let committed = history
        .iter()
        .filter(|t| t.status == Status::Committed)
        .count();
    assert!(committed > 60, "{committed} of {} committed", history.len());
    let report = check(&history);
    assert!(report.is_serializable(), "{report}");
}
