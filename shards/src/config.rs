//! kvsd's configuration: defaults, a TOML file, and flags, in rising order of precedence.
//! The file uses the flags' names with underscores (`data_dir = "..."`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Most shards one node runs.
pub const SHARD_COUNT_MAX: u32 = 256;

#[derive(Parser, Debug, Default)]
#[command(
    name = "kvsd",
    version,
    about = "kvs server: a durable, sharded key-value store"
)]
pub struct Flags {
    /// Directory for the node's data. Default: kvs-data (in the working directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address for the native protocol. Default: 127.0.0.1:7070.
    #[arg(long)]
    pub listen: Option<String>,
    /// Number of shards (one pinned executor each); fixed when the data directory is created.
    /// Default: one per CPU kvsd may run on, or what the data directory was created with.
    #[arg(long)]
    pub shards: Option<u32>,
    /// Address for the Redis protocol listener (RESP2, and RESP3 after HELLO 3). Default: off.
    #[arg(long)]
    pub resp_listen: Option<String>,
    /// Address for the HTTP endpoint serving `/metrics` (Prometheus), `/health` and
    /// `/ready`. Default: off.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Log lines as `text` (for people) or `json` (one object a line, for collectors).
    /// Default: text.
    #[arg(long)]
    pub log_format: Option<String>,
    /// TOML file with any of the settings above.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter directive. Default:
    /// info.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Page cache budget for the whole node, split evenly between shards (e.g. 64MiB, 2GiB).
    /// Default: a quarter of the machine's memory.
    #[arg(long)]
    pub cache_size: Option<String>,
    /// Longest time between checkpoints while there are changes, in seconds. Default: 60.
    #[arg(long)]
    pub checkpoint_interval: Option<u64>,
    /// A shard checkpoints once this much log was written since its last one. Default:
    /// 64MiB.
    #[arg(long)]
    pub checkpoint_log_size: Option<String>,
    /// Page write rate of a background checkpoint, per shard per second. Checkpoints forced
    /// by a full cache run at full speed. Default: 256MiB.
    #[arg(long)]
    pub checkpoint_rate: Option<String>,
    /// Check the data directory (shard directories, every shard's log as start-up would
    /// recover it, page files, tree invariants, free list) and exit: 0 when clean, 1 when
    /// problems were found, 2 when it cannot run. Changes nothing; kvsd must not be running.
    #[arg(long)]
    pub verify: bool,
    /// Build the data directory --data-dir (which must not exist, or be empty) from the
    /// backup in this directory (`kvs backup`), check it, and exit: 0 when restored, 1 when
    /// the backup is damaged or incomplete (nothing is left behind), 2 when it cannot run.
    /// With --node-id and --initial-cluster, that member's directory of a new cluster (restore
    /// every member from the same backup).
    #[arg(long)]
    pub restore_from: Option<PathBuf>,
    /// Copy every log segment here (fsynced, with its CRC32C) before deleting it, for
    /// point-in-time recovery; with --restore-from, the archive to replay after the backup.
    /// Default: off.
    #[arg(long)]
    pub archive_dir: Option<PathBuf>,
    /// With --restore-from and --archive-dir: replay the archive up to this moment (RFC 3339,
    /// e.g. 2026-12-05T08:10:45Z). Default: all of it.
    #[arg(long)]
    pub until: Option<String>,
    /// With --restore-from and --archive-dir: replay each shard's archive up to this log
    /// index.
    #[arg(long)]
    pub until_index: Option<u64>,
    /// This node's id in the cluster (a number from --initial-cluster). Default: 1.
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Address for the other nodes' links (the peer protocol). Required with
    /// --initial-cluster; default: off (a node of one).
    #[arg(long)]
    pub peer_listen: Option<String>,
    /// The cluster's members as ID=HOST:PORT of each node's --peer-listen, comma-separated
    /// (3 or 5 nodes). Used when the data directory is created; ignored, with a log line,
    /// once it belongs to a cluster. Default: none (a node of one).
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// A follower that hears no leader for this long (randomised up to twice it) starts an
    /// election, e.g. 500ms or 1s. Default: 500ms.
    #[arg(long)]
    pub election_timeout: Option<String>,
    /// How often a leader sends heartbeats (Raft's tick), e.g. 50ms. Default: 50ms.
    #[arg(long)]
    pub heartbeat_interval: Option<String>,
    /// Reads in a cluster: `linearizable` (the shard's leader answers once a majority
    /// confirmed it still leads) or `stale` (any node answers from its own replica, which
    /// may lag behind writes already acknowledged). Default: linearizable.
    #[arg(long)]
    pub read_consistency: Option<String>,
    /// Leader leases for linearizable reads in a cluster: `on` (a leader that a majority
    /// confirmed within half an election timeout answers reads from its own state; this
    /// assumes the nodes' clocks run at rates within a factor of two) or `off` (every read
    /// asks a majority). Default: on.
    #[arg(long)]
    pub read_lease: Option<String>,
    /// Bytes per second a leader sends a snapshot (its checkpoint) to a follower too far
    /// behind for the log, per transfer, e.g. 64MiB or 1GiB. Default: 64MiB.
    #[arg(long)]
    pub snapshot_rate: Option<String>,
    /// Longest a transaction waits for a lock before it is aborted with TXN_TIMEOUT, e.g.
    /// 5s or 500ms. Default: 5s.
    #[arg(long)]
    pub lock_timeout: Option<String>,
    /// Longest a transaction may run: past it, it is aborted with TXN_TIMEOUT and its locks
    /// are released. Default: 60s.
    #[arg(long)]
    pub txn_timeout: Option<String>,
    /// Longest a snapshot read may stay open (ADR 0023): an older one is closed and reading
    /// at it fails with SNAPSHOT_TOO_OLD; it bounds the old versions kept for it. Default:
    /// 60s.
    #[arg(long)]
    pub txn_max_age: Option<String>,
    /// `required`: clients authenticate as a user of --users-file before anything but PING
    /// (ADR 0025, docs/security.md), and each user's role bounds what it may do; `off`:
    /// anyone who reaches a port may do everything. Default: off, which kvsd refuses on a
    /// client listener (--listen, --resp-listen) that is not a loopback address unless
    /// --insecure is given.
    #[arg(long)]
    pub auth: Option<String>,
    /// The users, one a line as `NAME ROLE HASH` (written by `kvs user add`); read at start
    /// and again on SIGHUP. Required with --auth required.
    #[arg(long)]
    pub users_file: Option<PathBuf>,
    /// Allow --auth off on a client listener that is not a loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// The certificate (PEM, with its chain) the client listeners present: with it and
    /// --tls-key, --listen and --resp-listen speak only TLS. Read again on SIGHUP.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Authorities (PEM) whose client certificates the listeners ask for.
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: `required` (a client without a certificate signed by one is
    /// refused) or `optional`. Default: required.
    #[arg(long)]
    pub tls_client_cert: Option<String>,
    /// Most client connections open at once (native and RESP together); one more is told
    /// so and closed. Default: 10000.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Close a client connection that sent nothing for this long (e.g. 300s) and waits for
    /// no reply. Default: off.
    #[arg(long)]
    pub idle_timeout: Option<String>,
    /// Memory for client requests being received or waiting for their replies, for the
    /// whole node (e.g. 512MiB): a large request waits, unread, while it is spent.
    /// Default: 1GiB.
    #[arg(long)]
    pub max_request_memory: Option<String>,
    /// This node's certificate (PEM, with its chain) on the links between nodes: with
    /// --peer-tls-key and --peer-tls-ca every peer link is mutual TLS. It must name the
    /// address the other nodes dial (--initial-cluster). Read again on SIGHUP.
    #[arg(long)]
    pub peer_tls_cert: Option<PathBuf>,
    /// The peer certificate's private key (PEM).
    #[arg(long)]
    pub peer_tls_key: Option<PathBuf>,
    /// The authority (PEM) that signs every member's peer certificate: a link whose other
    /// side shows no certificate signed by it is refused.
    #[arg(long)]
    pub peer_tls_ca: Option<PathBuf>,
    /// A file holding a secret shared by the cluster's nodes (at least 16 bytes): a link
    /// whose other side cannot prove it knows the secret is refused. Read again on SIGHUP.
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    shards: Option<u32>,
    resp_listen: Option<String>,
    metrics_listen: Option<String>,
    log_format: Option<String>,
    archive_dir: Option<PathBuf>,
    log_level: Option<String>,
    cache_size: Option<String>,
    checkpoint_interval: Option<u64>,
    checkpoint_log_size: Option<String>,
    checkpoint_rate: Option<String>,
    node_id: Option<u64>,
    peer_listen: Option<String>,
    initial_cluster: Option<String>,
    election_timeout: Option<String>,
    heartbeat_interval: Option<String>,
    read_consistency: Option<String>,
    read_lease: Option<String>,
    snapshot_rate: Option<String>,
    lock_timeout: Option<String>,
    txn_timeout: Option<String>,
    txn_max_age: Option<String>,
    auth: Option<String>,
    users_file: Option<PathBuf>,
    insecure: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_client_cert: Option<String>,
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
    max_request_memory: Option<String>,
    peer_tls_cert: Option<PathBuf>,
    peer_tls_key: Option<PathBuf>,
    peer_tls_ca: Option<PathBuf>,
    cluster_secret_file: Option<PathBuf>,
}

/// What makes a node one of a cluster: its id, where it listens for peers, and the members
/// the cluster starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub peer_listen: SocketAddr,
    /// Each member's id and peer address, sorted by id.
    pub members: Vec<(u64, SocketAddr)>,
}

