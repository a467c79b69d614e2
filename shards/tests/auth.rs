//! Users and roles with a real kvsd (ADR 0025): a users file written by `kvs user add`, the
//! native protocol's password proof, roles that refuse what they do not cover, the CLI's
//! `--user`/`--password-file`, SIGHUP re-reading the file, failed logins slowed and cut off,
//! RESP's `AUTH` and `HELLO 3 AUTH`, and kvsd refusing to expose an unauthenticated listener.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{kvs, kvsd_binary, Server};
use kvs_wire::auth::{auth_message, random_bytes, Credentials, NONCE_LEN};
use kvs_wire::{Client, ClientError, ClientOptions, ErrorCode, Request, Response};
use serde_json::json;

/// `kvs user add --file FILE NAME ROLE` with the password on stdin.
fn add_user(file: &Path, name: &str, role: &str, password: &str) {
    let mut child = Command::new(common::kvs_binary())
        .args(["user", "add", "--file", file.to_str().unwrap(), name, role])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn login(server: &Server, user: &str, password: &str) -> Result<Client, ClientError> {
    let options = ClientOptions {
        credentials: Some(Credentials {
            user: user.into(),
            password: password.into(),
        }),
        ..ClientOptions::default()
    };
    Client::connect_with(&server.addr, options)
}

fn code<T>(result: Result<T, ClientError>) -> Option<ErrorCode> {
    match result {
        Ok(_) => panic!("not refused"),
        Err(e) => e.code(),
    }
}

/// A node with three users (admin, writer, reader; passwords `NAME-pw`).
fn secured(dir: &Path) -> (Server, PathBuf) {
    let users = dir.join("users");
    for (name, role) in [
        ("admin", "admin"),
        ("writer", "readwrite"),
        ("reader", "read"),
    ] {
        add_user(&users, name, role, &format!("{name}-pw"));
    }
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(!text.contains("writer-pw"), "only verifiers are stored");
    let mode = std::fs::metadata(&users).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0);
    let data = dir.join("data");
    let server = Server::start_with(
        &data,
        2,
        &[
            "--auth",
            "required",
            "--users-file",
            users.to_str().unwrap(),
            "--resp-listen",
            "127.0.0.1:0",
        ],
    );
    (server, users)
}

#[test]
fn roles_bound_what_each_user_may_do_on_the_native_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = secured(dir.path());
    // Before authenticating: PING only.
    let anonymous = server.client();
    assert!(anonymous.ping().is_ok());
    assert_eq!(code(anonymous.get(b"k")), Some(ErrorCode::NoAuth));
    assert_eq!(code(anonymous.put(b"k", b"v")), Some(ErrorCode::NoAuth));
    // A wrong password and an unknown user fail alike.
    let wrong = login(&server, "writer", "nope").err().unwrap();
    let unknown = login(&server, "mallory", "nope").err().unwrap();
    assert_eq!(wrong.code(), Some(ErrorCode::AuthFailed));
    assert_eq!(wrong.to_string(), unknown.to_string());

    let writer = login(&server, "writer", "writer-pw").unwrap();
    writer.put(b"k", b"v").unwrap();
    writer.insert("c", &[json!({"_id": 1})]).unwrap();
    let txn = writer.begin(kvs_wire::Isolation::Serializable).unwrap();
    txn.put(b"t", b"1").unwrap();
    txn.commit().unwrap();
    let transfer = Request::TransferLeader { shard: 0, node: 1 };
    assert_eq!(code(writer.call(&transfer)), Some(ErrorCode::NoPerm));

    let reader = login(&server, "reader", "reader-pw").unwrap();
    assert_eq!(reader.get(b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(reader.find("c", &json!({})).unwrap().len(), 1);
    assert!(reader.info().is_ok());
    let err = reader.put(b"k", b"w").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoPerm));
    assert!(err.to_string().contains("readwrite"), "{err}");
    assert_eq!(
        code(reader.insert("c", &[json!({"_id": 2})])),
        Some(ErrorCode::NoPerm)
    );
    let txn = reader.begin(kvs_wire::Isolation::ReadOnly).unwrap();
    assert_eq!(txn.get(b"t").unwrap(), Some(b"1".to_vec()));
    txn.commit().unwrap();
    let txn = reader.begin(kvs_wire::Isolation::Serializable).unwrap();
    assert_eq!(code(txn.put(b"t", b"2")), Some(ErrorCode::NoPerm));
    drop(txn);

    // The CLI, and an admin's backup.
    let password = dir.path().join("admin.pw");
    std::fs::write(&password, "admin-pw\n").unwrap();
    let as_admin = |args: &[&str]| {
        let mut all = vec![
            "--user",
            "admin",
            "--password-file",
            password.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        kvs(&server, &all)
    };
    assert_eq!(as_admin(&["get", "k"]).1, "v\n");
    let backup = dir.path().join("backup");
    let (status, _, stderr) = as_admin(&["backup", "--to", backup.to_str().unwrap()]);
    assert_eq!(status, 0, "{stderr}");
    let (status, _, stderr) = kvs(&server, &["get", "k"]);
    assert_eq!(status, 2);
    assert!(stderr.contains("NOAUTH"), "{stderr}");
}

