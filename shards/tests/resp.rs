//! The Redis-protocol listener against a real kvsd: commands, in-order replies under
//! pipelining across shards, errors, protocol garbage, and durability of acknowledged SETs.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, kvsd_binary, Server};
use kvs_wire::resp::{self, Reply};

/// kvsd with both listeners, on ports the kernel picked.
struct RespServer {
    server: Server,
    resp_addr: String,
}

impl RespServer {
    fn start(dir: &Path, shards: u32) -> RespServer {
        let server = Server::start_with(dir, shards, &["--resp-listen", "127.0.0.1:0"]);
        let resp_addr = server.ready_address("resp=");
        let mut client = RespClient::connect(&resp_addr).expect("the RESP listener accepts");
        assert_eq!(client.call(&[b"PING"]), Reply::Simple("PONG".into()));
        RespServer { server, resp_addr }
    }

    fn kill9(mut self) {
        self.server.kill9();
    }
}

struct RespClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RespClient {
    fn connect(addr: &str) -> std::io::Result<RespClient> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(RespClient {
            stream,
            buf: Vec::new(),
        })
    }

    fn send(&mut self, args: &[&[u8]]) {
        let mut out = Vec::new();
        resp::command(&mut out, args);
        self.stream.write_all(&out).unwrap();
    }

    fn read(&mut self) -> Reply {
        loop {
            if let Some((reply, len)) = resp::parse_reply(&self.buf).unwrap() {
                self.buf.drain(..len);
                return reply;
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed while waiting for a reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args);
        self.read()
    }
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Some(s.as_bytes().to_vec()))
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

#[test]
fn pipelined_commands_take_effect_in_the_order_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 2);
    let mut c = RespClient::connect(&server.resp_addr).unwrap();
    // Redis answers this pipeline with OK, "1", 2, "2", 1, nil: each read sees exactly the
    // writes sent before it on its connection. Many rounds, so some land mid-commit.
    for round in 0..200 {
        let key = format!("p{}", round % 7);
        let key = key.as_bytes();
        let commands: [&[&[u8]]; 6] = [
            &[b"SET", key, b"1"],
            &[b"GET", key],
            &[b"INCR", key],
            &[b"GET", key],
            &[b"DEL", key],
            &[b"GET", key],
        ];
        for command in commands {
            c.send(command);
        }
        let replies: Vec<Reply> = (0..6).map(|_| c.read()).collect();
        assert_eq!(
            replies,
            [
                ok(),
                bulk("1"),
                Reply::Integer(2),
                bulk("2"),
                Reply::Integer(1),
                Reply::Bulk(None)
            ],
            "round {round}"
        );
    }
}