impl ClusterConfig {
    /// The member list as `--initial-cluster` spells it (sorted by id): the text the
    /// cluster id is derived from, so nodes given the same members agree on it.
    pub fn members_text(&self) -> String {
        members_text(&self.members)
    }
}

/// `ID=ADDR,...` of `members`.
pub fn members_text(members: &[(u64, SocketAddr)]) -> String {
    members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Most voters a group has.
pub const CLUSTER_NODES_MAX: usize = 7;

/// Parses `--initial-cluster`: `ID=HOST:PORT` items, comma-separated, ids unique and
/// positive, addresses unique.
pub fn parse_members(text: &str) -> Result<Vec<(u64, SocketAddr)>, String> {
    let mut members = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| format!("{id:?} is not a node id (a positive number)"))?;
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{addr:?} is not HOST:PORT (an IP address and a port)"))?;
        if members.iter().any(|&(other, _)| other == id) {
            return Err(format!("node id {id} is listed twice"));
        }
        if members.iter().any(|&(_, other)| other == addr) {
            return Err(format!("address {addr} is listed twice"));
        }
        members.push((id, addr));
    }
    if members.is_empty() {
        return Err("no members".into());
    }
    if members.len() > CLUSTER_NODES_MAX {
        return Err(format!(
            "{} members; at most {CLUSTER_NODES_MAX}",
            members.len()
        ));
    }
    members.sort_unstable();
    Ok(members)
}