#[test]
fn sighup_reads_the_users_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let (server, users) = secured(dir.path());
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &server.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    assert_eq!(
        code(login(&server, "newcomer", "n-pw")),
        Some(ErrorCode::AuthFailed)
    );
    add_user(&users, "newcomer", "read", "n-pw");
    let (status, _, _) = kvs(
        &server,
        &[
            "user",
            "remove",
            "--file",
            users.to_str().unwrap(),
            "reader",
        ],
    );
    assert_eq!(status, 0);
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while login(&server, "newcomer", "n-pw").is_err() {
        assert!(
            Instant::now() < deadline,
            "SIGHUP never loaded the new user"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        code(login(&server, "reader", "reader-pw")),
        Some(ErrorCode::AuthFailed)
    );
    // A broken file keeps the users loaded, and the node keeps running.
    std::fs::write(&users, "newcomer root nonsense\n").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(login(&server, "newcomer", "n-pw").is_ok());
    let (status, _, _) = kvs(
        &server,
        &[
            "user",
            "remove",
            "--file",
            users.to_str().unwrap(),
            "nobody",
        ],
    );
    assert_eq!(status, 1);
}

#[test]
fn failed_logins_are_slowed_and_then_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = secured(dir.path());
    let client = server.client();
    let started = Instant::now();
    let mut last = None;
    for _ in 0..10 {
        let nonce = random_bytes(NONCE_LEN);
        let start = Request::AuthStart {
            user: "writer".into(),
            nonce: nonce.clone(),
        };
        let outcome = client.call(&start).and_then(|challenge| {
            let Response::AuthChallenge { nonce: theirs, .. } = challenge else {
                panic!("{challenge:?}");
            };
            // A proof of nothing: the password is not known.
            let _ = auth_message("writer", &nonce, &theirs);
            client.call(&Request::AuthFinish { proof: vec![0; 32] })
        });
        match outcome {
            Err(e) if e.code() == Some(ErrorCode::AuthFailed) => last = Some(e),
            Err(e) => {
                last = Some(e);
                break;
            }
            Ok(other) => panic!("a made-up proof passed: {other:?}"),
        }
    }
    let last = last.unwrap();
    assert!(last.code().is_none(), "the connection was closed: {last}");
    assert!(
        started.elapsed() >= Duration::from_millis(4 * 250),
        "each failure waited"
    );
    // Others are not affected.
    assert!(login(&server, "writer", "writer-pw").is_ok());
}

