//! Documents against a real 2-shard kvsd: the issue's CLI examples, batch mode, bad
//! requests, cursors, unique indexes across shards, online index builds, and kill -9 during
//! indexed document writes (after restart, `kvsd --verify` finds collection and indexes in
//! agreement, and every acknowledged document is there).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{kvs, kvs_batch, kvs_binary, verify_data_dir as verify, Server};
use kvs_wire::ErrorCode;
use serde_json::{json, Value as J};

fn ok(server: &Server, args: &[&str]) -> String {
    let (code, out, err) = kvs(server, args);
    assert_eq!(code, 0, "kvs {args:?}: {err}");
    out
}

fn lines(text: &str) -> Vec<J> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const PEOPLE: &[&str] = &[
    r#"{"_id": "p1", "name": "ann", "age": 31, "addr": {"city": "Oslo"}, "tags": ["a","b"]}"#,
    r#"{"_id": "p2", "name": "bob", "age": 17, "addr": {"city": "Lima"}}"#,
    r#"{"_id": "p3", "name": "cy", "age": 45, "addr": {"city": "Lima"}, "tags": ["b"]}"#,
    r#"{"_id": "p4", "name": "dee", "age": 22, "addr": {"city": "Rome"}}"#,
    r#"{"_id": "p5", "name": "eve", "age": 28, "addr": {"city": "Oslo"}}"#,
];