/// Parses a duration such as `500ms`, `2s` or `1.5s` (a bare number is milliseconds).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, 1e-3)
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value > 0.0 && value * scale < 3600.0)
        .then(|| Duration::from_secs_f64(value * scale))
}

/// The settings kvsd runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The Redis-protocol listener's address, when enabled.
    pub resp_listen: Option<SocketAddr>,
    /// The metrics and health endpoint's address, when enabled.
    pub metrics_listen: Option<SocketAddr>,
    /// `--log-format json`: log lines are JSON objects.
    pub log_json: bool,
    /// `None`: one shard per available core (or what the data directory was created with).
    pub shards: Option<u32>,
    pub log_level: String,
    /// Page cache bytes for the node; `None`: a quarter of the machine's memory.
    pub cache_size: Option<u64>,
    pub checkpoint_interval: Duration,
    pub checkpoint_log_size: u64,
    pub checkpoint_rate: u64,
    pub verify: bool,
    /// `--restore-from DIR`: build the data directory from a backup and exit.
    pub restore_from: Option<PathBuf>,
    /// `--archive-dir`: where log segments are archived (and replayed from on a restore).
    pub archive_dir: Option<PathBuf>,
    /// `--until` (ms since the epoch) or `--until-index`, for a restore.
    pub until: Option<crate::archive::Until>,
    /// Set with --initial-cluster: this node is one of a cluster.
    pub cluster: Option<ClusterConfig>,
    pub election_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// `--read-consistency stale`: any node answers reads from its own replica.
    pub stale_reads: bool,
    /// `--read-lease on`: a confirmed leader answers reads from its own state for a while.
    pub read_lease: bool,
    /// `--snapshot-rate`: bytes per second of a snapshot transfer.
    pub snapshot_rate: u64,
    /// `--lock-timeout`, `--txn-timeout` (ADR 0022).
    pub lock_timeout: Duration,
    pub txn_timeout: Duration,
    pub txn_max_age: Duration,
    /// `--auth required`: with the users of `users_file` (ADR 0025).
    pub auth_required: bool,
    pub users_file: Option<PathBuf>,
    /// `--tls-cert` and its companions: the client listeners speak TLS.
    pub tls: Option<crate::tls::TlsFiles>,
    /// `--max-connections`, `--idle-timeout`.
    pub limits: ConnectionLimits,
    /// `--peer-tls-*` and `--cluster-secret-file` (ADR 0027).
    pub peer_security: crate::cluster::peer_security::PeerSecurityFiles,
}

