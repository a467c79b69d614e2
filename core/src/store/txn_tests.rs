//! Transactions in the paged store against the in-memory model (`MemStore`): the same
//! results for the same commands, and prepared records that survive a checkpoint and a
//! crash.

use futures_lite::future::block_on;

use super::tests::open;
use crate::command::{BatchEncoder, Command};
use crate::log::sim::SimDisk;
use crate::state::{CommandResult, MemStore, StateMachine};

fn batch(commands: &[Command]) -> Vec<u8> {
    let mut encoder = BatchEncoder::new();
    commands.iter().for_each(|c| encoder.push(c));
    encoder.finish()
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn read(key: &str) -> Command {
    Command::Read { key: key.into() }
}

fn prepare(txn: u64, commands: Vec<Command>) -> Command {
    Command::TxnPrepare {
        txn,
        locks: 0,
        primary: 0,
        coordinator: 1,
        deadline_ms: 1_000,
        commands,
    }
}

/// Results without versions: the store and the model number versions alike, but the
/// store's records take versions of their own.
fn shape(result: &CommandResult) -> String {
    match result {
        CommandResult::Written { .. } => "written".into(),
        CommandResult::Value { found } => format!(
            "value {:?}",
            found
                .as_ref()
                .map(|(_, v)| String::from_utf8_lossy(v).to_string())
        ),
        CommandResult::Decided { commit, .. } => format!("Decided {{ commit: {commit} }}"),
        CommandResult::Many { results, .. } => {
            format!(
                "[{}]",
                results.iter().map(shape).collect::<Vec<_>>().join(", ")
            )
        }
        other => format!("{other:?}"),
    }
}

#[test]
fn transactions_apply_alike_in_the_store_and_the_model_and_prepared_ones_survive_a_crash() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    let mut model = MemStore::new();
    let steps: Vec<Vec<Command>> = vec![
        // One shard's part at once: reads see the writes before them.
        vec![Command::Txn {
            txn: 1,
            locks: 0,
            commands: vec![
                read("a"),
                put("a", "1"),
                read("a"),
                Command::Increment {
                    key: "n".into(),
                    delta: 5,
                },
                Command::Delete { key: "a".into() },
                read("a"),
            ],
        }],
        // Prepared: nothing visible until the decision.
        vec![prepare(2, vec![put("b", "2"), read("b")])],
        vec![Command::Txn {
            txn: 3,
            locks: 0,
            commands: vec![read("b")],
        }],
        // The decision applies the primary's prepared commands; a second one gets the first.
        vec![Command::TxnDecide {
            txn: 2,
            commit: true,
            at_least: 0,
        }],
        vec![Command::TxnDecide {
            txn: 2,
            commit: false,
            at_least: 0,
        }],
        vec![Command::TxnForget { txn: 2 }],
        // An abort decided before the prepare arrives: the prepare is refused.
        vec![Command::TxnDecide {
            txn: 4,
            commit: false,
            at_least: 0,
        }],
        vec![prepare(4, vec![put("c", "4")])],
        // A participant resolves what it prepared, once.
        vec![prepare(5, vec![put("d", "5")])],
        vec![Command::TxnResolve {
            txn: 5,
            commit: true,
            version: 0,
        }],
        vec![Command::TxnResolve {
            txn: 5,
            commit: true,
            version: 0,
        }],
        vec![prepare(6, vec![put("e", "6")])],
        vec![Command::TxnResolve {
            txn: 6,
            commit: false,
            version: 0,
        }],
        // Left prepared across the crash.
        vec![prepare(
            7,
            vec![put("f", "7"), Command::Delete { key: "b".into() }],
        )],
    ];
    let mut shapes = Vec::new();
    for (index, commands) in (1..).zip(&steps) {
        let data = batch(commands);
        let got = block_on(store.apply(index, 1, &data)).unwrap();
        let want = model.apply(index, &data).unwrap();
        let got: Vec<String> = got.iter().map(shape).collect();
        let want: Vec<String> = want.iter().map(shape).collect();
        assert_eq!(got, want, "entry {index}: {commands:?}");
        shapes.extend(got);
    }
    assert_eq!(
        shapes[0],
        "[value None, written, value Some(\"1\"), Integer { value: 5 }, Deleted { existed: true }, value None]"
    );
    assert_eq!(shapes[2], "[value None]", "a prepared write is not visible");
    assert_eq!(shapes[3], "[written, value Some(\"2\")]");
    assert_eq!(
        shapes[4], "Decided { commit: true }",
        "the first decision wins"
    );
    assert_eq!(shapes[7], "Decided { commit: false }");
    assert_eq!(shapes[9], "[written]");
    assert_eq!(
        shapes[10], "Decided { commit: true }",
        "resolving twice applies once"
    );
    assert_eq!(shapes[12], "Decided { commit: false }");
    for key in ["a", "c", "e", "f"] {
        assert_eq!(block_on(store.get(key.as_bytes())).unwrap(), None, "{key}");
    }
    assert_eq!(block_on(store.get(b"d")).unwrap().unwrap().value, b"5");
    assert_eq!(
        store.key_count(),
        3,
        "n, b and d: records are not key-value pairs"
    );

    let prepared = block_on(store.prepared_transactions()).unwrap();
    assert_eq!(prepared.len(), 1);
    assert_eq!(prepared[0].txn, 7);
    assert_eq!(prepared[0].keys(), vec![b"b".to_vec(), b"f".to_vec()]);
    block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).unwrap();
    drop(store);
    disk.crash(None);
    let store = open(&disk, 64);
    let prepared = block_on(store.prepared_transactions()).unwrap();
    assert_eq!(prepared.len(), 1, "a prepared transaction survives a crash");
    assert_eq!(block_on(store.transaction_decision(2)).unwrap(), None);
    assert_eq!(
        block_on(store.transaction_decision(4)).unwrap(),
        Some(false)
    );
    let index = steps.len() as u64 + 1;
    let resolved = block_on(store.apply(
        index,
        1,
        &batch(&[Command::TxnDecide {
            txn: 7,
            commit: true,
            at_least: 0,
        }]),
    ))
    .unwrap();
    assert_eq!(shape(&resolved[0]), "[written, Deleted { existed: true }]");
    assert_eq!(block_on(store.get(b"f")).unwrap().unwrap().value, b"7");
    assert_eq!(block_on(store.get(b"b")).unwrap(), None);
    assert!(block_on(store.prepared_transactions()).unwrap().is_empty());
}