#[test]
fn the_key_value_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 2);
    let mut c = RespClient::connect(&server.resp_addr).unwrap();
    assert_eq!(c.call(&[b"PING", b"hi"]), bulk("hi"));
    assert_eq!(c.call(&[b"ECHO", b"x y"]), bulk("x y"));
    assert_eq!(c.call(&[b"SET", b"a", b"1"]), ok());
    assert_eq!(c.call(&[b"GET", b"a"]), bulk("1"));
    assert_eq!(c.call(&[b"GET", b"missing"]), Reply::Bulk(None));
    assert_eq!(c.call(&[b"INCR", b"a"]), Reply::Integer(2));
    assert_eq!(c.call(&[b"INCRBY", b"a", b"40"]), Reply::Integer(42));
    assert_eq!(c.call(&[b"DECRBY", b"a", b"2"]), Reply::Integer(40));
    assert_eq!(c.call(&[b"DECR", b"new"]), Reply::Integer(-1));
    assert_eq!(c.call(&[b"APPEND", b"s", b"hello"]), Reply::Integer(5));
    assert_eq!(c.call(&[b"APPEND", b"s", b" world"]), Reply::Integer(11));
    assert_eq!(c.call(&[b"STRLEN", b"s"]), Reply::Integer(11));
    assert_eq!(c.call(&[b"STRLEN", b"nothing"]), Reply::Integer(0));
    assert!(matches!(c.call(&[b"INCR", b"s"]), Reply::Error(e) if e.contains("not an integer")));
    assert_eq!(c.call(&[b"GETSET", b"s", b"new"]), bulk("hello world"));
    assert_eq!(c.call(&[b"SET", b"s", b"x", b"NX"]), Reply::Bulk(None));
    assert_eq!(c.call(&[b"SET", b"fresh", b"x", b"NX"]), ok());
    assert_eq!(c.call(&[b"SET", b"absent", b"x", b"XX"]), Reply::Bulk(None));
    assert_eq!(c.call(&[b"SET", b"s", b"y", b"XX"]), ok());
    assert!(
        matches!(c.call(&[b"SET", b"s", b"y", b"EX", b"10"]), Reply::Error(e) if e.contains("no key expiry"))
    );
    assert!(
        matches!(c.call(&[b"SET", b"s", b"y", b"NX", b"XX"]), Reply::Error(e) if e.contains("syntax"))
    );
    assert_eq!(
        c.call(&[b"MSET", b"k1", b"v1", b"k2", b"v2", b"k3", b"v3"]),
        ok()
    );
    assert_eq!(
        c.call(&[b"MGET", b"k1", b"nope", b"k3", b"k2"]),
        Reply::Array(Some(vec![
            bulk("v1"),
            Reply::Bulk(None),
            bulk("v3"),
            bulk("v2")
        ]))
    );
    assert_eq!(
        c.call(&[b"EXISTS", b"k1", b"k1", b"nope"]),
        Reply::Integer(2)
    );
    assert_eq!(c.call(&[b"DEL", b"k1", b"k2", b"nope"]), Reply::Integer(2));
    // a, new, s, fresh, k3 and nothing else.
    assert_eq!(c.call(&[b"DBSIZE"]), Reply::Integer(5));
    // SCAN walks every key exactly once, over both shards, with small numeric cursors.
    let mut cursor = b"0".to_vec();
    let mut seen = Vec::new();
    loop {
        let Reply::Array(Some(page)) = c.call(&[b"SCAN", &cursor, b"COUNT", b"2"]) else {
            panic!()
        };
        let Reply::Bulk(Some(next)) = &page[0] else {
            panic!()
        };
        let Reply::Array(Some(keys)) = &page[1] else {
            panic!()
        };
        seen.extend(keys.iter().cloned());
        cursor = next.clone();
        if cursor == b"0" {
            break;
        }
    }
    seen.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    seen.dedup();
    assert_eq!(seen.len(), 5, "{seen:?}");
    let Reply::Array(Some(page)) = c.call(&[b"SCAN", b"0", b"MATCH", b"k*", b"COUNT", b"100"])
    else {
        panic!()
    };
    assert_eq!(page[1], Reply::Array(Some(vec![bulk("k3")])));
    // An unknown cursor starts over (Redis never refuses a cursor).
    assert!(matches!(c.call(&[b"SCAN", b"999"]), Reply::Array(Some(_))));
    let Reply::Bulk(Some(info)) = c.call(&[b"INFO"]) else {
        panic!()
    };
    assert!(String::from_utf8_lossy(&info).contains("db0:keys=5"));
    assert!(
        matches!(c.call(&[b"GET"]), Reply::Error(e) if e.contains("wrong number of arguments"))
    );
    assert!(
        matches!(c.call(&[b"HGETALL", b"h"]), Reply::Error(e) if e.contains("unknown command"))
    );
    assert!(matches!(c.call(&[b"HELLO", b"4"]), Reply::Error(e) if e.starts_with("NOPROTO")));
    assert_eq!(c.call(&[b"QUIT"]), ok());
}