/// `--max-connections`'s default (Redis's `maxclients`).
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;

/// The limits on client connections (`--max-connections`, `--idle-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub idle_timeout: Option<Duration>,
    /// `--max-request-memory`, for the whole node (`request_memory.rs`).
    pub max_request_memory: u64,
}

/// `--max-request-memory`'s default.
pub const MAX_REQUEST_MEMORY_DEFAULT: u64 = 1 << 30;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: MAX_CONNECTIONS_DEFAULT,
            idle_timeout: None,
            max_request_memory: MAX_REQUEST_MEMORY_DEFAULT,
        }
    }
}

/// Smallest page cache per shard, in bytes.
pub const CACHE_SIZE_MIN: u64 = 1024 * 1024;

/// Parses a byte size: a number with an optional unit, B, K/KiB, M/MiB, G/GiB or T/TiB
/// (all powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

impl Config {
    /// Page cache bytes per shard for `shards` shards.
    pub fn cache_per_shard(&self, shards: u32) -> u64 {
        let total = self.cache_size.unwrap_or_else(|| physical_memory() / 4);
        (total / u64::from(shards.max(1))).max(CACHE_SIZE_MIN)
    }
}

/// The machine's memory, from sysconf (no /proc needed: a hardened unit hides most of it);
/// 1 GiB if it cannot be read.
fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && page > 0 {
        pages as u64 * page as u64
    } else {
        1 << 30
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bad config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("bad listen address {0:?}: expected HOST:PORT with an IP address")]
    Listen(String),
    #[error("{0}")]
    Auth(String),
    #[error("--shards must be between 1 and {SHARD_COUNT_MAX}, not {0}")]
    Shards(u32),
    #[error("bad --{0} {1:?}: expected a size such as 64MiB or 2GiB")]
    Size(&'static str, String),
    #[error("bad --{0} {1:?}: expected a duration such as 500ms or 2s")]
    Duration(&'static str, String),
    #[error("bad --initial-cluster: {0}")]
    Cluster(String),
    #[error("bad --read-consistency {0:?}: expected linearizable or stale")]
    ReadConsistency(String),
    #[error("bad --read-lease {0:?}: expected on or off")]
    ReadLease(String),
    #[error("bad --log-format {0:?}: expected text or json")]
    LogFormat(String),
    #[error("bad --until: {0}")]
    Until(String),
}

impl Config {
    pub fn from_flags(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => Config::read_file(path)?,
            None => FileConfig::default(),
        };
        Config::from_flags_and_file(flags, file)
    }

    /// The settings a configuration file's text gives alone (what kvsd would run with,
    /// given `--config` with it and no other flag).
    pub fn parse_file_text(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "(text)".into(),
            message: e.to_string(),
        })?;
        Config::from_flags_and_file(Flags::default(), file)
    }

    fn from_flags_and_file(flags: Flags, file: FileConfig) -> Result<Config, ConfigError> {
        let listen_text = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7070".into());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|_| ConfigError::Listen(listen_text.clone()))?;
        let resp_listen = match flags.resp_listen.or(file.resp_listen) {
            Some(text) => Some(
                text.parse()
                    .map_err(|_| ConfigError::Listen(text.clone()))?,
            ),
            None => None,
        };
        let metrics_listen = match flags.metrics_listen.or(file.metrics_listen) {
            Some(text) => Some(
                text.parse()
                    .map_err(|_| ConfigError::Listen(text.clone()))?,
            ),
            None => None,
        };
        let log_json = match flags.log_format.or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => return Err(ConfigError::LogFormat(other.into())),
        };
        let until = match (flags.until, flags.until_index) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Until(
                    "give --until or --until-index, not both".into(),
                ))
            }
            (Some(text), None) => Some(crate::archive::Until::Time(
                crate::archive::parse_rfc3339(&text).ok_or_else(|| {
                    ConfigError::Until(format!(
                        "{text:?} is not an RFC 3339 time such as 2026-12-05T08:10:45Z"
                    ))
                })?,
            )),
            (None, Some(index)) => Some(crate::archive::Until::Index(index)),
            (None, None) => None,
        };
        let shards = flags.shards.or(file.shards);
        if let Some(n) = shards {
            if n == 0 || n > SHARD_COUNT_MAX {
                return Err(ConfigError::Shards(n));
            }
        }
        let size = |name: &'static str, text: Option<String>, default: u64| match text {
            None => Ok(default),
            Some(text) => parse_size(&text)
                .filter(|&n| n > 0)
                .ok_or(ConfigError::Size(name, text)),
        };
        let cache_size = match flags.cache_size.or(file.cache_size) {
            None => None,
            Some(text) => Some(size("cache-size", Some(text), 0)?),
        };
        let checkpoint_log_size = size(
            "checkpoint-log-size",
            flags.checkpoint_log_size.or(file.checkpoint_log_size),
            64 << 20,
        )?;
        let checkpoint_rate = size(
            "checkpoint-rate",
            flags.checkpoint_rate.or(file.checkpoint_rate),
            256 << 20,
        )?;
        let snapshot_rate = size(
            "snapshot-rate",
            flags.snapshot_rate.or(file.snapshot_rate),
            64 << 20,
        )?;
        let checkpoint_interval = Duration::from_secs(
            flags
                .checkpoint_interval
                .or(file.checkpoint_interval)
                .unwrap_or(60)
                .max(1),
        );
        let duration = |name: &'static str, text: Option<String>, default: Duration| match text {
            None => Ok(default),
            Some(text) => parse_duration(&text).ok_or(ConfigError::Duration(name, text)),
        };
        let election_timeout = duration(
            "election-timeout",
            flags.election_timeout.or(file.election_timeout),
            Duration::from_millis(500),
        )?;
        let heartbeat_interval = duration(
            "heartbeat-interval",
            flags.heartbeat_interval.or(file.heartbeat_interval),
            Duration::from_millis(50),
        )?;
        let lock_timeout = duration(
            "lock-timeout",
            flags.lock_timeout.or(file.lock_timeout),
            Duration::from_secs(5),
        )?;
        let txn_timeout = duration(
            "txn-timeout",
            flags.txn_timeout.or(file.txn_timeout),
            Duration::from_secs(60),
        )?;
        let txn_max_age = duration(
            "txn-max-age",
            flags.txn_max_age.or(file.txn_max_age),
            Duration::from_secs(60),
        )?;
        if election_timeout < heartbeat_interval * 3 {
            return Err(ConfigError::Cluster(format!(
                "--election-timeout ({election_timeout:?}) must be at least three heartbeat \
                 intervals ({heartbeat_interval:?}): followers would start elections while \
                 the leader is alive"
            )));
        }
        let cluster = Config::cluster(
            flags.node_id.or(file.node_id),
            flags.peer_listen.or(file.peer_listen),
            flags.initial_cluster.or(file.initial_cluster),
        )?;
        let stale_reads = match flags.read_consistency.or(file.read_consistency).as_deref() {
            None | Some("linearizable") => false,
            Some("stale") => true,
            Some(other) => return Err(ConfigError::ReadConsistency(other.into())),
        };
        let read_lease = match flags.read_lease.or(file.read_lease).as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => return Err(ConfigError::ReadLease(other.into())),
        };
        let auth_required = match flags.auth.or(file.auth).as_deref() {
            None | Some("off") => false,
            Some("required") => true,
            Some(other) => {
                return Err(ConfigError::Auth(format!(
                    "--auth {other:?}: expected required or off"
                )))
            }
        };
        let users_file = flags.users_file.or(file.users_file);
        if auth_required != users_file.is_some() {
            return Err(ConfigError::Auth(
                "--auth required and --users-file go together".into(),
            ));
        }
        let insecure = flags.insecure || file.insecure.unwrap_or(false);
        let exposed = std::iter::once(listen)
            .chain(resp_listen)
            .find(|addr| !addr.ip().is_loopback());
        if let (false, false, Some(addr)) = (auth_required, insecure, exposed) {
            return Err(ConfigError::Auth(format!(
                "{addr} is not a loopback address, and --auth is off: anyone who reaches it \
                 could read and write everything. Give --auth required with --users-file \
                 (docs/security.md), or --insecure to run so anyway"
            )));
        }
        let tls = match (
            flags.tls_cert.or(file.tls_cert),
            flags.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => {
                let client_required =
                    match flags.tls_client_cert.or(file.tls_client_cert).as_deref() {
                        None | Some("required") => true,
                        Some("optional") => false,
                        Some(other) => {
                            return Err(ConfigError::Auth(format!(
                                "--tls-client-cert {other:?}: expected required or optional"
                            )))
                        }
                    };
                Some(crate::tls::TlsFiles {
                    cert,
                    key,
                    client_ca: flags.tls_client_ca.or(file.tls_client_ca),
                    client_required,
                })
            }
            (None, None) if flags.tls_client_ca.is_none() => None,
            _ => {
                return Err(ConfigError::Auth(
                    "--tls-cert and --tls-key go together (and --tls-client-ca needs them)".into(),
                ))
            }
        };
        let peer_security = crate::cluster::peer_security::PeerSecurityFiles::from_flags(
            flags.peer_tls_cert.or(file.peer_tls_cert),
            flags.peer_tls_key.or(file.peer_tls_key),
            flags.peer_tls_ca.or(file.peer_tls_ca),
            flags.cluster_secret_file.or(file.cluster_secret_file),
        )
        .map_err(ConfigError::Auth)?;
        if let Some(cluster) = &cluster {
            let addr = cluster.peer_listen;
            if !addr.ip().is_loopback() && !peer_security.authenticates() && !insecure {
                return Err(ConfigError::Auth(format!(
                    "--peer-listen {addr} is not a loopback address, and the links between \
                     nodes are not authenticated: anyone who reaches it could join the \
                     cluster's Raft groups. Give --peer-tls-cert, --peer-tls-key and \
                     --peer-tls-ca, or --cluster-secret-file (docs/security.md), or \
                     --insecure to run so anyway"
                )));
            }
        }
        let max_connections = flags
            .max_connections
            .or(file.max_connections)
            .unwrap_or(MAX_CONNECTIONS_DEFAULT);
        if max_connections == 0 {
            return Err(ConfigError::Auth(
                "--max-connections must be at least 1".into(),
            ));
        }
        let idle_timeout = match flags.idle_timeout.or(file.idle_timeout) {
            None => None,
            Some(text) if text == "0" || text == "off" => None,
            Some(text) => {
                Some(parse_duration(&text).ok_or(ConfigError::Duration("idle-timeout", text))?)
            }
        };
        Ok(Config {
            peer_security,
            limits: ConnectionLimits {
                max_connections,
                idle_timeout,
                max_request_memory: size(
                    "max-request-memory",
                    flags.max_request_memory.or(file.max_request_memory),
                    MAX_REQUEST_MEMORY_DEFAULT,
                )?,
            },
            tls,
            auth_required,
            users_file,
            lock_timeout,
            txn_timeout,
            txn_max_age,
            stale_reads,
            read_lease,
            snapshot_rate,
            cluster,
            election_timeout,
            heartbeat_interval,
            cache_size,
            checkpoint_interval,
            checkpoint_log_size,
            checkpoint_rate,
            verify: flags.verify,
            restore_from: flags.restore_from,
            archive_dir: flags.archive_dir.or(file.archive_dir),
            until,
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("kvs-data")),
            listen,
            resp_listen,
            metrics_listen,
            log_json,
            shards,
            log_level: flags
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
        })
    }

    /// The cluster settings: all of them or none (a node of one).
    fn cluster(
        node_id: Option<u64>,
        peer_listen: Option<String>,
        initial_cluster: Option<String>,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let Some(initial_cluster) = initial_cluster else {
            if peer_listen.is_some() || node_id.is_some_and(|id| id != 1) {
                return Err(ConfigError::Cluster(
                    "--node-id and --peer-listen need --initial-cluster (the members)".into(),
                ));
            }
            return Ok(None);
        };
        let members = parse_members(&initial_cluster).map_err(ConfigError::Cluster)?;
        let node_id = node_id.ok_or_else(|| {
            ConfigError::Cluster("--node-id is required with --initial-cluster".into())
        })?;
        let Some(&(_, listed)) = members.iter().find(|&&(id, _)| id == node_id) else {
            return Err(ConfigError::Cluster(format!(
                "--node-id {node_id} is not one of its members"
            )));
        };
        if members.len() < 3 || members.len() % 2 == 0 {
            return Err(ConfigError::Cluster(format!(
                "{} members: a cluster has 3, 5 or 7 nodes (an odd number, so a majority \
                 survives a failure)",
                members.len()
            )));
        }
        let peer_listen = match peer_listen {
            None => listed,
            Some(text) => text
                .parse()
                .map_err(|_| ConfigError::Listen(text.clone()))?,
        };
        Ok(Some(ClusterConfig {
            node_id,
            peer_listen,
            members,
        }))
    }

    fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: display,
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let config = Config::from_flags(Flags::default()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("kvs-data"));
        assert_eq!(config.shards, None);
        assert_eq!(config.cache_size, None);
        assert!(config.cache_per_shard(2) >= CACHE_SIZE_MIN);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12 MB"), Some(12 << 20));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5XB"), None);
        assert_eq!(parse_size("99999999999T"), None);
        let config = Config::from_flags(Flags {
            cache_size: Some("64MiB".into()),
            ..Flags::default()
        })
        .unwrap();
        assert_eq!(config.cache_per_shard(2), 32 << 20);
        assert!(matches!(
            Config::from_flags(Flags {
                cache_size: Some("huge".into()),
                ..Flags::default()
            }),
            Err(ConfigError::Size("cache-size", _))
        ));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("kvs-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kvsd.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/kvs\"\nlisten = \"0.0.0.0:9000\"\nshards = 4\ninsecure = true\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path.clone()),
            shards: Some(2),
            ..Flags::default()
        };
        let config = Config::from_flags(flags).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/kvs"));
        assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(config.shards, Some(2));
        std::fs::write(&path, "shardz = 4\n").unwrap();
        let flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        assert!(matches!(
            Config::from_flags(flags),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::from_flags(Flags {
                shards: Some(0),
                ..Flags::default()
            }),
            Err(ConfigError::Shards(0))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cluster_flags() {
        let flags = |id: Option<u64>, peer: Option<&str>, members: Option<&str>| Flags {
            node_id: id,
            peer_listen: peer.map(Into::into),
            initial_cluster: members.map(Into::into),
            ..Flags::default()
        };
        let three = "3=127.0.0.1:7103, 1=127.0.0.1:7101,2=127.0.0.1:7102";
        let config = Config::from_flags(flags(Some(2), None, Some(three))).unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.node_id, 2);
        assert_eq!(cluster.peer_listen, "127.0.0.1:7102".parse().unwrap());
        assert_eq!(
            cluster.members_text(),
            "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"
        );
        assert_eq!(config.election_timeout, Duration::from_millis(500));
        assert_eq!(config.heartbeat_interval, Duration::from_millis(50));
        assert!(!config.stale_reads);
        let stale = Flags {
            read_consistency: Some("stale".into()),
            ..Flags::default()
        };
        assert!(Config::from_flags(stale).unwrap().stale_reads);
        let wrong = Flags {
            read_consistency: Some("eventual".into()),
            ..Flags::default()
        };
        assert!(Config::from_flags(wrong).is_err());
        assert!(config.read_lease);
        let lease = |value: &str| {
            Config::from_flags(Flags {
                read_lease: Some(value.into()),
                ..Flags::default()
            })
        };
        assert!(!lease("off").unwrap().read_lease);
        assert!(lease("on").unwrap().read_lease);
        assert!(lease("maybe").is_err());
        let refused = [
            flags(None, None, Some(three)),
            flags(Some(4), None, Some(three)),
            flags(Some(1), None, Some("1=127.0.0.1:1,2=127.0.0.1:2")),
            flags(
                Some(1),
                None,
                Some("1=127.0.0.1:1,1=127.0.0.1:2,3=127.0.0.1:3"),
            ),
            flags(
                Some(1),
                None,
                Some("1=127.0.0.1:1,2=127.0.0.1:1,3=127.0.0.1:3"),
            ),
            flags(
                Some(1),
                None,
                Some("1=localhost:1,2=127.0.0.1:2,3=127.0.0.1:3"),
            ),
            flags(
                Some(1),
                None,
                Some("0=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3"),
            ),
            flags(Some(1), Some("127.0.0.1:7101"), None),
        ];
        for flags in refused {
            let text = format!("{flags:?}");
            assert!(Config::from_flags(flags).is_err(), "{text}");
        }
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("20"), Some(Duration::from_millis(20)));
        assert_eq!(parse_duration("0ms"), None);
        assert_eq!(parse_duration("soon"), None);
        assert!(Config::from_flags(Flags {
            heartbeat_interval: Some("400ms".into()),
            ..Flags::default()
        })
        .is_err());
    }
}
