//! Document finds at a snapshot (ADR 0023): updates, deletes and inserts after the snapshot
//! opened — of documents and of the index entries they change — are invisible to a find at
//! it, by a collection scan and by an index alike, while a find without a snapshot sees them.

use futures_lite::future::block_on;

use super::super::tests::open;
use super::*;
use crate::command::{BatchEncoder, Command};
use crate::doc::cursor::Sort;
use crate::doc::value::Value;
use crate::log::sim::SimDisk;

type Store = PagedStore<crate::log::sim::SimLogFile>;

fn json(text: &str) -> Value {
    Value::from_json(text).unwrap()
}

fn apply(store: &Store, index: u64, command: DocCommand) {
    let mut encoder = BatchEncoder::new();
    encoder.push(&Command::Document {
        body: command.encode(),
    });
    let results = block_on(store.apply(index, 1, &encoder.finish())).unwrap();
    assert!(
        matches!(results[0], CommandResult::Document { .. }),
        "{:?}",
        results[0]
    );
}

fn find(store: &Store, filter: &str, at: Option<u64>) -> (Vec<String>, FindStats) {
    let query = FindQuery {
        filter: Filter::parse(&json(filter)).unwrap(),
        sort: Sort::parse(&json("{}")).unwrap(),
        limit: None,
        after: None,
    };
    let (docs, _, stats) = block_on(store.doc_find("c", &query, false, at)).unwrap();
    (docs.iter().map(|d| d.to_string()).collect(), stats)
}

#[test]
fn a_find_at_a_snapshot_sees_documents_and_index_entries_as_they_were() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    let docs: Vec<Value> = (0..40)
        .map(|i| {
            json(&format!(
                r#"{{"_id": {i}, "n": {i}, "pad": "{}"}}"#,
                "x".repeat(i * 10)
            ))
        })
        .collect();
    // On the empty collection, so that the index is ready at once.
    apply(
        &store,
        1,
        DocCommand::CreateIndex {
            coll: "c".into(),
            name: "n_1".into(),
            key: json(r#"{"n": 1}"#),
            unique: false,
        },
    );
    apply(
        &store,
        2,
        DocCommand::Insert {
            coll: "c".into(),
            docs,
        },
    );
    let filters = [
        r#"{"n": {"$gte": 10, "$lt": 20}}"#,
        r#"{"pad": {"$exists": true}}"#,
    ];
    let before: Vec<Vec<String>> = filters.iter().map(|f| find(&store, f, None).0).collect();
    let ts = store.snapshot_open(0);
    // After the snapshot: move documents in and out of the range (index entries change),
    // delete some, insert others.
    apply(
        &store,
        3,
        DocCommand::Update {
            coll: "c".into(),
            filter: json(r#"{"n": {"$lt": 15}}"#),
            update: json(r#"{"$inc": {"n": 100}}"#),
            multi: true,
            upsert: None,
        },
    );
    apply(
        &store,
        4,
        DocCommand::Delete {
            coll: "c".into(),
            filter: json(r#"{"n": {"$gte": 16, "$lt": 18}}"#),
            multi: true,
        },
    );
    apply(
        &store,
        5,
        DocCommand::Insert {
            coll: "c".into(),
            docs: vec![json(r#"{"_id": 100, "n": 12}"#)],
        },
    );
    for (filter, then) in filters.iter().zip(&before) {
        let (now, _) = find(&store, filter, None);
        assert_ne!(&now, then, "the writes changed what {filter} finds now");
        let (at, stats) = find(&store, filter, Some(ts));
        assert_eq!(
            &at, then,
            "{filter} at the snapshot, via {:?}",
            stats.access
        );
    }
    // The range query used the index.
    assert!(matches!(
        find(&store, filters[0], Some(ts)).1.access,
        super::plan::Access::Index { .. }
    ));
    store.snapshot_close(ts);
    assert_eq!(store.history_stats(), Default::default());
}
