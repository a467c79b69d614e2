//! TLS on kvsd's client listeners with real processes (issue 16, docs/security.md):
//! certificates made here (rcgen), the Rust client and the CLI over TLS on the native
//! listener, a TLS client on the RESP listener, client certificates required, a plaintext
//! client refused, and SIGHUP putting a new certificate in place for new connections while
//! open ones go on.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{Authority, Usage};
use common::{kvs, Server};
use kvs_wire::tls::TlsOptions;
use kvs_wire::{Client, ClientOptions};

fn options(ca: &Path, client_cert: Option<(PathBuf, PathBuf)>) -> ClientOptions {
    ClientOptions {
        tls: Some(TlsOptions {
            ca_file: ca.to_path_buf(),
            server_name: None,
            client_cert,
        }),
        ..ClientOptions::default()
    }
}

/// kvsd with TLS on both listeners (`flags` added), once it answers over TLS.
fn start(dir: &Path, cert: &(PathBuf, PathBuf), ca: &Path, flags: &[&str]) -> Server {
    let mut all = vec![
        "--tls-cert",
        cert.0.to_str().unwrap(),
        "--tls-key",
        cert.1.to_str().unwrap(),
        "--resp-listen",
        "127.0.0.1:0",
    ];
    all.extend_from_slice(flags);
    let mut server = Server::spawn_with(&dir.join("data"), 2, "127.0.0.1:0", &all);
    server.addr = server.ready_address("listen=");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Client::connect_with(&server.addr, options(ca, None))
        .and_then(|c| c.ping())
        .is_err()
        && flags.is_empty()
    {
        assert!(Instant::now() < deadline, "kvsd never answered over TLS");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[test]
fn clients_speak_tls_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "server", Usage::Server);
    let server = start(dir.path(), &cert, &ca.file, &[]);
    let client = Client::connect_with(&server.addr, options(&ca.file, None)).unwrap();
    client.put(b"k", b"v").unwrap();
    assert_eq!(client.get(b"k").unwrap(), Some(b"v".to_vec()));
    // Large values, and many requests in flight at once, through the records.
    let big = vec![7u8; 3 << 20];
    client.put(b"big", &big).unwrap();
    assert_eq!(client.get(b"big").unwrap(), Some(big));
    let keys: Vec<Vec<u8>> = (0..500).map(|i| format!("k{i}").into_bytes()).collect();
    let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), k.as_slice())).collect();
    client.mput(&pairs).unwrap();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    assert!(client.mget(&refs).unwrap().iter().all(Option::is_some));
    // The CLI.
    let (status, out, err) = kvs(
        &server,
        &["--tls-ca", ca.file.to_str().unwrap(), "get", "k"],
    );
    assert_eq!((status, out.as_str()), (0, "v\n"), "{err}");
    // A plaintext client gets nothing it can read, and the node goes on.
    let impatient = ClientOptions {
        request_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let plain = Client::connect_with(&server.addr, impatient).and_then(|c| c.ping());
    assert!(plain.is_err(), "a plaintext PING was answered");
    // An authority that did not sign the certificate is refused by the client.
    let stranger = Authority::new(dir.path(), "stranger");
    assert!(Client::connect_with(&server.addr, options(&stranger.file, None)).is_err());
    assert!(client.ping().is_ok());

    // RESP over TLS: a rustls client sends PING and SET.
    let resp_addr = server.ready_address("resp=");
    let config = kvs_wire::tls::client_config(&TlsOptions {
        ca_file: ca.file.clone(),
        server_name: None,
        client_cert: None,
    })
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let session = rustls::ClientConnection::new(Arc::clone(&config), name).unwrap();
    let stream = rustls::StreamOwned::new(session, TcpStream::connect(&resp_addr).unwrap());
    let mut resp = BufReader::new(stream);
    let mut line = String::new();
    resp.get_mut()
        .write_all(b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nr\r\n$1\r\n1\r\n")
        .unwrap();
    resp.read_line(&mut line).unwrap();
    assert_eq!(line, "+PONG\r\n");
    line.clear();
    resp.read_line(&mut line).unwrap();
    assert_eq!(line, "+OK\r\n");
    assert_eq!(client.get(b"r").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn a_client_certificate_is_required_when_the_node_asks() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "server", Usage::Server);
    let client_ca = Authority::new(dir.path(), "clients");
    let mine = client_ca.issue(dir.path(), "app", Usage::Client);
    let flags = ["--tls-client-ca", client_ca.file.to_str().unwrap()];
    let server = start(dir.path(), &cert, &ca.file, &flags);
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match Client::connect_with(&server.addr, options(&ca.file, Some(mine.clone()))) {
            Ok(client) if client.ping().is_ok() => break client,
            _ => {
                assert!(Instant::now() < deadline, "kvsd never answered over TLS");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    client.put(b"k", b"v").unwrap();
    // Without a certificate, or with one another authority signed: refused.
    let anonymous = Client::connect_with(&server.addr, options(&ca.file, None));
    assert!(anonymous.and_then(|c| c.ping()).is_err());
    let forged = ca.issue(dir.path(), "forged", Usage::Client);
    let forged = Client::connect_with(&server.addr, options(&ca.file, Some(forged)));
    assert!(forged.and_then(|c| c.ping()).is_err());
    assert!(client.ping().is_ok());
}

#[test]
fn sighup_puts_a_new_certificate_in_place_and_open_connections_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Authority::new(dir.path(), "old-ca");
    let cert = old_ca.issue(dir.path(), "server", Usage::Server);
    let server = start(dir.path(), &cert, &old_ca.file, &[]);
    let open = Client::connect_with(&server.addr, options(&old_ca.file, None)).unwrap();
    open.put(b"k", b"1").unwrap();
    // The operator rotates the certificate in place and sends SIGHUP.
    let new_ca = Authority::new(dir.path(), "new-ca");
    let rotated = new_ca.issue(dir.path(), "rotated", Usage::Server);
    std::fs::copy(&rotated.0, &cert.0).unwrap();
    std::fs::copy(&rotated.1, &cert.1).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Client::connect_with(&server.addr, options(&new_ca.file, None)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never used"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Client::connect_with(&server.addr, options(&old_ca.file, None)).is_err());
    // The connection opened before goes on with its session.
    open.put(b"k", b"2").unwrap();
    assert_eq!(open.get(b"k").unwrap(), Some(b"2".to_vec()));
}