/// GETs answered by the connection from its core's shard (ADR 0029) never see an MSET half
/// applied: with a cache far smaller than the keys, applying each MSET waits for pages in the
/// middle of the command, while a second connection reads the same keys one by one. Every
/// MSET writes its round number into all its keys, so reading them in the order the MSET
/// wrote them may meet newer rounds further on, never an older one.
#[test]
fn reads_answered_without_the_queue_never_see_an_mset_half_applied() {
    mset_is_never_seen_half_applied(6000, 20);
}

/// The same with three times the keys the cache holds: most GETs miss the pool and read
/// their page in a task of their own, which must not answer from the middle of an MSET
/// (a command that yielded for a page while the read loaded its own).
#[test]
fn reads_from_the_disk_never_see_an_mset_half_applied() {
    mset_is_never_seen_half_applied(16_000, 8);
}

/// A one-shard server with a 2 MiB cache, and its RESP address.
fn small_cache_server(dir: &std::path::Path) -> (RespServer, String) {
    let server = RespServer {
        resp_addr: String::new(),
        server: Server::start_with(
            dir,
            1,
            &["--resp-listen", "127.0.0.1:0", "--cache-size", "2MiB"],
        ),
    };
    let resp_addr = server.server.ready_address("resp=");
    (server, resp_addr)
}

/// The value every key holds after MSET round `round`: the round's number, then padding.
fn round_value(round: usize) -> Vec<u8> {
    let mut v = format!("{round:08}").into_bytes();
    v.resize(400, b'.');
    v
}

/// One MSET writing round `round`'s value into `count` keys named by `key`.
fn mset_round(client: &mut RespClient, key: impl Fn(usize) -> Vec<u8>, count: usize, round: usize) {
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..count).map(|i| (key(i), round_value(round))).collect();
    let mut args: Vec<&[u8]> = vec![b"MSET"];
    for (k, v) in &pairs {
        args.push(k);
        args.push(v);
    }
    assert_eq!(client.call(&args), ok());
}

/// Writes MSET round 0 into `count` keys named by `key`, then rounds 1..=`rounds` while a
/// reader thread, with a connection of its own, calls `read` (with its call's number) until
/// the last round is acknowledged. Returns the writer's connection and the reader's calls.
fn reads_during_msets(
    resp_addr: &str,
    key: fn(usize) -> Vec<u8>,
    count: usize,
    rounds: usize,
    mut read: impl FnMut(&mut RespClient, usize) + Send + 'static,
) -> (RespClient, usize) {
    let mut writer = RespClient::connect(resp_addr).unwrap();
    mset_round(&mut writer, key, count, 0);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (addr, done) = (resp_addr.to_string(), std::sync::Arc::clone(&done));
        std::thread::spawn(move || {
            let mut client = RespClient::connect(&addr).unwrap();
            let mut calls = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                read(&mut client, calls);
                calls += 1;
            }
            calls
        })
    };
    for round in 1..=rounds {
        mset_round(&mut writer, key, count, round);
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let calls = reader.join().expect("the reader saw no MSET half applied");
    assert!(calls > 0, "the reader read while the MSETs were applied");
    (writer, calls)
}

/// The round number a value of [`round_value`] holds.
fn round_of(value: &[u8]) -> usize {
    std::str::from_utf8(&value[..8]).unwrap().parse().unwrap()
}

fn mset_is_never_seen_half_applied(count: usize, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (_server, resp_addr) = small_cache_server(dir.path());
    fn key(i: usize) -> Vec<u8> {
        format!("mset:{i:05}").into_bytes()
    }
    let (mut writer, _) =
        reads_during_msets(&resp_addr, key, count, rounds, move |client, scan| {
            let mut round_at = |i: usize| {
                let Reply::Bulk(Some(v)) = client.call(&[b"GET", &key(i)]) else {
                    panic!("key {i} missing");
                };
                round_of(&v)
            };
            // The MSET's first key, then keys it writes later: none may be older.
            let first = round_at(0);
            for i in (0..count).rev().step_by(count / 16) {
                let round = round_at(i);
                assert!(
                    round >= first,
                    "scan {scan}: key {i} holds round {round} after the MSET's first key held \
                 round {first}"
                );
            }
        });
    assert_eq!(
        writer.call(&[b"GET", &key(count - 1)]),
        Reply::Bulk(Some(round_value(rounds)))
    );
}