/// One RESP command on a raw connection; its reply's first line.
fn resp(stream: &mut BufReader<TcpStream>, args: &[&str]) -> String {
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.get_mut().write_all(command.as_bytes()).unwrap();
    let mut line = String::new();
    stream.read_line(&mut line).unwrap();
    if let Some(len) = line
        .strip_prefix('$')
        .and_then(|l| l.trim().parse::<usize>().ok())
    {
        let mut value = vec![0; len + 2];
        stream.read_exact(&mut value).unwrap();
        return String::from_utf8_lossy(&value[..len]).into_owned();
    }
    if line.starts_with('%') || line.starts_with('*') {
        // A HELLO map: read its lines without interpreting them.
        let count: usize = line[1..].trim().parse().unwrap();
        let items = if line.starts_with('%') {
            count * 2
        } else {
            count
        };
        for _ in 0..items {
            let mut item = String::new();
            stream.read_line(&mut item).unwrap();
            if item.starts_with('$') {
                let mut value = String::new();
                stream.read_line(&mut value).unwrap();
            } else if item.starts_with('*') {
                assert_eq!(item.trim(), "*0");
            }
        }
    }
    line.trim_end().to_string()
}

#[test]
fn redis_clients_authenticate_with_auth_and_hello() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = secured(dir.path());
    let resp_addr = server.ready_address("resp=");
    let connect = || BufReader::new(TcpStream::connect(&resp_addr).unwrap());
    let mut conn = connect();
    assert!(resp(&mut conn, &["GET", "a"]).starts_with("-NOAUTH"));
    assert!(resp(&mut conn, &["AUTH", "writer", "nope"]).starts_with("-WRONGPASS"));
    assert_eq!(resp(&mut conn, &["AUTH", "writer", "writer-pw"]), "+OK");
    assert_eq!(resp(&mut conn, &["SET", "a", "1"]), "+OK");
    let mut reader = connect();
    assert!(resp(&mut reader, &["HELLO", "3", "AUTH", "reader", "bad"]).starts_with("-WRONGPASS"));
    assert!(resp(&mut reader, &["HELLO", "3", "AUTH", "reader", "reader-pw"]).starts_with('%'));
    assert_eq!(resp(&mut reader, &["GET", "a"]), "1");
    let refused = resp(&mut reader, &["SET", "a", "2"]);
    assert!(
        refused.starts_with("-NOPERM") && refused.contains("'set'"),
        "{refused}"
    );
    // Queued in a MULTI, a command beyond the role is refused as it is queued.
    assert_eq!(resp(&mut reader, &["MULTI"]), "+OK");
    assert!(resp(&mut reader, &["DEL", "a"]).starts_with("-NOPERM"));
    assert_eq!(resp(&mut reader, &["DISCARD"]), "+OK");
}

#[test]
fn an_unauthenticated_listener_beyond_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (flags, why) in [
        (vec!["--listen", "0.0.0.0:0"], "not a loopback address"),
        (vec!["--resp-listen", "0.0.0.0:0"], "not a loopback address"),
        (vec!["--auth", "required"], "go together"),
        (vec!["--auth", "maybe"], "required or off"),
    ] {
        let out = Command::new(kvsd_binary())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(&flags)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(why), "{flags:?}: {stderr}");
    }
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn a_large_request_before_a_login_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = secured(dir.path());
    // A PUT declaring a 1 MiB value from a stranger: closed at its header, nothing held.
    let mut frame = Vec::new();
    Request::Put {
        key: b"k".to_vec(),
        value: vec![0; 1 << 20],
    }
    .encode(1, &mut frame);
    let mut stranger = TcpStream::connect(&server.addr).unwrap();
    stranger.write_all(&frame[..4096]).unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    let read = stranger.read(&mut byte);
    assert!(
        matches!(&read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "an unauthenticated large request was taken: {read:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server
        .stderr()
        .contains("closing an unauthenticated connection that sent a large request")
    {
        assert!(
            Instant::now() < deadline,
            "not logged:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A logged-in client sends the same.
    let writer = login(&server, "writer", "writer-pw").unwrap();
    writer.put(b"k", &vec![0; 1 << 20]).unwrap();
}
