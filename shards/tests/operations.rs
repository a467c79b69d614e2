//! What an operator sees of a real kvsd: the metrics endpoint's figures against requests
//! actually sent (and Prometheus's own `promtool check metrics` on its text), `/health` and
//! `/ready` (a cluster node alone is not ready until it knows its leaders), systemd's
//! notifications over a real `NOTIFY_SOCKET`, and JSON logs.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_ports, kvs, kvsd_binary, Server};

/// (status, body) of `method path` on the HTTP endpoint at `addr`.
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("the metrics endpoint accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: kvs\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').expect("a sample line");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The sum of every sample of metric `name` whose labels include all of `labels`.
fn total(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(key, _)| {
            let metric = key.split('{').next().unwrap();
            metric == name && labels.iter().all(|label| key.contains(label))
        })
        .map(|(_, value)| value)
        .sum()
}

/// Sends RESP commands on one connection and returns the raw replies' first lines.
fn resp(addr: &str, commands: &[&[&str]]) -> Vec<String> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lines = Vec::new();
    for command in commands {
        let mut bytes = format!("*{}\r\n", command.len()).into_bytes();
        for arg in *command {
            bytes.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        stream.write_all(&bytes).unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8];
        while !line.ends_with(b"\r\n") {
            stream.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        if line[0] == b'$' && line != b"$-1\r\n" {
            let len: usize = String::from_utf8_lossy(&line[1..line.len() - 2])
                .parse()
                .unwrap();
            let mut rest = vec![0u8; len + 2];
            stream.read_exact(&mut rest).unwrap();
        }
        lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
    }
    lines
}

