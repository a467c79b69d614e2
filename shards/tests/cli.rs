//! The `kvs` CLI against a real kvsd: one-shot commands, exit codes, batch mode.

mod common;

use common::{kvs, kvs_batch, Server};

#[test]
fn one_shot_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    assert_eq!(
        kvs(&server, &["put", "user:1", "alice"]),
        (0, "OK\n".into(), String::new())
    );
    assert_eq!(
        kvs(&server, &["get", "user:1"]),
        (0, "alice\n".into(), String::new())
    );
    assert_eq!(
        kvs(&server, &["get", "user:2"]),
        (1, String::new(), "(nil)\n".into())
    );
    assert_eq!(kvs(&server, &["ping"]).1, "PONG\n");
    for i in 0..5 {
        kvs(&server, &["put", &format!("s{i}"), &format!("v{i}")]);
    }
    let (code, out, _) = kvs(&server, &["scan", "--start", "s1", "--limit", "3"]);
    assert_eq!(code, 0);
    assert_eq!(out, "s1\tv1\ns2\tv2\ns3\tv3\n");
    let (_, out, _) = kvs(&server, &["scan", "--start", "s", "--end", "s2"]);
    assert_eq!(out, "s0\tv0\ns1\tv1\n");
    let (code, out, _) = kvs(&server, &["info"]);
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["shards"], 2);
    assert_eq!(info["keys"], 6);
    assert!(info["shard"][0]["last_index"].as_u64().unwrap() > 0);
    assert!(info["shard"][0]["log_size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(kvs(&server, &["del", "user:1"]).0, 0);
    assert_eq!(kvs(&server, &["del", "user:1"]).0, 1);
}

#[test]
fn batch_mode_answers_one_line_per_command_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    let mut input = String::new();
    for i in 0..2000 {
        input.push_str(&format!("put key-{i} value {i} with spaces\n"));
    }
    input.push_str("get key-7\nget nothing\nfrobnicate\ndel key-8\nget key-8\nping\n");
    for i in 0..2000 {
        input.push_str(&format!("get key-{i}\n"));
    }
    let (success, out) = kvs_batch(&server, input);
    assert!(!success, "a failed line (frobnicate) fails the batch");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4006);
    assert!(lines[..2000].iter().all(|l| *l == "OK"));
    assert_eq!(lines[2000], "value 7 with spaces");
    assert_eq!(lines[2001], "(nil)");
    assert!(
        lines[2002].starts_with("ERR unknown command"),
        "{}",
        lines[2002]
    );
    assert_eq!(lines[2003], "OK");
    assert_eq!(lines[2004], "(nil)");
    assert_eq!(lines[2005], "PONG");
    for i in 0..2000 {
        let expected = if i == 8 {
            "(nil)".to_string()
        } else {
            format!("value {i} with spaces")
        };
        assert_eq!(lines[2006 + i], expected);
    }
}

#[test]
fn batch_mode_reads_see_exactly_the_writes_sent_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    // Batch mode pipelines every line: a read must see the lines before it, not after.
    let mut input = String::new();
    for i in 0..300 {
        input.push_str(&format!(
            "put k{} {i}\nget k{}\ndel k{}\nget k{}\n",
            i % 5,
            i % 5,
            i % 5,
            i % 5
        ));
    }
    let (_, out) = kvs_batch(&server, input);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1200);
    for (i, chunk) in lines.chunks(4).enumerate() {
        assert_eq!(
            chunk,
            ["OK", &i.to_string(), "OK", "(nil)"],
            "command group {i}"
        );
    }
}

#[test]
fn exit_codes_and_timeouts_tell_the_truth() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1);
    // A timeout of 0 is refused before anything is sent.
    let (code, out, err) = kvs(&server, &["--timeout", "0", "put", "a", "3"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("at least 1 second"), "{err}");
    assert_eq!(kvs(&server, &["get", "a"]).0, 1, "nothing was written");
    // Errors go to stderr with exit code 2.
    let long_key = "k".repeat(1025);
    let (code, out, err) = kvs(&server, &["put", &long_key, "v"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("1024-byte limit"), "{err}");
    // A batch whose lines all succeed (a missing key is an answer) exits 0.
    let (success, out) = kvs_batch(&server, "put a 1\nget nothing\nget a\n".into());
    assert!(success, "{out}");
    assert_eq!(out, "OK\n(nil)\n1\n");
    // One that does not exits non-zero, still with one line per command.
    let (success, out) = kvs_batch(&server, format!("put {long_key} v\nget a\n"));
    assert!(!success);
    assert_eq!(out.lines().count(), 2);
    // A value that starts with "ERR" is not a failure.
    let (success, _) = kvs_batch(&server, "put e ERR not an error\nget e\n".into());
    assert!(success);
}

#[test]
fn a_server_that_never_answers_fails_ping_within_the_timeout() {
    // A listener that accepts and never replies: a hung server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    for command in [&["ping"][..], &["info"], &["put", "a", "1"]] {
        let out = std::process::Command::new(common::kvs_binary())
            .args(["--addr", &addr, "--timeout", "1"])
            .args(command)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {err}");
        assert!(out.stdout.is_empty(), "{command:?}");
        assert!(err.contains("no reply within 1s"), "{command:?}: {err}");
        assert!(err.contains("outcome is unknown"), "{command:?}: {err}");
    }
}

