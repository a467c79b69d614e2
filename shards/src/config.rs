//! kvsd's configuration: defaults, a TOML file, and flags, in rising order of precedence.
//! The file uses the flags' names with underscores (`data_dir = "..."`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// Directory for the node's data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address for the native protocol.
    #[arg(long)]
    pub listen: Option<String>,
    /// Number of shards (one pinned executor each); fixed when the data directory is created.
    #[arg(long)]
    pub shards: Option<u32>,
    /// Address for the Redis protocol (RESP2) listener; off unless given.
    #[arg(long)]
    pub resp_listen: Option<String>,
    /// TOML file with any of the settings above.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter directive.
    #[arg(long)]
    pub log_level: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    shards: Option<u32>,
    resp_listen: Option<String>,
    log_level: Option<String>,
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
        Ok(Config {
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
