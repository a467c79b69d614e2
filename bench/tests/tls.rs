//! kvs-bench over TLS (issue 16): against a real kvsd serving TLS on its native and RESP
//! listeners, with a certificate made here, the load phase and the event-loop run both go
//! through TLS and every operation succeeds; without the authority the run is refused.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn bench_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvs-bench"))
}

/// kvsd serving TLS with `cert`/`key` on both listeners: the process and its two addresses.
fn start_kvsd(dir: &Path, cert: &Path, key: &Path) -> (Child, String, String) {
    let kvsd = bench_binary().with_file_name("kvsd");
    assert!(
        kvsd.exists(),
        "{} is missing: run the workspace tests",
        kvsd.display()
    );
    let mut child = Command::new(kvsd)
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--resp-listen", "127.0.0.1:0"])
        .args(["--tls-cert", cert.to_str().unwrap()])
        .args(["--tls-key", key.to_str().unwrap()])
        .args(["--shards", "2", "--log-level", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let field = |line: &str, name: &str| {
        let at = line.find(name).unwrap() + name.len();
        line[at..].split_whitespace().next().unwrap().to_string()
    };
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("listen=") {
            let (native, resp) = (field(&line, "listen="), field(&line, "resp="));
            return (child, native, resp);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("kvsd did not say where it listens");
}

/// Runs kvs-bench with `args`: whether it succeeded, its stderr, and its JSON report.
fn bench(dir: &Path, args: &[&str]) -> (bool, String, Option<serde_json::Value>) {
    let json = dir.join("report.json");
    let _ = std::fs::remove_file(&json);
    let out = Command::new(bench_binary())
        .args(args)
        .args(["--json", json.to_str().unwrap()])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let report = std::fs::read(&json)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).unwrap());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    )
}

#[test]
fn kvs_bench_runs_over_tls_on_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (mut kvsd, native, resp) = start_kvsd(dir.path(), &cert_file, &key_file);
    let ca = cert_file.to_str().unwrap();
    let runs: [(&str, &[&str]); 2] = [
        (&native, &["--workload", "ycsb-a", "--pipeline", "4"]),
        (
            &resp,
            &[
                "--protocol",
                "resp",
                "--workload",
                "write",
                "--pipeline",
                "16",
            ],
        ),
    ];
    for (addr, workload) in runs {
        let mut args = vec!["--addr", addr, "--tls-ca", ca, "--records", "2000"];
        args.extend_from_slice(&["--clients", "8", "--ops", "20000"]);
        args.extend_from_slice(workload);
        let (ok, stderr, report) = bench(dir.path(), &args);
        assert!(ok, "kvs-bench {args:?} failed: {stderr}");
        let report = report.expect("a JSON report");
        assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
        assert!(report["ops"].as_u64().unwrap() >= 20_000, "{report}");
    }
    // Plaintext against the TLS listener, or TLS without trusting its certificate: refused.
    let (ok, _, _) = bench(
        dir.path(),
        &[
            "--addr",
            &native,
            "--records",
            "100",
            "--ops",
            "100",
            "--clients",
            "1",
        ],
    );
    assert!(!ok, "a plaintext run against a TLS listener succeeded");
    let other = rcgen::KeyPair::generate().unwrap();
    let stranger = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&other)
        .unwrap();
    let stranger_file = dir.path().join("stranger.pem");
    std::fs::write(&stranger_file, stranger.pem()).unwrap();
    let (ok, stderr, _) = bench(
        dir.path(),
        &[
            "--addr",
            &native,
            "--tls-ca",
            stranger_file.to_str().unwrap(),
            "--records",
            "100",
        ],
    );
    assert!(!ok && stderr.contains("TLS"), "{stderr}");
    kvsd.kill().unwrap();
    kvsd.wait().unwrap();
}