#[test]
fn get_version_feeds_cas() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 1);
    assert_eq!(kvs(&server, &["put", "k", "-starts-with-a-dash"]).0, 0);
    let (code, out, _) = kvs(&server, &["get", "--version", "k"]);
    assert_eq!(code, 0);
    let (version, value) = out.trim_end().split_once('\t').unwrap();
    assert_eq!(value, "-starts-with-a-dash");
    assert_eq!(kvs(&server, &["cas", "k", version, "next"]).0, 0);
    assert_eq!(
        kvs(&server, &["cas", "k", version, "again"]).0,
        2,
        "stale version"
    );
    assert_eq!(kvs(&server, &["get", "k"]).1, "next\n");
    // The same in batch mode: one line, VERSION<TAB>VALUE.
    let (success, out) = kvs_batch(&server, "get --version k\n".into());
    assert!(success);
    assert!(out.trim_end().ends_with("\tnext"), "{out}");
}

/// Every pair of a node, as the client reads it.
fn all_pairs(client: &kvs_wire::Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut start = Vec::new();
    loop {
        let (pairs, next) = client.scan(&start, None, 500).unwrap();
        out.extend(pairs);
        match next {
            Some(next) => start = next,
            None => return out,
        }
    }
}

#[test]
fn dump_and_load_carry_arbitrary_bytes_and_documents_to_another_shard_count() {
    use serde_json::json;
    let from_dir = tempfile::tempdir().unwrap();
    let from = Server::start(from_dir.path(), 2);
    let client = from.client();
    // Keys and values a line-based dump would lose: newlines, tabs, spaces, every byte.
    let mut expected = Vec::new();
    for i in 0..300u32 {
        let mut key = format!("k {i}\t\n").into_bytes();
        key.push((i % 256) as u8);
        let value: Vec<u8> = (0..(i * 7 % 3000)).map(|j| (j * 31 + i) as u8).collect();
        client.put(&key, &value).unwrap();
        expected.push((key, value));
    }
    client.put(b"", b"empty key").unwrap();
    client.put(b"big", &vec![0xAB; 3 << 20]).unwrap();
    let docs: Vec<_> = (0..120)
        .map(|i| json!({"_id": i, "name": format!("n{i}"), "tags": ["a", i % 3], "nested": {"x": i as f64 / 2.0}}))
        .collect();
    client.insert("people", &docs).unwrap();
    client
        .create_index("people", &json!({"name": 1}), None, true)
        .unwrap();
    client
        .insert("other", &[json!({"_id": "only", "v": null})])
        .unwrap();
    let dump = from_dir.path().join("all.kvsdump");
    let dump = dump.to_str().unwrap();
    let (code, _, err) = kvs(&from, &["dump", "--to", dump]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("dumped 302 pairs, 121 documents in 2 collections, 1 indexes"),
        "{err}"
    );

    let to_dir = tempfile::tempdir().unwrap();
    let to = Server::start(to_dir.path(), 3);
    let (code, _, err) = kvs(&to, &["load", dump]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("loaded 302 pairs"), "{err}");
    let target = to.client();
    assert_eq!(all_pairs(&target), all_pairs(&client));
    for (key, value) in &expected {
        assert_eq!(target.get(key).unwrap().as_ref(), Some(value));
    }
    assert_eq!(target.collections().unwrap(), client.collections().unwrap());
    let sorted = json!({"sort": {"_id": 1}});
    assert_eq!(
        target.find("people", &sorted).unwrap(),
        client.find("people", &sorted).unwrap()
    );
    assert_eq!(
        target.find("other", &json!({})).unwrap(),
        [json!({"_id": "only", "v": null})]
    );
    assert_eq!(
        target.list_indexes("people").unwrap(),
        client.list_indexes("people").unwrap()
    );
    // The unique index came along and holds.
    assert!(target.insert("people", &[json!({"name": "n1"})]).is_err());

    // A damaged or cut dump stops the load, saying where.
    let mut bytes = std::fs::read(dump).unwrap();
    let damaged = to_dir.path().join("damaged.kvsdump");
    bytes[100] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    let (code, _, err) = kvs(&to, &["load", damaged.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("checksum"), "{err}");
    bytes[100] ^= 1;
    bytes.truncate(1000);
    std::fs::write(&damaged, &bytes).unwrap();
    let (code, _, err) = kvs(&to, &["load", damaged.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("cut short"), "{err}");
}

#[test]
fn kvsd_help_gives_defaults_and_scan_limits_agree_across_modes() {
    let out = std::process::Command::new(common::kvsd_binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for wanted in [
        "Default: kvs-data",
        "Default: 127.0.0.1:7070",
        "RESP2, and RESP3",
        "Default: 60",
        "Default: 64MiB",
        "Default: 256MiB",
        "Default: info",
    ] {
        assert!(
            help.contains(wanted),
            "{wanted:?} missing from kvsd --help:\n{help}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), 2);
    for i in 0..10 {
        kvs(&server, &["put", &format!("s{i}"), "v"]);
    }
    let (_, one_shot, _) = kvs(&server, &["scan", "--limit", "4"]);
    assert_eq!(one_shot.lines().count(), 4);
    let (_, batch) = kvs_batch(&server, "scan --limit 4\n".into());
    let pairs: serde_json::Value = serde_json::from_str(batch.trim()).unwrap();
    assert_eq!(pairs.as_array().unwrap().len(), 4);
}