/// An MGET is one read: with the keys three times what the cache holds, its keys' pages come
/// from the disk one after another while MSETs that each write one round number into every
/// key are applied; all the values one MGET returns must come from the same MSET.
#[test]
fn an_mget_that_reads_the_disk_sees_an_mset_whole_or_not_at_all() {
    const KEYS: usize = 16_000;
    let dir = tempfile::tempdir().unwrap();
    let (_server, resp_addr) = small_cache_server(dir.path());
    fn key(i: usize) -> Vec<u8> {
        format!("mget:{i:05}").into_bytes()
    }
    reads_during_msets(&resp_addr, key, KEYS, 8, |client, call| {
        // Other keys each time, so that their pages are not all in the pool.
        let keys: Vec<Vec<u8>> = (call % 7..KEYS).step_by(7).map(key).collect();
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().map(|k| k.as_slice()));
        let Reply::Array(Some(values)) = client.call(&args) else {
            panic!("MGET answered with something else");
        };
        let rounds: std::collections::BTreeSet<usize> = values
            .iter()
            .map(|v| match v {
                Reply::Bulk(Some(v)) => round_of(v),
                other => panic!("a key missing: {other:?}"),
            })
            .collect();
        assert_eq!(
            rounds.len(),
            1,
            "MGET {call} saw values of several MSETs: {rounds:?}"
        );
    });
}

#[test]
fn pipelined_replies_come_back_in_command_order_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 2);
    let mut c = RespClient::connect(&server.resp_addr).unwrap();
    let mut out = Vec::new();
    for i in 0..2000 {
        let key = format!("key-{i}");
        resp::command(
            &mut out,
            &[b"SET", key.as_bytes(), i.to_string().as_bytes()],
        );
        resp::command(&mut out, &[b"GET", key.as_bytes()]);
        resp::command(&mut out, &[b"PING"]);
    }
    c.stream.write_all(&out).unwrap();
    for i in 0..2000 {
        assert_eq!(c.read(), ok());
        assert_eq!(c.read(), bulk(&i.to_string()), "reply {i} out of order");
        assert_eq!(c.read(), Reply::Simple("PONG".into()));
    }
}

#[test]
fn protocol_garbage_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 1);
    let mut good = RespClient::connect(&server.resp_addr).unwrap();
    assert_eq!(good.call(&[b"SET", b"k", b"v"]), ok());
    let mut bad = RespClient::connect(&server.resp_addr).unwrap();
    bad.stream.write_all(b"*2\r\n$3\r\nGET\r\n$-7\r\n").unwrap();
    assert!(matches!(bad.read(), Reply::Error(e) if e.contains("Protocol error")));
    let mut rest = Vec::new();
    assert_eq!(
        bad.stream.read_to_end(&mut rest).unwrap(),
        0,
        "the bad connection is closed"
    );
    let mut huge = RespClient::connect(&server.resp_addr).unwrap();
    huge.stream.write_all(b"*1\r\n$999999999\r\n").unwrap();
    assert!(matches!(huge.read(), Reply::Error(e) if e.contains("bulk length")));
    assert_eq!(good.call(&[b"GET", b"k"]), bulk("v"));
}