#[test]
fn metrics_count_what_was_asked_by_protocol_command_and_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        dir.path(),
        2,
        &[
            "--resp-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.ready_address("metrics=");
    let resp_addr = server.ready_address("resp=");
    let client = server.client();
    for i in 0..5 {
        client.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    for i in 0..3 {
        assert!(client.get(format!("k{i}").as_bytes()).unwrap().is_some());
    }
    let replies = resp(
        &resp_addr,
        &[
            &["SET", "r1", "x"],
            &["SET", "r2", "y"],
            &["GET"],
            &["NOSUCH", "a"],
        ],
    );
    assert_eq!(replies[..2], ["+OK", "+OK"]);
    assert!(replies[2].starts_with("-ERR wrong number"), "{replies:?}");
    let (code, _, stderr) = kvs(&server, &["insert", "people", r#"[{"n": 1}, {"n": 2}]"#]);
    assert_eq!(code, 0, "{stderr}");

    let (status, text) = http(&metrics, "GET", "/metrics");
    assert_eq!(status, 200);
    let s = samples(&text);
    // The client library sends each put as a deduplicated ONCE (ADR 0018).
    assert_eq!(
        total(
            &s,
            "kvs_requests_total",
            &[r#"protocol="native""#, r#"command="once""#]
        ),
        5.0
    );
    assert_eq!(
        total(
            &s,
            "kvs_requests_total",
            &[r#"protocol="native""#, r#"command="get""#]
        ),
        3.0
    );
    assert_eq!(
        total(
            &s,
            "kvs_requests_total",
            &[r#"protocol="resp""#, r#"command="set""#]
        ),
        2.0
    );
    assert_eq!(
        total(
            &s,
            "kvs_requests_total",
            &[r#"protocol="resp""#, r#"command="other""#]
        ),
        1.0
    );
    assert_eq!(
        total(
            &s,
            "kvs_request_errors_total",
            &[r#"command="get""#, r#"code="ERR""#]
        ),
        1.0,
        "the wrong-arity GET"
    );
    assert_eq!(
        total(&s, "kvs_request_errors_total", &[r#"command="set""#]),
        0.0
    );
    // Every answered request is in its command's latency histogram.
    assert_eq!(
        total(
            &s,
            "kvs_request_duration_seconds_count",
            &[r#"protocol="native""#, r#"command="get""#]
        ),
        3.0
    );
    assert_eq!(
        total(
            &s,
            "kvs_request_duration_seconds_bucket",
            &[r#"command="get""#, r#"protocol="native""#, r#"le="+Inf""#]
        ),
        3.0
    );
    assert_eq!(total(&s, "kvs_keys", &[]), 7.0, "5 native and 2 RESP keys");
    assert_eq!(total(&s, "kvs_documents", &[]), 2.0);
    assert!(total(&s, "kvs_log_syncs_total", &[]) >= 1.0);
    assert!(total(&s, "kvs_log_sync_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(
        total(&s, "kvs_raft_is_leader", &[]),
        2.0,
        "a single node leads its shards"
    );
    assert_eq!(total(&s, "kvs_shard_info_stale", &[]), 0.0);
    assert!(
        total(&s, "kvs_connections", &[]) >= 1.0,
        "the client's connection is open"
    );
    assert!(total(&s, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(total(&s, "process_open_fds", &[]) > 3.0);
    assert!(total(&s, "kvs_data_dir_free_bytes", &[]) > 0.0);

    // Prometheus's own checker accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn health_and_ready_answer_and_other_paths_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(dir.path(), 1, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = server.ready_address("metrics=");
    assert_eq!(http(&metrics, "GET", "/health"), (200, "ok\n".into()));
    assert_eq!(
        http(&metrics, "GET", "/ready"),
        (200, "{\"ready\":true}\n".into())
    );
    assert_eq!(http(&metrics, "GET", "/nothing").0, 404);
    assert_eq!(http(&metrics, "POST", "/metrics").0, 405);
    assert_eq!(http(&metrics, "HEAD", "/metrics"), (200, String::new()));
    // A client that sends half a request and goes silent holds the endpoint up only for
    // its timeout.
    let silent = TcpStream::connect(&metrics).unwrap();
    (&silent).write_all(b"GET /met").unwrap();
    assert_eq!(http(&metrics, "GET", "/health").0, 200);
    drop(silent);
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn a_cluster_node_alone_is_not_ready_until_it_knows_its_leaders() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports::<6>();
    let peers: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", ports[3 + i]))
        .collect();
    let members = (0..3)
        .map(|i| format!("{}={}", i + 1, peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let node = |i: usize, extra: &[&str]| {
        let id = (i + 1).to_string();
        let mut flags = vec![
            "--node-id",
            &id,
            "--peer-listen",
            &peers[i],
            "--initial-cluster",
            &members,
        ];
        flags.extend_from_slice(extra);
        Server::spawn_with(
            &dir.path().join(format!("node{i}")),
            2,
            &format!("127.0.0.1:{}", ports[i]),
            &flags,
        )
    };
    let first = node(0, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = first.ready_address("metrics=");
    let (status, body) = http(&metrics, "GET", "/ready");
    assert_eq!(status, 503, "{body}");
    let reason: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reason["ready"], false);
    assert!(
        reason["reason"]
            .as_str()
            .unwrap()
            .contains("knows no leader"),
        "{reason}"
    );
    assert_eq!(
        http(&metrics, "GET", "/health").0,
        200,
        "alive, though not ready"
    );
    let others = [
        node(1, &["--metrics-listen", "127.0.0.1:0"]),
        node(2, &["--metrics-listen", "127.0.0.1:0"]),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(&metrics, "GET", "/ready").0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", first.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = samples(&http(&metrics, "GET", "/metrics").1);
    assert_eq!(total(&s, "kvs_raft_has_leader", &[]), 2.0);
    assert!(total(&s, "kvs_raft_leader_changes_total", &[]) >= 2.0);
    // Each shard's leader reports its two followers' lag.
    let mut leaders = 0;
    let mut reported = 0;
    for server in [&first, &others[0], &others[1]] {
        let metrics = server.ready_address("metrics=");
        let s = samples(&http(&metrics, "GET", "/metrics").1);
        reported += s
            .keys()
            .filter(|k| k.starts_with("kvs_raft_follower_lag_entries{"))
            .count();
        leaders += total(&s, "kvs_raft_is_leader", &[]) as usize;
    }
    assert_eq!(leaders, 2, "two shards, one leader each");
    assert_eq!(reported, 4, "two followers for each of two shards");
}

/// What kvsd sent to a NOTIFY_SOCKET, one datagram per entry.
fn notifications(socket: &UnixDatagram, until: impl Fn(&[String]) -> bool) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !until(&seen) {
        assert!(
            Instant::now() < deadline,
            "waited for notifications; got {seen:?}"
        );
        if let Ok(n) = socket.recv(&mut buffer) {
            seen.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }
    seen
}

#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let port = free_ports::<1>()[0];
    // systemd names the process its watchdog is for: the shell's pid, which exec keeps.
    let child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$@\"", "sh", kvsd_binary()])
        .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--shards", "2"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let has = |seen: &[String], what: &str| seen.iter().any(|m| m.lines().any(|l| l == what));
    let seen = notifications(&socket, |seen| {
        has(seen, "READY=1") && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3
    });
    let ready = seen.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=serving on 127.0.0.1:"), "{ready}");
    assert!(!has(&seen, "STOPPING=1"));
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    notifications(&socket, |seen| has(seen, "STOPPING=1"));
    assert!(child.0.wait().unwrap().success());
}

/// A child process killed if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn json_logs_are_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports::<1>()[0];
    let mut server = Server::spawn_with(
        dir.path(),
        1,
        &format!("127.0.0.1:{port}"),
        &["--log-format", "json"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stderr().contains("kvsd is ready") {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, stderr) = server.terminate();
    assert!(status.success());
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let ready = lines
        .iter()
        .find(|l| l["fields"]["message"] == "kvsd is ready")
        .expect("the ready line");
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["fields"]["listen"], format!("127.0.0.1:{port}"));
}

/// The metric names a PromQL text uses (ours and the process's).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &text[at..];
        let starts = rest.starts_with("kvs_") || rest.starts_with("process_");
        let boundary = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        if starts && boundary {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_string());
            at += len;
        } else {
            at += 1;
        }
    }
    names
}

fn project_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn promtool(args: &[&str]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (apt-get install prometheus; .ci/run installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_are_valid_and_pass_their_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
    promtool(&["check", "config", "prometheus.yml"]);
}

#[test]
fn a_real_prometheus_scrapes_kvsd_and_the_dashboard_and_alerts_name_real_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &dir.path().join("kvs"),
        2,
        &["--metrics-listen", "127.0.0.1:0"],
    );
    let metrics = server.ready_address("metrics=");
    let client = server.client();
    for i in 0..20 {
        client.put(format!("key{i}").as_bytes(), b"value").unwrap();
    }
    // An error reply (NOT_FOUND), so that the error counters have a sample.
    assert_eq!(client.get(b"absent").unwrap(), None);
    // Every name the dashboard and the alerts use is one kvsd exports (the follower lag
    // only on a cluster's leader: checked by the cluster test).
    let exported = samples(&http(&metrics, "GET", "/metrics").1)
        .keys()
        .map(|key| {
            let name = key.split('{').next().unwrap();
            name.trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .to_string()
        })
        .collect::<std::collections::BTreeSet<_>>();
    let used = metric_names(&project_file("ops/grafana/kvs.json"))
        .into_iter()
        .chain(metric_names(&project_file("ops/prometheus/alerts.yml")));
    for name in used {
        let name = name.trim_end_matches("_bucket").to_string();
        assert!(
            exported.contains(&name) || name == "kvs_raft_follower_lag_entries",
            "{name} is used by the dashboard or the alerts but not exported"
        );
    }

    let port = free_ports::<1>()[0];
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kvs\n    static_configs:\n      - targets: [\"{metrics}\"]\n"
        ),
    )
    .unwrap();
    let prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus runs (apt-get install prometheus; .ci/run installs it)");
    let _prometheus = KillOnDrop(prometheus);
    let api = format!("127.0.0.1:{port}");
    let query = |promql: &str| -> Option<f64> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        TcpStream::connect(&api).ok()?;
        let (status, body) = http(&api, "GET", &format!("/api/v1/query?query={encoded}"));
        let body: serde_json::Value = serde_json::from_str(&body).ok()?;
        if status != 200 {
            return None;
        }
        body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(r#"up{job="kvs"}"#);
        let puts = query(r#"sum(kvs_requests_total{command="once"})"#);
        if up == Some(1.0) && puts == Some(20.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw kvsd: up={up:?} puts={puts:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(query("sum(kvs_keys)"), Some(20.0));
    assert_eq!(query("count(kvs_raft_is_leader == 1)"), Some(2.0));
}