#[test]
fn the_issue_examples_work_through_the_cli_on_two_shards() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    for doc in PEOPLE {
        let id = ok(&server, &["insert", "people", doc]);
        assert!(id.starts_with("\"p"), "insert prints the _id: {id}");
    }
    // A generated _id is printed, and the document is stored under it.
    let id = ok(
        &server,
        &["insert", "people", r#"{"name": "fay", "age": 5}"#],
    );
    let id: J = serde_json::from_str(id.trim()).unwrap();
    assert_eq!(id.as_str().unwrap().len(), 24);
    let found = ok(
        &server,
        &["find", "people", &json!({"_id": id}).to_string()],
    );
    assert_eq!(lines(&found)[0]["name"], "fay");

    let query = r#"{"age": {"$gte": 18}, "addr.city": {"$in": ["Oslo", "Lima"]}}"#;
    let found = ok(
        &server,
        &[
            "find",
            "people",
            query,
            "--sort",
            r#"{"name": 1}"#,
            "--limit",
            "10",
        ],
    );
    let names: Vec<J> = lines(&found).iter().map(|d| d["name"].clone()).collect();
    assert_eq!(names, vec!["ann", "cy", "eve"]);
    // Documents come back as stored, fields in order.
    assert_eq!(
        found.lines().next().unwrap(),
        r#"{"_id":"p1","name":"ann","age":31,"addr":{"city":"Oslo"},"tags":["a","b"]}"#
    );

    let grouped = ok(
        &server,
        &[
            "aggregate",
            "people",
            r#"[{"$match": {"age": {"$gt": 20}}}, {"$group": {"_id": "$addr.city", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]"#,
        ],
    );
    assert_eq!(
        grouped,
        "{\"_id\":\"Lima\",\"n\":1}\n{\"_id\":\"Oslo\",\"n\":2}\n{\"_id\":\"Rome\",\"n\":1}\n"
    );

    let (code, before, _) = kvs(&server, &["explain", "people", r#"{"age": {"$gte": 18}}"#]);
    assert_eq!(code, 0);
    let before: J = serde_json::from_str(&before).unwrap();
    assert_eq!(before["shards"][0]["stage"], "COLLSCAN");
    assert_eq!(
        ok(&server, &["index", "create", "people", "age"]),
        "age_1\n"
    );
    let after: J = serde_json::from_str(&ok(
        &server,
        &["explain", "people", r#"{"age": {"$gte": 18}}"#],
    ))
    .unwrap();
    assert_eq!(after["shards"][0]["stage"], "IXSCAN");
    assert_eq!(after["shards"][0]["index"], "age_1");
    assert_eq!(after["nReturned"], 4);
    assert_eq!(after["docsExamined"], 4, "the index reads only the matches");
    assert_eq!(before["docsExamined"], 6);
    assert!(after["shards"][0]["bounds"].is_array());
    // An _id equality goes to one shard.
    let pinned: J =
        serde_json::from_str(&ok(&server, &["explain", "people", r#"{"_id": "p3"}"#])).unwrap();
    assert_eq!(pinned["shardsAsked"].as_array().unwrap().len(), 1);

    let indexes = lines(&ok(&server, &["index", "list", "people"]));
    assert_eq!(indexes.len(), 2);
    assert_eq!(indexes[1]["name"], "age_1");
    assert_eq!(indexes[1]["state"], "ready");

    assert_eq!(ok(&server, &["count", "people"]), "6\n");
    assert_eq!(ok(&server, &["count", "people", r#"{"tags": "b"}"#]), "2\n");
    let updated = ok(
        &server,
        &[
            "update",
            "people",
            r#"{"addr.city": "Lima"}"#,
            r#"{"$inc": {"age": 1}}"#,
            "--many",
        ],
    );
    assert_eq!(lines(&updated)[0], json!({"matched": 2, "modified": 2}));
    let upserted = ok(
        &server,
        &[
            "update",
            "people",
            r#"{"name": "gil"}"#,
            r#"{"$set": {"age": 60}}"#,
            "--upsert",
        ],
    );
    assert!(lines(&upserted)[0]["upserted"].is_string());
    let projected = ok(
        &server,
        &[
            "find",
            "people",
            r#"{"name": "gil"}"#,
            "--projection",
            r#"{"_id": 0}"#,
        ],
    );
    assert_eq!(projected, "{\"name\":\"gil\",\"age\":60}\n");
    // bob (18 after the increment) and fay (5).
    assert_eq!(
        ok(&server, &["remove", "people", r#"{"age": {"$lt": 20}}"#]),
        "{\"deleted\":2}\n"
    );
    assert_eq!(
        ok(
            &server,
            &["remove", "people", r#"{"addr.city": "Oslo"}"#, "--one"]
        ),
        "{\"deleted\":1}\n"
    );
    assert_eq!(ok(&server, &["count", "people"]), "4\n");
    // Key-value commands keep their meaning beside documents.
    ok(&server, &["put", "people", "not a collection"]);
    assert_eq!(ok(&server, &["get", "people"]), "not a collection\n");
    assert_eq!(ok(&server, &["scan"]), "people\tnot a collection\n");
    let info: J = serde_json::from_str(&ok(&server, &["info"])).unwrap();
    assert_eq!(info["keys"], 1, "documents are not key-value pairs");

    ok(&server, &["insert", "other", "{}"]);
    assert_eq!(ok(&server, &["collections"]), "other\npeople\n");
    assert_eq!(ok(&server, &["drop", "other"]), "OK\n");
    assert_eq!(kvs(&server, &["drop", "other"]).0, 1);
    assert_eq!(ok(&server, &["collections"]), "people\n");
    assert_eq!(ok(&server, &["index", "drop", "people", "age_1"]), "OK\n");
    assert_eq!(lines(&ok(&server, &["index", "list", "people"])).len(), 1);
}

#[test]
fn batch_mode_prints_one_line_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let input = [
        r#"insert c [{"_id": 1, "a": "x y"}, {"_id": 2, "a": "z"}, {"_id": 3, "a": "z"}]"#,
        r#"insert c {"_id": 4, "a": "w"}"#,
        r#"find c {"a": "z"}"#,
        r#"find c --sort {"_id": -1} --limit 2 {}"#,
        r#"count c {"a": {"$ne": "z"}}"#,
        r#"update c {"_id": 1} {"$set": {"b": [1, 2]}}"#,
        r#"aggregate c [{"$group": {"_id": "$a", "n": {"$count": {}}}}, {"$sort": {"n": -1, "_id": 1}}]"#,
        r#"index create c a --unique"#,
        r#"index create c b,-a"#,
        r#"index list c"#,
        r#"find c {"a": {"$oops": 1}}"#,
        r#"insert c {"_id": 1}"#,
        r#"explain c {"b": 2}"#,
        r#"remove c {}"#,
        r#"collections"#,
        r#"put k v v"#,
        r#"get k"#,
    ]
    .join("\n");
    let (_, text) = kvs_batch(&server, input);
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), 17, "{text}");
    assert_eq!(got[0], "[1,2,3]");
    assert_eq!(got[1], "4");
    assert_eq!(got[2], r#"[{"_id":2,"a":"z"},{"_id":3,"a":"z"}]"#);
    assert_eq!(got[3], r#"[{"_id":4,"a":"w"},{"_id":3,"a":"z"}]"#);
    assert_eq!(got[4], "2");
    assert_eq!(got[5], r#"{"matched":1,"modified":1}"#);
    assert_eq!(
        got[6],
        r#"[{"_id":"z","n":2},{"_id":"w","n":1},{"_id":"x y","n":1}]"#
    );
    assert!(got[7].starts_with("ERR DUPLICATE_KEY"), "{}", got[7]);
    assert_eq!(got[8], "b_1_a_-1");
    let indexes: J = serde_json::from_str(got[9]).unwrap();
    assert_eq!(
        indexes.as_array().unwrap().len(),
        2,
        "the failed index is gone"
    );
    assert!(got[10].starts_with("ERR BAD_REQUEST") && got[10].contains("$oops"));
    assert!(got[11].starts_with("ERR DUPLICATE_KEY"), "{}", got[11]);
    let plan: J = serde_json::from_str(got[12]).unwrap();
    assert_eq!(plan["nReturned"], 1);
    assert_eq!(got[13], r#"{"deleted":4}"#);
    assert_eq!(got[14], r#"["c"]"#);
    assert_eq!(got[15], "OK");
    assert_eq!(got[16], "v v");
}

#[test]
fn bad_requests_name_the_offending_part_and_keep_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    client.insert("c", &[json!({"_id": 1, "a": 1})]).unwrap();
    let deep = format!("{}1{}", r#"{"a": "#.repeat(120), "}".repeat(120));
    let cases: Vec<(J, &str)> = vec![
        (json!({"find": "c", "filter": {"a": {"$frob": 1}}}), "$frob"),
        (json!({"find": "c", "filter": {"a": {"$in": 5}}}), "$in"),
        (json!({"find": "c", "filter": {"$or": {}}}), "$or"),
        (json!({"find": "c", "sort": {"a": 2}}), "sort"),
        (json!({"find": "c", "limit": -1}), "limit"),
        (json!({"find": "c", "filtr": {}}), "filtr"),
        (json!({"find": 7}), "collection name"),
        (json!({"find": "$bad"}), "$bad"),
        (json!({"frobnicate": "c"}), "frobnicate"),
        (
            json!({"update": "c", "filter": {}, "u": {"$set": {"_id": 2}}}),
            "_id",
        ),
        (
            json!({"update": "c", "filter": {}, "u": {"$inc": {"a": "x"}}}),
            "$inc",
        ),
        (json!({"insert": "c", "documents": [1]}), "document 0"),
        (json!({"insert": "c", "documents": [{"_id": [1]}]}), "array"),
        (
            json!({"aggregate": "c", "pipeline": [{"$bogus": 1}]}),
            "$bogus",
        ),
        (
            json!({"aggregate": "c", "pipeline": [{"$group": {"n": {"$sum": 1}}}]}),
            "_id",
        ),
        (
            json!({"aggregate": "c", "pipeline": [{"$project": {"x": {"$frob": "$a"}}}]}),
            "$frob",
        ),
        // Expressions that fail on the data: on the coordinator ($project) and on the
        // shards (a $group's partial groups).
        (
            json!({"aggregate": "c", "pipeline": [{"$project": {"x": {"$add": ["$a", "s"]}}}]}),
            "$add only supports numbers",
        ),
        (
            json!({"aggregate": "c",
                   "pipeline": [{"$group": {"_id": null, "t": {"$sum": {"$divide": ["$a", 0]}}}}]}),
            "$divide by zero",
        ),
        (json!({"createIndex": "c", "key": {"a": "up"}}), "a"),
        (
            json!({"find": "c", "filter": {"a": {"$regex": "(?<=x)"}}}),
            "regex",
        ),
    ];
    for (command, part) in cases {
        let error = client.document(&command).unwrap_err();
        assert_eq!(
            error.code(),
            Some(ErrorCode::BadRequest),
            "{command}: {error}"
        );
        assert!(error.to_string().contains(part), "{command}: {error}");
    }
    // Malformed JSON and too deep nesting, as raw text.
    for (text, part) in [(r#"{"find": "c""#.to_string(), "JSON"), (deep, "deeper")] {
        let request = kvs_wire::Request::Document {
            command: text.into_bytes(),
        };
        let error = client.call(&request).unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::BadRequest));
        assert!(error.to_string().contains(part), "{error}");
    }
    // Nothing was changed, and the same connection goes on.
    assert_eq!(
        client.find("c", &json!({})).unwrap(),
        vec![json!({"_id": 1, "a": 1})]
    );
    // Through the CLI: a typed error and exit code 2.
    let (code, _, err) = kvs(&server, &["find", "c", r#"{"a": {"$gt": }"#]);
    assert_eq!(code, 2);
    assert!(err.contains("not JSON"), "{err}");
    let (code, _, err) = kvs(&server, &["find", "c", r#"{"a": {"$size": "x"}}"#]);
    assert_eq!(code, 2);
    assert!(
        err.contains("BAD_REQUEST") && err.contains("$size"),
        "{err}"
    );
}

#[test]
fn finds_page_through_cursors_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    let docs: Vec<J> = (0..2500)
        .map(|i| json!({"_id": i, "g": i % 7, "pad": "x".repeat(200)}))
        .collect();
    for chunk in docs.chunks(500) {
        client.insert("c", chunk).unwrap();
    }
    let ids = |docs: &[J]| {
        docs.iter()
            .map(|d| d["_id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    // Natural order (_id), in pages of 300.
    let all = client.find("c", &json!({"batchSize": 300})).unwrap();
    assert_eq!(ids(&all), (0..2500).collect::<Vec<_>>());
    // A sort, a skip and a limit across pages.
    let page = client
        .find(
            "c",
            &json!({"filter": {"g": {"$lt": 3}}, "sort": {"g": -1, "_id": 1}, "skip": 100, "limit": 700, "batchSize": 128}),
        )
        .unwrap();
    let mut expected: Vec<(i64, i64)> = (0..2500)
        .filter(|i| i % 7 < 3)
        .map(|i| (i % 7, i))
        .collect();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let expected: Vec<i64> = expected
        .into_iter()
        .skip(100)
        .take(700)
        .map(|(_, i)| i)
        .collect();
    assert_eq!(ids(&page), expected);
    // Sort paths a projection cannot carry (an array index; a path inside another), with
    // and without an index that gives the order: every document exactly once, in order.
    let arrays: Vec<J> = (0..500)
        .map(|i| json!({"_id": i, "a": [i % 5, i], "o": {"b": i % 7}}))
        .collect();
    client.insert("arr", &arrays).unwrap();
    for round in 0..2 {
        let got = client
            .find(
                "arr",
                &json!({"sort": {"a.0": 1, "_id": -1}, "batchSize": 37}),
            )
            .unwrap();
        let mut want: Vec<(i64, i64)> = (0..500).map(|i| (i % 5, -i)).collect();
        want.sort();
        assert_eq!(
            ids(&got),
            want.iter().map(|(_, i)| -i).collect::<Vec<_>>(),
            "round {round}"
        );
        let got = client
            .find(
                "arr",
                &json!({"sort": {"o": 1, "o.b": -1}, "batchSize": 41}),
            )
            .unwrap();
        let mut want: Vec<(i64, i64)> = (0..500).map(|i| (i % 7, i)).collect();
        want.sort();
        assert_eq!(
            ids(&got),
            want.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
            "round {round}"
        );
        client
            .create_index("arr", &json!({"a.0": 1, "_id": -1}), None, false)
            .unwrap();
    }
    // A damaged cursor is a BAD_REQUEST.
    let error = client
        .document(&json!({"find": "c", "cursor": {"after": {"keys": [1], "_id": 3}}}))
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::BadRequest), "{error}");
    // One page at a time, by hand: the reply says where to continue.
    let first = client
        .document(&json!({"find": "c", "batchSize": 1000}))
        .unwrap();
    assert_eq!(first["documents"].as_array().unwrap().len(), 1000);
    assert!(first["cursor"].is_object());
    let last = client
        .document(&json!({"find": "c", "batchSize": 1000, "skip": 2000}))
        .unwrap();
    assert_eq!(last["documents"].as_array().unwrap().len(), 500);
    assert!(last.get("cursor").is_none(), "the last page has no cursor");
}

#[test]
fn unique_indexes_hold_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    client
        .create_index("u", &json!({"email": 1}), None, true)
        .unwrap();
    let docs: Vec<J> = (0..40)
        .map(|i| json!({"_id": i, "email": format!("e{i}")}))
        .collect();
    client.insert("u", &docs).unwrap();
    // Every _id lands on some shard; each duplicate must be refused wherever it goes.
    for i in 100..140 {
        let error = client
            .insert("u", &[json!({"_id": i, "email": format!("e{}", i - 100)})])
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::DuplicateKey), "{error}");
    }
    // Two new documents with one key in one insert.
    let error = client
        .insert(
            "u",
            &[
                json!({"_id": 200, "email": "new"}),
                json!({"_id": 201, "email": "new"}),
            ],
        )
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::DuplicateKey));
    // An update onto a taken key, wherever the holder lives.
    for i in 1..40 {
        let error = client
            .update(
                "u",
                &json!({"_id": 0}),
                &json!({"$set": {"email": format!("e{i}")}}),
                false,
                false,
            )
            .unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::DuplicateKey));
    }
    assert_eq!(client.count("u", &json!({})).unwrap(), 40);
    assert_eq!(
        client.find("u", &json!({"filter": {"_id": 0}})).unwrap(),
        vec![json!({"_id": 0, "email": "e0"})]
    );
    // Concurrent inserts of one key from many connections: exactly one wins.
    let winners = Arc::new(Mutex::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (addr, winners) = (server.addr.clone(), Arc::clone(&winners));
            std::thread::spawn(move || {
                let client = kvs_wire::Client::connect(&addr).unwrap();
                if client
                    .insert("u", &[json!({"_id": 1000 + t, "email": "race"})])
                    .is_ok()
                {
                    *winners.lock().unwrap() += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*winners.lock().unwrap(), 1);
    // A unique index over existing duplicates is refused and leaves nothing behind.
    client
        .insert("v", &[json!({"_id": 1, "k": 1}), json!({"_id": 2, "k": 1})])
        .unwrap();
    let error = client
        .create_index("v", &json!({"k": 1}), None, true)
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::DuplicateKey), "{error}");
    assert_eq!(client.list_indexes("v").unwrap().len(), 1);
}

#[test]
fn an_index_builds_online_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    for chunk in (0..20_000).collect::<Vec<i64>>().chunks(1000) {
        let docs: Vec<J> = chunk
            .iter()
            .map(|&i| json!({"_id": i, "n": i % 1000, "m": i % 1000}))
            .collect();
        client.insert("c", &docs).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, stop) = (server.addr.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let client = kvs_wire::Client::connect(&addr).unwrap();
            let mut i = 20_000;
            let mut writes = 0;
            while !stop.load(Ordering::SeqCst) {
                client
                    .insert("c", &[json!({"_id": i, "n": i % 1000, "m": i % 1000})])
                    .unwrap();
                client
                    .update(
                        "c",
                        &json!({"_id": i - 20_000}),
                        &json!({"$set": {"n": 5000, "m": 5000}}),
                        false,
                        false,
                    )
                    .unwrap();
                i += 1;
                writes += 2;
            }
            writes
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    client
        .create_index("c", &json!({"n": 1}), None, false)
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    let indexes = client.list_indexes("c").unwrap();
    assert_eq!(indexes[1]["state"], "ready");
    for filter in [
        json!({"n": 7}),
        json!({"n": {"$gte": 990}}),
        json!({"n": 5000}),
    ] {
        let plan = client.explain("c", &json!({"filter": filter})).unwrap();
        assert_eq!(plan["shards"][0]["stage"], "IXSCAN", "{plan}");
        let m_filter: J =
            serde_json::from_str(&filter.to_string().replace("\"n\"", "\"m\"")).unwrap();
        let by_index = client.find("c", &json!({"filter": filter})).unwrap();
        let by_scan = client.find("c", &json!({"filter": m_filter})).unwrap();
        assert_eq!(by_index, by_scan, "{filter}");
        assert!(!by_index.is_empty());
    }
}

#[test]
fn kill9_during_indexed_document_writes_loses_nothing_and_indexes_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 2);
    let client = server.client();
    client
        .create_index("c", &json!({"k": 1}), None, false)
        .unwrap();
    client
        .create_index("c", &json!({"tags": 1}), None, false)
        .unwrap();
    client
        .create_index("c", &json!({"u": 1}), None, true)
        .unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, acked, stop) = (server.addr.clone(), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let client = kvs_wire::Client::connect(&addr).unwrap();
                let mut i: i64 = w;
                while !stop.load(Ordering::SeqCst) {
                    let doc = json!({"_id": i, "k": i % 97, "tags": [i % 5, i % 3], "u": i, "pad": "x".repeat((i % 3000) as usize)});
                    match client.insert("c", &[doc]) {
                        Ok(_) => acked.lock().unwrap().push(i),
                        Err(_) => return,
                    }
                    if i % 10 == 0 {
                        // Moves a document's keys in every index.
                        if client
                            .update("c", &json!({"_id": i}), &json!({"$set": {"k": 1000 + i}, "$push": {"tags": 9}}), false, false)
                            .is_err()
                        {
                            return;
                        }
                    }
                    i += 4;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "{} documents acknowledged", acked.len());
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    let found: std::collections::BTreeSet<i64> = client
        .find("c", &json!({"projection": {"_id": 1}}))
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_i64().unwrap())
        .collect();
    for i in &acked {
        assert!(found.contains(i), "acknowledged document {i} is missing");
    }
    // Through each index, the same documents as through a scan.
    for indexed in [
        json!({"k": {"$gte": 0}}),
        json!({"tags": 9}),
        json!({"u": {"$lt": 1000000}}),
    ] {
        // An $or of one branch means the same, and the planner scans for it.
        let scanned = json!({"$or": [indexed]});
        let plan = client.explain("c", &json!({"filter": indexed})).unwrap();
        assert_eq!(plan["shards"][0]["stage"], "IXSCAN", "{plan}");
        let plan = client.explain("c", &json!({"filter": scanned})).unwrap();
        assert_eq!(plan["shards"][0]["stage"], "COLLSCAN", "{plan}");
        let by_index = client.find("c", &json!({"filter": indexed})).unwrap();
        let by_scan = client.find("c", &json!({"filter": scanned})).unwrap();
        assert_eq!(by_index.len(), by_scan.len(), "{indexed}");
        assert_eq!(by_index, by_scan, "{indexed}");
    }
    drop(client);
    let mut server = server;
    let (status, _) = server.terminate();
    assert!(status.success());
    let (clean, report) = verify(dir.path());
    assert!(clean, "{report}");
    assert!(report.contains("verify: clean"), "{report}");
    // The same check through the CLI.
    let out = Command::new(kvs_binary())
        .args(["verify", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("verify: clean"));
}

#[test]
fn large_documents_round_trip_and_oversized_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    client
        .create_index("big", &json!({"k": 1}), None, false)
        .unwrap();
    let big = json!({"_id": "big", "k": 1, "blob": "x".repeat(3 << 20), "list": (0..10_000).collect::<Vec<_>>()});
    client.insert("big", std::slice::from_ref(&big)).unwrap();
    assert_eq!(
        client.find("big", &json!({"filter": {"k": 1}})).unwrap(),
        vec![big.clone()]
    );
    // The largest document there may be: 16 MiB in its stored encoding.
    let largest = json!({"_id": "largest", "k": 2, "blob": "w".repeat((16 << 20) - 64)});
    client
        .insert("big", std::slice::from_ref(&largest))
        .unwrap();
    assert_eq!(
        client.find("big", &json!({"filter": {"k": 2}})).unwrap(),
        vec![largest]
    );
    client
        .remove("big", &json!({"_id": "largest"}), false)
        .unwrap();
    let error = client
        .insert(
            "big",
            &[json!({"_id": "huge", "blob": "y".repeat(17 << 20)})],
        )
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::TooLarge), "{error}");
    // Updates that would grow a document past the limit are refused too.
    let error = client
        .update(
            "big",
            &json!({"_id": "big"}),
            &json!({"$set": {"more": "z".repeat(14 << 20)}}),
            false,
            false,
        )
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::TooLarge), "{error}");
    assert_eq!(client.count("big", &json!({})).unwrap(), 1);
    client.remove("big", &json!({"_id": "big"}), false).unwrap();
    assert_eq!(client.count("big", &json!({"k": 1})).unwrap(), 0);
}

#[test]
fn writes_across_shards_land_where_they_belong_and_report_what_they_did() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    // An upsert whose filter names a document `_id` (or part of one) puts the document on
    // the shard that `_id` belongs to: a later insert of that `_id` is a duplicate.
    for i in 0..12 {
        let r = client
            .update(
                "o",
                &json!({"_id": {"a": i}}),
                &json!({"$set": {"x": 1}}),
                true,
                false,
            )
            .unwrap();
        assert_eq!(r["upserted"], json!({"a": i}));
        let r = client
            .update(
                "o",
                &json!({"_id.b": i}),
                &json!({"$set": {"y": 1}}),
                true,
                false,
            )
            .unwrap();
        assert_eq!(r["upserted"], json!({"b": i}));
        for id in [json!({"a": i}), json!({"b": i})] {
            let error = client.insert("o", &[json!({"_id": id})]).unwrap_err();
            assert_eq!(error.code(), Some(ErrorCode::DuplicateKey), "{id}: {error}");
            assert_eq!(
                client
                    .find("o", &json!({"filter": {"_id": id}}))
                    .unwrap()
                    .len(),
                1
            );
        }
    }
    assert_eq!(client.count("o", &json!({})).unwrap(), 24);
    // An update of many that fails on one shard says what the other shards did.
    let docs: Vec<J> = (0..40).map(|i| json!({"_id": i, "n": i})).collect();
    client.insert("m", &docs).unwrap();
    client
        .update(
            "m",
            &json!({"_id": 7}),
            &json!({"$set": {"n": "text"}}),
            false,
            false,
        )
        .unwrap();
    let error = client
        .update("m", &json!({}), &json!({"$inc": {"n": 1}}), false, true)
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::BadRequest));
    assert!(
        error.to_string().contains("modified on other shards"),
        "{error}"
    );
    // With a unique index: an update of one document checks and writes the same one, so
    // a document it does not write cannot fail it. Put a document the update would fail
    // on first in shard 1 (`explain` names a filter's shard); the update must write shard
    // 0's first document instead.
    let docs: Vec<J> = (0..40).map(|i| json!({"_id": i, "n": i, "u": i})).collect();
    client.insert("m2", &docs).unwrap();
    client
        .create_index("m2", &json!({"u": 1}), None, true)
        .unwrap();
    let on_shard_1 = (1..100)
        .map(|i| -i)
        .find(|id| {
            let plan = client
                .explain("m2", &json!({"filter": {"_id": id}}))
                .unwrap();
            plan["shardsAsked"] == json!([1])
        })
        .unwrap();
    client
        .insert("m2", &[json!({"_id": on_shard_1, "n": "text", "u": -1})])
        .unwrap();
    let r = client
        .update("m2", &json!({}), &json!({"$inc": {"n": 1}}), false, false)
        .unwrap();
    assert_eq!(r["modified"], 1, "{r}");
    // `_id`s that look like operators are values when an update pins its document.
    client
        .insert("m2", &[json!({"_id": {"$oid": "x"}, "n": 1, "u": 500})])
        .unwrap();
    let r = client
        .update(
            "m2",
            &json!({"_id": {"$eq": {"$oid": "x"}}}),
            &json!({"$set": {"u": 501}}),
            false,
            false,
        )
        .unwrap();
    assert_eq!(r["modified"], 1, "{r}");
    // $first, $last and $push see the documents in `_id` order, as one shard would give
    // them, however many shards hold them.
    let got = client
        .aggregate(
            "m",
            &json!([{"$group": {"_id": null, "f": {"$first": "$_id"}, "l": {"$last": "$_id"}, "ids": {"$push": "$_id"}}}]),
        )
        .unwrap();
    assert_eq!(got[0]["f"], 0);
    assert_eq!(got[0]["l"], 39);
    assert_eq!(got[0]["ids"], json!((0..40).collect::<Vec<_>>()));
}

#[test]
fn batch_mode_reads_whole_finds_before_later_writes_and_takes_quoted_words() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let docs: Vec<J> = (0..2500).map(|i| json!({"_id": i})).collect();
    server.client().insert("c", &docs).unwrap();
    // The find's result takes three pages; the remove after it must not cut it short.
    let input = [
        "find c {}",
        "remove c {}",
        r#"insert "my coll" {"_id": 1, "age": 5}"#,
        r#"index create "my coll" -age"#,
        r#"update u {"a": 1} {"$set": {"b": 2}} --upsert --many"#,
        "collections",
        r#"drop "my coll""#,
    ]
    .join("\n");
    let (_, text) = kvs_batch(&server, input);
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), 7, "{text}");
    let found: J = serde_json::from_str(got[0]).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 2500);
    assert_eq!(got[1], r#"{"deleted":2500}"#);
    assert_eq!(got[2], "1");
    assert_eq!(got[3], "age_-1");
    assert!(got[4].contains(r#""upserted""#), "{}", got[4]);
    assert_eq!(got[5], r#"["c","my coll","u"]"#);
    assert_eq!(got[6], "OK");
}

#[test]
fn an_index_build_cut_by_kill9_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), 2);
    let client = server.client();
    for chunk in (0..200_000).collect::<Vec<i64>>().chunks(2000) {
        let docs: Vec<J> = chunk
            .iter()
            .map(|&i| json!({"_id": i, "n": i % 5000, "m": i % 5000}))
            .collect();
        client.insert("c", &docs).unwrap();
    }
    // Start the build, and kill the node as soon as it is seen building.
    let addr = server.addr.clone();
    let creator = std::thread::spawn(move || {
        let client = kvs_wire::Client::connect(&addr).unwrap();
        client.create_index("c", &json!({"n": 1}), None, false)
    });
    let building = |client: &kvs_wire::Client| {
        client
            .list_indexes("c")
            .is_ok_and(|list| list.get(1).is_some_and(|i| i["state"] == "building"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !building(&client) {
        assert!(
            std::time::Instant::now() < deadline,
            "the index was never seen building"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    server.kill9();
    assert!(creator.join().unwrap().is_err(), "the build was cut");
    let server = Server::start(dir.path(), 2);
    let client = server.client();
    // The same request again waits for the build, which went on from where it was.
    assert_eq!(
        client
            .create_index("c", &json!({"n": 1}), None, false)
            .unwrap(),
        "n_1"
    );
    assert_eq!(client.list_indexes("c").unwrap()[1]["state"], "ready");
    for filter in [json!({"n": 4321}), json!({"n": {"$lt": 40}})] {
        let plan = client.explain("c", &json!({"filter": filter})).unwrap();
        assert_eq!(plan["shards"][0]["stage"], "IXSCAN", "{plan}");
        let m_filter: J =
            serde_json::from_str(&filter.to_string().replace("\"n\"", "\"m\"")).unwrap();
        assert_eq!(
            client.find("c", &json!({"filter": filter})).unwrap(),
            client.find("c", &json!({"filter": m_filter})).unwrap()
        );
    }
    drop(client);
    let mut server = server;
    assert!(server.terminate().0.success());
    let (clean, report) = verify(dir.path());
    assert!(clean, "{report}");
}