#[test]
fn acknowledged_sets_survive_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 2);
    let mut c = RespClient::connect(&server.resp_addr).unwrap();
    let mut out = Vec::new();
    for i in 0..5000 {
        resp::command(
            &mut out,
            &[
                b"SET",
                format!("d{i}").as_bytes(),
                format!("v{i}").as_bytes(),
            ],
        );
    }
    c.stream.write_all(&out).unwrap();
    for _ in 0..5000 {
        assert_eq!(c.read(), ok());
    }
    server.kill9();
    let server = RespServer::start(dir.path(), 2);
    let mut c = RespClient::connect(&server.resp_addr).unwrap();
    for i in (0..5000).step_by(7) {
        assert_eq!(
            c.call(&[b"GET", format!("d{i}").as_bytes()]),
            bulk(&format!("v{i}"))
        );
    }
}

#[test]
fn the_two_listeners_cannot_share_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let out = Command::new(kvsd_binary())
        .args(["--data-dir", dir.path().to_str().unwrap(), "--shards", "1"])
        .args(["--listen", &addr, "--resp-listen", &addr])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "kvsd started with both protocols on {addr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// MULTI queues, EXEC runs the queue at once across shards (a GET after a SET sees it, a
/// command that fails when run answers its error in the array), a command refused while
/// queueing makes EXEC run nothing, and a changed WATCHed key makes EXEC answer null.
#[test]
fn multi_exec_runs_atomically_and_watch_aborts_on_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 2);
    let mut c = RespClient::connect(&server.resp_addr).unwrap();
    // What redis-py's pipeline(transaction=True) sends, all at once.
    let commands: [&[&[u8]]; 8] = [
        &[b"MULTI"],
        &[b"SET", b"t1", b"1"],
        &[b"INCR", b"t2"],
        &[b"GET", b"t1"],
        &[b"APPEND", b"t1", b"x"],
        &[b"INCR", b"t1"],
        &[b"EXEC"],
        &[b"MGET", b"t1", b"t2"],
    ];
    for command in commands {
        c.send(command);
    }
    let replies: Vec<Reply> = (0..8).map(|_| c.read()).collect();
    assert_eq!(replies[0], ok());
    for queued in &replies[1..6] {
        assert_eq!(queued, &Reply::Simple("QUEUED".into()), "{replies:?}");
    }
    let Reply::Array(Some(results)) = &replies[6] else {
        panic!("EXEC: {replies:?}");
    };
    assert_eq!(
        results[..4],
        [ok(), Reply::Integer(1), bulk("1"), Reply::Integer(2)]
    );
    assert!(
        matches!(&results[4], Reply::Error(e) if e.contains("not an integer")),
        "{results:?}"
    );
    assert_eq!(
        replies[7],
        Reply::Array(Some(vec![bulk("1x"), bulk("1")])),
        "the EXEC applied"
    );
    // A command refused while queueing: EXECABORT, nothing run.
    assert_eq!(c.call(&[b"MULTI"]), ok());
    assert_eq!(
        c.call(&[b"SET", b"t1", b"lost"]),
        Reply::Simple("QUEUED".into())
    );
    assert!(matches!(c.call(&[b"FLUSHDB"]), Reply::Error(_)));
    assert!(matches!(c.call(&[b"EXEC"]), Reply::Error(e) if e.starts_with("EXECABORT")));
    assert_eq!(c.call(&[b"GET", b"t1"]), bulk("1x"));
    // DISCARD drops the queue.
    assert_eq!(c.call(&[b"MULTI"]), ok());
    assert!(matches!(c.call(&[b"MULTI"]), Reply::Error(e) if e.contains("nested")));
    assert_eq!(
        c.call(&[b"SET", b"t1", b"x"]),
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(c.call(&[b"DISCARD"]), ok());
    assert_eq!(c.call(&[b"GET", b"t1"]), bulk("1x"));
    // WATCH: a change by another client between WATCH and EXEC aborts the EXEC.
    let mut other = RespClient::connect(&server.resp_addr).unwrap();
    assert_eq!(c.call(&[b"WATCH", b"t1", b"t9"]), ok());
    assert_eq!(other.call(&[b"SET", b"t9", b"new"]), ok());
    assert_eq!(c.call(&[b"MULTI"]), ok());
    assert_eq!(
        c.call(&[b"SET", b"t1", b"watched"]),
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(c.call(&[b"EXEC"]), Reply::Array(None));
    assert_eq!(c.call(&[b"GET", b"t1"]), bulk("1x"));
    // Unchanged: it runs (and EXEC forgets the watches).
    assert_eq!(c.call(&[b"WATCH", b"t1"]), ok());
    assert_eq!(c.call(&[b"MULTI"]), ok());
    assert_eq!(
        c.call(&[b"SET", b"t1", b"watched"]),
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(c.call(&[b"EXEC"]), Reply::Array(Some(vec![ok()])));
    assert_eq!(other.call(&[b"GET", b"t1"]), bulk("watched"));
    // Without MULTI, EXEC and DISCARD are errors, as in Redis.
    assert!(matches!(c.call(&[b"EXEC"]), Reply::Error(e) if e.contains("without MULTI")));
    assert!(matches!(c.call(&[b"DISCARD"]), Reply::Error(e) if e.contains("without MULTI")));
    assert_eq!(c.call(&[b"UNWATCH"]), ok());
}

/// TYPE, as redis-cli --bigkeys uses it: kvs keeps strings only.
#[test]
fn type_names_strings_and_missing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 2);
    let mut c = RespClient::connect(&server.resp_addr).unwrap();
    assert_eq!(c.call(&[b"SET", b"ty", b"v"]), ok());
    assert_eq!(c.call(&[b"TYPE", b"ty"]), Reply::Simple("string".into()));
    assert_eq!(c.call(&[b"TYPE", b"nothing"]), Reply::Simple("none".into()));
    assert!(matches!(c.call(&[b"TYPE"]), Reply::Error(e) if e.contains("wrong number")));
}

