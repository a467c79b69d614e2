//! Documents and indexes in the paged store: atomic commands, index builds, crash recovery
//! with `verify`, and indexed reads that agree with collection scans.

use futures_lite::future::block_on;
use proptest::prelude::*;

use super::super::tests::{apply_until_crash, open, replay};
use super::super::verify::verify;
use super::keys::{doc_key, id_of};
use super::*;
use crate::command::{BatchEncoder, Command};
use crate::doc::command::DocErrorKind;
use crate::doc::cursor::Sort;
use crate::doc::index_key;
use crate::doc::value::Value;
use crate::log::sim::{SimDisk, SimRng};

type Store = PagedStore<crate::log::sim::SimLogFile>;

fn json(text: &str) -> Value {
    Value::from_json(text).unwrap()
}

fn entry(commands: &[DocCommand]) -> Vec<u8> {
    let mut encoder = BatchEncoder::new();
    for c in commands {
        encoder.push(&Command::Document { body: c.encode() });
    }
    encoder.finish()
}

/// Applies one command as log entry `index`; returns its outcome.
fn apply(store: &Store, index: u64, command: DocCommand) -> Result<Value, DocError> {
    let results = block_on(store.apply(index, 1, &entry(&[command]))).unwrap();
    match results.into_iter().next().unwrap() {
        CommandResult::Document { reply } => Ok(binary::from_bytes(&reply).unwrap()),
        CommandResult::DocumentRefused { kind, message } => Err(DocError { kind, message }),
        other => panic!("unexpected result {other:?}"),
    }
}

fn insert(coll: &str, docs: &[&str]) -> DocCommand {
    DocCommand::Insert {
        coll: coll.into(),
        docs: docs.iter().map(|d| json(d)).collect(),
    }
}

fn update(coll: &str, filter: &str, update: &str, multi: bool) -> DocCommand {
    DocCommand::Update {
        coll: coll.into(),
        filter: json(filter),
        update: json(update),
        multi,
        upsert: None,
    }
}

fn create_index(coll: &str, name: &str, key: &str, unique: bool) -> DocCommand {
    DocCommand::CreateIndex {
        coll: coll.into(),
        name: name.into(),
        key: json(key),
        unique,
    }
}

fn query(filter: &str, sort: &str, limit: Option<usize>) -> FindQuery {
    FindQuery {
        filter: Filter::parse(&json(filter)).unwrap(),
        sort: Sort::parse(&json(sort)).unwrap(),
        limit,
        after: None,
    }
}

fn find(store: &Store, coll: &str, filter: &str, sort: &str) -> Vec<String> {
    let (docs, _, _) =
        block_on(store.doc_find(coll, &query(filter, sort, None), false, None)).unwrap();
    docs.iter().map(|d| d.to_string()).collect()
}

fn find_with_stats(store: &Store, coll: &str, filter: &str) -> (Vec<String>, FindStats) {
    let (docs, _, stats) =
        block_on(store.doc_find(coll, &query(filter, "{}", None), false, None)).unwrap();
    (docs.iter().map(|d| d.to_string()).collect(), stats)
}

