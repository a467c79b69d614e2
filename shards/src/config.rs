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
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    shards: Option<u32>,
    resp_listen: Option<String>,
    log_level: Option<String>,
    cache_size: Option<String>,
    checkpoint_interval: Option<u64>,
    checkpoint_log_size: Option<String>,
    checkpoint_rate: Option<String>,
}

/// The settings kvsd runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The Redis-protocol listener's address, when enabled.
    pub resp_listen: Option<SocketAddr>,
    /// `None`: one shard per available core (or what the data directory was created with).
    pub shards: Option<u32>,
    pub log_level: String,
    /// Page cache bytes for the node; `None`: a quarter of the machine's memory.
    pub cache_size: Option<u64>,
    pub checkpoint_interval: Duration,
    pub checkpoint_log_size: u64,
    pub checkpoint_rate: u64,
    pub verify: bool,
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

/// The machine's memory, from /proc/meminfo (1 GiB if it cannot be read).
fn physical_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(1 << 30)
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
    #[error("--shards must be between 1 and {SHARD_COUNT_MAX}, not {0}")]
    Shards(u32),
    #[error("bad --{0} {1:?}: expected a size such as 64MiB or 2GiB")]
    Size(&'static str, String),
}

impl Config {
    pub fn from_flags(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => Config::read_file(path)?,
            None => FileConfig::default(),
        };
        let listen_text = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7070".into());
        let listen = listen_text
            .parse()
            .map_err(|_| ConfigError::Listen(listen_text.clone()))?;
        let resp_listen = match flags.resp_listen.or(file.resp_listen) {
            Some(text) => Some(
                text.parse()
                    .map_err(|_| ConfigError::Listen(text.clone()))?,
            ),
            None => None,
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
        let checkpoint_interval = Duration::from_secs(
            flags
                .checkpoint_interval
                .or(file.checkpoint_interval)
                .unwrap_or(60)
                .max(1),
        );
        Ok(Config {
            cache_size,
            checkpoint_interval,
            checkpoint_log_size,
            checkpoint_rate,
            verify: flags.verify,
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("kvs-data")),
            listen,
            resp_listen,
            shards,
            log_level: flags
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
        })
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
            "data_dir = \"/srv/kvs\"\nlisten = \"0.0.0.0:9000\"\nshards = 4\n",
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
}