fn text_of(reply: Reply) -> String {
    match reply {
        Reply::Bulk(Some(bytes)) => String::from_utf8(bytes).unwrap(),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

/// (cursor, keys) of a SCAN reply.
fn scan_page(reply: Reply) -> (u64, Vec<String>) {
    let Reply::Array(Some(parts)) = reply else {
        panic!("expected a SCAN reply, got {reply:?}")
    };
    let mut parts = parts.into_iter();
    let cursor = text_of(parts.next().unwrap()).parse().unwrap();
    let Some(Reply::Array(Some(keys))) = parts.next() else {
        panic!("no key array")
    };
    (cursor, keys.into_iter().map(text_of).collect())
}

#[test]
fn info_sections_and_the_fields_redis_cli_stat_reads() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 2);
    let mut client = RespClient::connect(&server.resp_addr).unwrap();
    client.call(&[b"SET", b"a", b"1"]);
    let keyspace = text_of(client.call(&[b"INFO", b"keyspace"]));
    assert!(keyspace.starts_with("# Keyspace\r\n"), "{keyspace}");
    assert!(keyspace.contains("db0:keys=1,"), "{keyspace}");
    assert!(
        !keyspace.contains("# Server"),
        "only the section asked for: {keyspace}"
    );
    let all = text_of(client.call(&[b"INFO"]));
    for field in [
        "connected_clients:",
        "blocked_clients:0",
        "used_memory:",
        "total_commands_processed:",
        "total_connections_received:",
        "loading:0",
    ] {
        assert!(all.contains(field), "{field} missing from:\n{all}");
    }
    let commands = |info: &str| -> u64 {
        let at = info.find("total_commands_processed:").unwrap() + 25;
        info[at..].split("\r\n").next().unwrap().parse().unwrap()
    };
    let before = commands(&all);
    client.call(&[b"GET", b"a"]);
    let after = commands(&text_of(client.call(&[b"INFO", b"stats"])));
    assert_eq!(after, before + 2, "the GET and the INFO were counted");
}