fn assert_clean(disk: &SimDisk, store: &Store) {
    block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).unwrap();
    let report = block_on(verify(disk, 0)).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn documents_are_inserted_found_updated_and_deleted() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    let r = apply(
        &store,
        1,
        insert(
            "people",
            &[
                r#"{"_id": "p1", "name": "ann", "age": 31, "tags": ["a", "b"]}"#,
                r#"{"_id": "p2", "name": "bob", "age": 17}"#,
                r#"{"_id": 3, "name": "cy"}"#,
            ],
        ),
    )
    .unwrap();
    assert_eq!(r.to_string(), r#"{"inserted":3}"#);
    // _id order across types: numbers before strings.
    assert_eq!(
        find(&store, "people", "{}", "{}"),
        vec![
            r#"{"_id":3,"name":"cy"}"#,
            r#"{"_id":"p1","name":"ann","age":31,"tags":["a","b"]}"#,
            r#"{"_id":"p2","name":"bob","age":17}"#,
        ]
    );
    assert_eq!(
        find(&store, "people", r#"{"age": {"$gte": 18}}"#, "{}"),
        vec![r#"{"_id":"p1","name":"ann","age":31,"tags":["a","b"]}"#]
    );
    let r = apply(
        &store,
        2,
        update(
            "people",
            r#"{"age": {"$exists": true}}"#,
            r#"{"$inc": {"age": 1}}"#,
            true,
        ),
    )
    .unwrap();
    assert_eq!(r.to_string(), r#"{"matched":2,"modified":2}"#);
    let r = apply(
        &store,
        3,
        update(
            "people",
            r#"{"_id": "p2"}"#,
            r#"{"$set": {"age": 18}}"#,
            false,
        ),
    )
    .unwrap();
    assert_eq!(
        r.to_string(),
        r#"{"matched":1,"modified":0}"#,
        "an update that changes nothing modifies nothing"
    );
    // Upsert: the new document starts from the filter's equalities.
    let r = apply(
        &store,
        4,
        DocCommand::Update {
            coll: "people".into(),
            filter: json(r#"{"name": "dee", "addr.city": "Oslo"}"#),
            update: json(r#"{"$set": {"age": 40}}"#),
            multi: false,
            upsert: Some(json(r#""gen1""#)),
        },
    )
    .unwrap();
    assert_eq!(
        r.to_string(),
        r#"{"matched":0,"modified":0,"upserted":"gen1"}"#
    );
    assert_eq!(
        find(&store, "people", r#"{"name": "dee"}"#, "{}"),
        vec![r#"{"_id":"gen1","name":"dee","addr":{"city":"Oslo"},"age":40}"#]
    );
    let r = apply(
        &store,
        5,
        DocCommand::Delete {
            coll: "people".into(),
            filter: json(r#"{"age": {"$gt": 10}}"#),
            multi: true,
        },
    )
    .unwrap();
    assert_eq!(r.to_string(), r#"{"deleted":3}"#);
    assert_eq!(
        find(&store, "people", "{}", "{}"),
        vec![r#"{"_id":3,"name":"cy"}"#]
    );
    let r = apply(
        &store,
        6,
        DocCommand::Drop {
            coll: "people".into(),
        },
    )
    .unwrap();
    assert_eq!(r.to_string(), r#"{"dropped":true}"#);
    assert!(find(&store, "people", "{}", "{}").is_empty());
    assert!(block_on(store.doc_collections()).unwrap().is_empty());
    assert_clean(&disk, &store);
}

#[test]
fn a_refused_command_changes_nothing() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    apply(
        &store,
        1,
        create_index("u", "email_1", r#"{"email": 1}"#, true),
    )
    .unwrap();
    apply(
        &store,
        2,
        insert(
            "u",
            &[r#"{"_id": 1, "email": "a"}"#, r#"{"_id": 2, "email": "b"}"#],
        ),
    )
    .unwrap();
    let before = find(&store, "u", "{}", "{}");
    let refused = [
        // An existing _id, after a new document in the same command.
        insert("u", &[r#"{"_id": 9, "email": "z"}"#, r#"{"_id": 1}"#]),
        // The same _id twice in one command.
        insert("u", &[r#"{"_id": 7}"#, r#"{"_id": 7}"#]),
        // A unique key held by another document.
        insert("u", &[r#"{"_id": 8, "email": "a"}"#]),
        // A unique key twice in one command.
        insert(
            "u",
            &[r#"{"_id": 8, "email": "q"}"#, r#"{"_id": 9, "email": "q"}"#],
        ),
        // Two documents updated onto one key.
        update("u", "{}", r#"{"$set": {"email": "same"}}"#, true),
        // An update onto another document's key.
        update("u", r#"{"_id": 2}"#, r#"{"$set": {"email": "a"}}"#, false),
        // A bad update operator, and an _id change.
        update("u", "{}", r#"{"$bogus": {"x": 1}}"#, true),
        update("u", r#"{"_id": 1}"#, r#"{"$set": {"_id": 5}}"#, false),
        // Not a document, an array _id.
        insert("u", &[r#"[1]"#]),
        insert("u", &[r#"{"_id": [1]}"#]),
    ];
    let deep = (0..101).map(|_| "a").collect::<Vec<_>>().join(".");
    let refused = refused.into_iter().chain([
        // Deeper than 100 levels once the update or the upsert's seed is applied: the
        // document could not be read back.
        update(
            "u",
            r#"{"_id": 1}"#,
            &format!(r#"{{"$set": {{"{deep}": 1}}}}"#),
            false,
        ),
        DocCommand::Update {
            coll: "u".into(),
            filter: json(&format!(r#"{{"{deep}": 1}}"#)),
            update: json(r#"{"$set": {"x": 1}}"#),
            multi: false,
            upsert: Some(json("77")),
        },
    ]);
    let mut index = 3;
    for command in refused {
        let described = command.to_value().to_string();
        let error = apply(&store, index, command).unwrap_err();
        index += 1;
        assert!(
            matches!(
                error.kind,
                DocErrorKind::DuplicateKey | DocErrorKind::BadRequest
            ),
            "{described}: {error:?}"
        );
        assert_eq!(
            find(&store, "u", "{}", "{}"),
            before,
            "{described} changed nothing"
        );
    }
    // A key nobody holds is fine.
    apply(
        &store,
        index,
        update("u", "{}", r#"{"$set": {"email": "x"}}"#, false),
    )
    .unwrap();
    assert_eq!(
        find(&store, "u", r#"{"email": "x"}"#, "{}"),
        vec![r#"{"_id":1,"email":"x"}"#]
    );
    assert_clean(&disk, &store);
}

#[test]
fn planner_uses_id_ranges_and_indexes_and_explains() {
    let disk = SimDisk::new();
    let store = open(&disk, 256);
    let docs: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"_id": {i}, "age": {}, "city": "c{}"}}"#, i % 50, i % 7))
        .collect();
    let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
    apply(&store, 1, insert("p", &docs)).unwrap();
    let (found, stats) = find_with_stats(&store, "p", r#"{"_id": 42}"#);
    assert_eq!(found.len(), 1);
    assert!(matches!(stats.access, Access::IdRanges(_)));
    assert_eq!(stats.docs_examined, 1);
    let (unindexed, stats) = find_with_stats(&store, "p", r#"{"age": 7}"#);
    assert!(matches!(stats.access, Access::CollScan));
    assert_eq!(stats.docs_examined, 500);
    apply(
        &store,
        2,
        create_index("p", "age_1", r#"{"age": 1}"#, false),
    )
    .unwrap();
    let mut index = 3;
    while !block_on(store.doc_collection("p"))
        .unwrap()
        .unwrap()
        .indexes[0]
        .ready
    {
        apply(
            &store,
            index,
            DocCommand::BuildIndex {
                coll: "p".into(),
                name: "age_1".into(),
                batch: 64,
            },
        )
        .unwrap();
        index += 1;
    }
    assert_eq!(index, 3 + 8, "500 documents in steps of 64");
    let (indexed, stats) = find_with_stats(&store, "p", r#"{"age": 7}"#);
    assert_eq!(indexed, unindexed);
    assert!(matches!(stats.access, Access::Index { .. }));
    assert_eq!(stats.keys_examined, 10);
    assert_eq!(stats.docs_examined, 10);
    let explained = stats.describe(10).to_string();
    assert!(explained.contains(r#""index":"age_1""#), "{explained}");
    assert!(
        explained.contains(r#""bounds":[["7","after 7"]]"#),
        "{explained}"
    );
    // A sort the index gives stops at the limit.
    let (docs, _, stats) = block_on(store.doc_find(
        "p",
        &query(r#"{"age": {"$gte": 45}}"#, r#"{"age": 1}"#, Some(3)),
        false,
        None,
    ))
    .unwrap();
    assert!(stats.ordered);
    assert_eq!(stats.docs_examined, 3);
    assert_eq!(docs[0].to_string(), r#"{"_id":45,"age":45,"city":"c3"}"#);
    // The next page starts after the cursor's index entry, and reads only its documents.
    let mut next = query(r#"{"age": {"$gte": 45}}"#, r#"{"age": 1}"#, Some(3));
    let token = After::token(&next.sort, &json(r#"{"_id": 145, "age": 45}"#));
    next.after = Some(After::parse(&next.sort, &token).unwrap());
    let (docs, _, stats) = block_on(store.doc_find("p", &next, false, None)).unwrap();
    let ids: Vec<String> = docs.iter().map(|d| id_of(d).to_string()).collect();
    assert_eq!(ids, ["195", "245", "295"]);
    assert_eq!(stats.keys_examined, 3);
    assert_clean(&disk, &store);
}

#[test]
fn a_unique_index_over_duplicates_fails_its_build_and_leaves_no_entries() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    apply(
        &store,
        1,
        insert(
            "p",
            &[
                r#"{"_id": 1, "e": "x"}"#,
                r#"{"_id": 2, "e": "y"}"#,
                r#"{"_id": 3, "e": "x"}"#,
            ],
        ),
    )
    .unwrap();
    let r = apply(&store, 2, create_index("p", "e_1", r#"{"e": 1}"#, true)).unwrap();
    assert_eq!(r.to_string(), r#"{"created":true,"ready":false}"#);
    let r = apply(
        &store,
        3,
        DocCommand::BuildIndex {
            coll: "p".into(),
            name: "e_1".into(),
            batch: 100,
        },
    )
    .unwrap();
    assert!(r.to_string().contains("duplicate key"), "{r}");
    let coll = block_on(store.doc_collection("p")).unwrap().unwrap();
    assert!(coll.indexes.is_empty());
    assert_eq!(coll.failed.len(), 1);
    assert_clean(&disk, &store);
}

/// A random document command over a few ids, with arrays so that indexes go multikey.
fn random_command(rng: &mut SimRng) -> DocCommand {
    let id = rng.below(40);
    let a = rng.below(6);
    let b = rng.below(30);
    let doc = |rng: &mut SimRng| {
        let pad = "x".repeat(if rng.below(10) == 0 { 3000 } else { 10 });
        if rng.below(3) == 0 {
            json(&format!(
                r#"{{"_id": {id}, "a": [{a}, {}], "b": {b}, "pad": "{pad}"}}"#,
                a + 1
            ))
        } else {
            json(&format!(
                r#"{{"_id": {id}, "a": {a}, "b": {b}, "pad": "{pad}"}}"#
            ))
        }
    };
    match rng.below(5) {
        0 | 1 => DocCommand::Insert {
            coll: "c".into(),
            docs: vec![doc(rng)],
        },
        2 => DocCommand::Update {
            coll: "c".into(),
            filter: json(&format!(r#"{{"a": {a}}}"#)),
            update: json(&format!(r#"{{"$set": {{"b": {b}}}, "$inc": {{"n": 1}}}}"#)),
            multi: rng.below(2) == 0,
            upsert: (rng.below(3) == 0).then(|| Value::Int(100 + id as i64)),
        },
        3 => DocCommand::Delete {
            coll: "c".into(),
            filter: json(&format!(r#"{{"_id": {{"$gte": {id}}}, "a": {a}}}"#)),
            multi: rng.below(2) == 0,
        },
        _ => DocCommand::Update {
            coll: "c".into(),
            filter: json(&format!(r#"{{"_id": {id}}}"#)),
            update: json(&format!(r#"{{"a": {a}, "b": {b}}}"#)),
            multi: false,
            upsert: None,
        },
    }
}

fn all_docs(store: &Store) -> Vec<String> {
    find(store, "c", "{}", "{}")
}

/// The crash loop for documents: random document commands against a collection with a
/// multikey index and a unique index, a crash at a random write (torn), recovery from
/// the checkpoint plus the log. The collection must equal that of a store that never
/// crashed, and `verify` must find documents and indexes in agreement.
#[test]
fn crash_loop_with_documents_and_indexes() {
    let mut recovered_from_checkpoint = 0;
    for seed in 0..120u64 {
        let mut rng = SimRng::new(seed);
        let disk = SimDisk::new();
        let store = open(&disk, 12 + rng.below(24) as usize);
        let model_disk = SimDisk::new();
        let model = open(&model_disk, 256);
        let setup = vec![
            create_index("c", "a_1", r#"{"a": 1}"#, false),
            create_index("c", "b_1", r#"{"b": 1}"#, true),
        ];
        let entries = 10 + rng.below(40);
        let crash_at = 2 + rng.below(entries);
        let mut batches = vec![setup];
        for _ in 0..entries {
            batches.push(
                (0..1 + rng.below(8))
                    .map(|_| random_command(&mut rng))
                    .collect(),
            );
        }
        let encoded: Vec<Vec<u8>> = batches.iter().map(|c| entry(c)).collect();
        let logged = apply_until_crash(&disk, store, &mut rng, crash_at, &encoded);
        // The model never crashed: it holds every entry that reached the log.
        replay(&model, &encoded, logged);
        let store = open(&disk, 32);
        recovered_from_checkpoint += u32::from(store.applied_index() > 0);
        replay(&store, &encoded, logged);
        assert_eq!(all_docs(&store), all_docs(&model), "seed {seed}");
        for filter in [
            r#"{"a": 2}"#,
            r#"{"b": {"$lt": 10}}"#,
            r#"{"a": {"$in": [1, 4]}}"#,
        ] {
            assert_eq!(
                find(&store, "c", filter, r#"{"b": 1}"#),
                find(&model, "c", filter, r#"{"b": 1}"#),
                "seed {seed}: {filter}"
            );
        }
        assert_clean(&disk, &store);
    }
    assert!(
        recovered_from_checkpoint > 40,
        "{recovered_from_checkpoint}"
    );
}

#[test]
fn verify_finds_an_index_entry_without_its_document() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    apply(&store, 1, create_index("c", "a_1", r#"{"a": 1}"#, false)).unwrap();
    apply(&store, 2, insert("c", &[r#"{"_id": 1, "a": 5}"#])).unwrap();
    assert_clean(&disk, &store);
    // Remove the document behind the index's back, as a bug would.
    let coll = block_on(store.doc_collection("c")).unwrap().unwrap();
    let key = doc_key(coll.id, &index_key::key(&Value::Int(1)));
    block_on(store.delete(3, &key)).unwrap();
    block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).unwrap();
    let report = block_on(verify(&disk, 0)).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("no document")),
        "{:?}",
        report.problems
    );
}

/// Random documents over a few fields, some with arrays and nested documents.
fn doc_strategy() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        (0i64..6).prop_map(|n| n.to_string()),
        Just("null".to_string()),
        Just("\"s\"".to_string()),
        Just("2.5".to_string()),
    ];
    let field = prop_oneof![
        3 => scalar.clone(),
        1 => prop::collection::vec(scalar.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
        1 => scalar.clone().prop_map(|v| format!(r#"{{"x": {v}}}"#)),
    ];
    (
        prop::option::of(field.clone()),
        prop::option::of(field),
        prop::option::of(scalar),
    )
        .prop_map(|(a, b, c)| {
            let mut parts = Vec::new();
            if let Some(a) = a {
                parts.push(format!(r#""a": {a}"#));
            }
            if let Some(b) = b {
                parts.push(format!(r#""b": {b}"#));
            }
            if let Some(c) = c {
                parts.push(format!(r#""c": {c}"#));
            }
            parts.join(", ")
        })
}

fn filter_strategy() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        (0i64..6).prop_map(|n| n.to_string()),
        Just("null".to_string()),
        Just("\"s\"".to_string()),
        Just("2.5".to_string()),
    ];
    let path = prop_oneof![Just("a"), Just("b"), Just("c"), Just("a.x")];
    let cond = (path, 0u8..7, value.clone(), value).prop_map(|(p, op, v, w)| match op {
        0 => format!(r#""{p}": {v}"#),
        1 => format!(r#""{p}": {{"$gt": {v}}}"#),
        2 => format!(r#""{p}": {{"$lte": {v}}}"#),
        3 => format!(r#""{p}": {{"$in": [{v}, {w}]}}"#),
        4 => format!(r#""{p}": {{"$gte": {v}, "$lt": {w}}}"#),
        5 => format!(r#""{p}": {{"$ne": {v}}}"#),
        _ => format!(r#""{p}": {{"$exists": false}}"#),
    });
    prop::collection::vec(cond, 0..3).prop_map(|c| match c.len() {
        0 | 1 => format!("{{{}}}", c.join("")),
        _ => format!(
            r#"{{"$and": [{}]}}"#,
            c.iter()
                .map(|c| format!("{{{c}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The issue's property: the same queries with and without indexes return the same
    /// results, through the store's planner and its index entries.
    #[test]
    fn indexed_and_unindexed_queries_agree(
        docs in prop::collection::vec(doc_strategy(), 1..60),
        filters in prop::collection::vec(filter_strategy(), 1..8),
        limit in prop::option::of(1usize..5),
    ) {
        let plain_disk = SimDisk::new();
        let plain = open(&plain_disk, 128);
        let indexed_disk = SimDisk::new();
        let indexed = open(&indexed_disk, 128);
        let texts: Vec<String> = docs
            .iter()
            .enumerate()
            .map(|(i, d)| if d.is_empty() { format!(r#"{{"_id": {i}}}"#) } else { format!(r#"{{"_id": {i}, {d}}}"#) })
            .collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        apply(&plain, 1, insert("c", &texts)).unwrap();
        // Half the indexes exist before the documents, half are built after.
        apply(&indexed, 1, create_index("c", "a_1", r#"{"a": 1}"#, false)).unwrap();
        apply(&indexed, 2, create_index("c", "b_-1_a_1", r#"{"b": -1, "a": 1}"#, false)).unwrap();
        apply(&indexed, 3, insert("c", &texts)).unwrap();
        apply(&indexed, 4, create_index("c", "c_1", r#"{"c": 1}"#, false)).unwrap();
        apply(&indexed, 5, create_index("c", "ax_1", r#"{"a.x": 1}"#, false)).unwrap();
        let mut index = 6;
        for name in ["c_1", "ax_1"] {
            loop {
                let r = apply(&indexed, index, DocCommand::BuildIndex { coll: "c".into(), name: name.into(), batch: 7 }).unwrap();
                index += 1;
                if r.get("ready") == Some(&Value::Bool(true)) { break; }
            }
        }
        for filter in &filters {
            for sort in ["{}", r#"{"a": 1}"#, r#"{"b": -1, "a": 1}"#, r#"{"c": 1}"#] {
                let q = query(filter, sort, limit);
                let (want, n1, _) = block_on(plain.doc_find("c", &q, false, None)).unwrap();
                let (got, n2, stats) = block_on(indexed.doc_find("c", &q, false, None)).unwrap();
                let want: Vec<String> = want.iter().map(|d| d.to_string()).collect();
                let got: Vec<String> = got.iter().map(|d| d.to_string()).collect();
                prop_assert_eq!(&got, &want, "filter {} sort {} via {:?}", filter, sort, stats.access);
                if limit.is_none() {
                    prop_assert_eq!(n1, n2);
                }
            }
        }
        let report = block_on(async {
            indexed.checkpoint(None::<fn(usize) -> std::future::Ready<()>>).await.unwrap();
            verify(&indexed_disk, 0).await
        }).unwrap();
        prop_assert!(report.is_clean(), "{:?}", report.problems);
    }
}

/// A write checked against an out-of-date list of unique indexes is refused, so that its
/// coordinator checks the new index on the other shards and retries.
#[test]
fn a_write_checked_against_old_unique_indexes_is_refused_for_a_retry() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    apply(&store, 1, insert("c", &[r#"{"_id": 1, "e": "x"}"#])).unwrap();
    apply(&store, 2, create_index("c", "e_1", r#"{"e": 1}"#, true)).unwrap();
    let checked = |unique: &[&str]| DocCommand::Checked {
        coll: "c".into(),
        unique: unique.iter().map(|s| s.to_string()).collect(),
        command: Box::new(insert("c", &[r#"{"_id": 2, "e": "y"}"#])),
    };
    let error = apply(&store, 3, checked(&[])).unwrap_err();
    assert_eq!(error.kind, DocErrorKind::Retry);
    assert_eq!(
        find(&store, "c", "{}", "{}").len(),
        1,
        "nothing was written"
    );
    apply(&store, 4, checked(&["e_1"])).unwrap();
    assert_eq!(find(&store, "c", "{}", "{}").len(), 2);
    assert_clean(&disk, &store);
}

/// A catalogue load that waited for the disk while a command created a collection must not
/// put its older copy over the newer one: the new collection would vanish from the cache,
/// and its next write would start it over with the id counter wound back.
#[test]
fn a_slow_catalogue_load_does_not_undo_a_newer_catalogue() {
    let disk = SimDisk::new();
    {
        let store = open(&disk, 1024);
        for i in 0..300 {
            let coll = format!("c{i:03}");
            apply(&store, i + 1, insert(&coll, &[r#"{"_id": 1}"#])).unwrap();
        }
        block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).unwrap();
    }
    disk.set_yielding_reads(true);
    let mut interleaved = 0;
    for polls in 1.. {
        // A cold store: the catalogue is on disk and every page read waits once.
        let store = open(&disk, 1024);
        let mut load = Box::pin(store.doc_collections());
        let finished =
            (0..polls).any(|_| block_on(futures_lite::future::poll_once(&mut load)).is_some());
        if finished {
            break;
        }
        // The load is part-way through the catalogue; a command creates a collection that
        // sorts before where the load has got to.
        apply(&store, 301, insert("c000a", &[r#"{"_id": 1}"#])).unwrap();
        block_on(load).unwrap();
        interleaved += 1;
        assert!(
            block_on(store.doc_collection("c000a")).unwrap().is_some(),
            "the collection created after {polls} polls of a load is gone from the catalogue"
        );
        let names = block_on(store.doc_collections()).unwrap();
        assert_eq!(names.len(), 301);
    }
    assert!(
        interleaved > 3,
        "the load finished within {interleaved} polls"
    );
}

/// A transaction's document writes (ADR 0024) are a replace-or-insert or a delete by `_id`
/// each, prepared with the transaction and applied with their index entries only when its
/// decision comes, also after a crash.
#[test]
fn prepared_document_writes_apply_with_their_index_entries_at_the_decision() {
    let disk = SimDisk::new();
    let store = open(&disk, 64);
    apply(&store, 1, create_index("c", "n_1", r#"{"n": 1}"#, false)).unwrap();
    apply(
        &store,
        2,
        insert("c", &[r#"{"_id": 1, "n": 1}"#, r#"{"_id": 2, "n": 2}"#]),
    )
    .unwrap();
    let by_id = |id: i64| json(&format!(r#"{{"_id": {{"$eq": {id}}}}}"#));
    let put = |id: i64, doc: &str| DocCommand::Update {
        coll: "c".into(),
        filter: by_id(id),
        update: json(doc),
        multi: false,
        upsert: Some(Value::Int(id)),
    };
    let steps: Vec<Command> = [
        put(1, r#"{"_id": 1, "n": 10}"#),
        put(3, r#"{"_id": 3, "n": 30}"#),
        DocCommand::Delete {
            coll: "c".into(),
            filter: by_id(2),
            multi: false,
        },
    ]
    .iter()
    .map(|c| Command::Document { body: c.encode() })
    .collect();
    let prepare = Command::TxnPrepare {
        txn: 9,
        locks: 0,
        primary: 0,
        coordinator: 1,
        deadline_ms: 1_000,
        commands: steps,
    };
    let mut encoder = BatchEncoder::new();
    encoder.push(&prepare);
    block_on(store.apply(3, 1, &encoder.finish())).unwrap();
    assert_eq!(
        find(&store, "c", "{}", "{}"),
        vec![r#"{"_id":1,"n":1}"#, r#"{"_id":2,"n":2}"#],
        "nothing before the decision"
    );
    block_on(store.checkpoint(None::<fn(usize) -> std::future::Ready<()>>)).unwrap();
    drop(store);
    disk.crash(None);
    let store = open(&disk, 64);
    let mut encoder = BatchEncoder::new();
    encoder.push(&Command::TxnDecide {
        txn: 9,
        commit: true,
        at_least: 0,
    });
    let results = block_on(store.apply(4, 1, &encoder.finish())).unwrap();
    let CommandResult::Many { results, .. } = &results[0] else {
        panic!("the decision applies the steps: {results:?}");
    };
    assert!(
        results
            .iter()
            .all(|r| matches!(r, CommandResult::Document { .. })),
        "{results:?}"
    );
    assert_eq!(
        find(&store, "c", "{}", "{}"),
        vec![r#"{"_id":1,"n":10}"#, r#"{"_id":3,"n":30}"#]
    );
    // The index agrees: the old keys are gone, the new ones found through it.
    let (found, stats) = find_with_stats(&store, "c", r#"{"n": {"$gte": 10}}"#);
    assert_eq!(found.len(), 2);
    assert!(
        stats.keys_examined > 0,
        "found through the index: {stats:?}"
    );
    assert!(find(&store, "c", r#"{"n": 1}"#, "{}").is_empty());
    assert_clean(&disk, &store);
}