#[test]
fn scan_cursors_outlive_their_connection_and_never_fail() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 2);
    let mut client = RespClient::connect(&server.resp_addr).unwrap();
    for i in 0..50 {
        client.call(&[b"SET", format!("k{i:02}").as_bytes(), b"v"]);
    }
    // Each page on a new connection, as a client pool may do.
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let mut fresh = RespClient::connect(&server.resp_addr).unwrap();
        let (next, keys) =
            scan_page(fresh.call(&[b"SCAN", cursor.to_string().as_bytes(), b"COUNT", b"7"]));
        seen.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 50);
    // A cursor the node does not know starts over instead of failing.
    let (_, keys) = scan_page(client.call(&[b"SCAN", b"123456789", b"COUNT", b"5"]));
    assert_eq!(keys, ["k00", "k01", "k02", "k03", "k04"]);
    // Only strings are stored: a scan for hashes finds none, for strings all.
    assert_eq!(
        scan_page(client.call(&[b"SCAN", b"0", b"TYPE", b"hash"])),
        (0, vec![])
    );
    let (_, keys) = scan_page(client.call(&[b"SCAN", b"0", b"TYPE", b"string", b"COUNT", b"100"]));
    assert_eq!(keys.len(), 50);
    assert!(matches!(
        client.call(&[b"SCAN", b"not-a-number"]),
        Reply::Error(e) if e.contains("invalid cursor")
    ));
}

#[test]
fn setnx_unlink_keys_flushdb_and_no_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 2);
    let mut client = RespClient::connect(&server.resp_addr).unwrap();
    assert_eq!(client.call(&[b"SETNX", b"a", b"1"]), Reply::Integer(1));
    assert_eq!(client.call(&[b"SETNX", b"a", b"2"]), Reply::Integer(0));
    assert_eq!(client.call(&[b"GET", b"a"]), bulk("1"));
    for key in ["user:1", "user:2", "user:10", "item:1"] {
        client.call(&[b"SET", key.as_bytes(), b"x"]);
    }
    let Reply::Array(Some(keys)) = client.call(&[b"KEYS", b"user:?"]) else {
        panic!()
    };
    let keys: Vec<String> = keys.into_iter().map(text_of).collect();
    assert_eq!(keys, ["user:1", "user:2"]);
    assert_eq!(
        client.call(&[b"UNLINK", b"user:1", b"user:2", b"nope"]),
        Reply::Integer(2)
    );
    // KEYS sees a write sent just before it on the connection.
    client.send(&[b"SET", b"user:3", b"x"]);
    client.send(&[b"KEYS", b"user:*"]);
    assert_eq!(client.read(), ok());
    let Reply::Array(Some(keys)) = client.read() else {
        panic!()
    };
    assert_eq!(keys.len(), 2, "user:10 and user:3");
    assert!(matches!(
        client.call(&[b"EXPIRE", b"a", b"10"]),
        Reply::Error(e) if e.contains("no key expiry")
    ));
    assert_eq!(client.call(&[b"FLUSHDB"]), ok());
    assert_eq!(client.call(&[b"DBSIZE"]), Reply::Integer(0));
    assert_eq!(client.call(&[b"GET", b"a"]), Reply::Bulk(None));
}

#[test]
fn a_value_over_the_limit_is_refused_by_name_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = RespServer::start(dir.path(), 1);
    let mut client = RespClient::connect(&server.resp_addr).unwrap();
    let value = vec![b'x'; 16 * 1024 * 1024 + 1];
    client.send(&[b"SET", b"big", &value]);
    client.send(&[b"SET", b"small", b"1"]);
    match client.read() {
        Reply::Error(e) => {
            assert!(e.contains("16777217 bytes"), "{e}");
            assert!(e.contains("16777216-byte (16 MiB) limit"), "{e}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(client.read(), ok());
    assert_eq!(client.call(&[b"GET", b"small"]), bulk("1"));
    assert_eq!(client.call(&[b"GET", b"big"]), Reply::Bulk(None));
}
