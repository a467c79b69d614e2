//! The data directory: what it must hold, what start-up checks before anything is served,
//! and `kvsd --verify`.
//!
//! ```text
//! DATA_DIR/NODE                    "format 1" and "shards N" (and, for a node of a cluster,
//!                                  "cluster ID", "node ID", "members ID=ADDR,..."): written
//!                                  last when the directory is created, so its presence
//!                                  means every shard directory was
//! DATA_DIR/LOCK                    flock'ed by the running kvsd, so two never share a directory
//! DATA_DIR/shard-NNN/              one per shard, N of them:
//!     NNNNNNNNNNNNNNNNNNNN.log     log segments, named by their first commit group
//!     log.manifest                 the segments the log holds (core/src/log/manifest.rs)
//!     pages.db                     the page file and its checkpoints
//!     pages.snap                   a snapshot being received from a leader (ADR 0017);
//!                                  renamed over pages.db once whole, removed at start-up
//! ```
//!
//! A node refuses to start, naming the missing or damaged piece and what would be lost,
//! whenever acknowledged data could be missing: a shard directory gone, NODE gone while shard
//! directories hold data, a shard directory NODE does not count, a log segment missing or cut
//! short (the log's manifest), a log without segments beside a checkpoint. Only a torn tail
//! after the last fdatasync (a write never acknowledged) is cut silently, with a log line.
//! See docs/operations.md, "When kvsd reports damage", and ADR 0013.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use kvs_core::log::format::RecordKind;
use kvs_core::log::{Log, LogError, Recovered};

use crate::config::{members_text, parse_members, ClusterConfig};
use crate::log_io::DmaDisk;

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// An open data directory: its shard count, the cluster it belongs to, and its lock, held
/// for as long as this lives.
pub struct DataDir {
    pub path: PathBuf,
    pub shards: u32,
    /// None for a node of one.
    pub cluster: Option<ClusterIdentity>,
    _lock: File,
}

/// The cluster a data directory belongs to, fixed when it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub cluster_id: u64,
    pub node_id: u64,
    pub members: Vec<(u64, std::net::SocketAddr)>,
}

/// A cluster's id: FNV-1a-64 of its initial member list, so that nodes given the same
/// `--initial-cluster` agree on it without talking (etcd derives its cluster id from the
/// initial members in the same way).
pub fn cluster_id_of(members: &[(u64, std::net::SocketAddr)]) -> u64 {
    kvs_wire::key_hash(members_text(members).as_bytes()).max(1)
}

/// What NODE records.
struct NodeFile {
    shards: u32,
    cluster: Option<ClusterIdentity>,
}

impl DataDir {
    /// Opens the data directory for a node, creating it when new with `requested` shards (or
    /// one per allowed CPU) and, for a node of a cluster, the cluster's identity. Refuses a
    /// directory whose pieces do not add up, one of another cluster or node, and a single
    /// node's directory asked to join a cluster.
    pub fn open(
        path: &Path,
        requested: Option<u32>,
        cluster: Option<&ClusterConfig>,
    ) -> anyhow::Result<DataDir> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create data directory {}", path.display()))?;
        let lock = lock(path)?;
        let (shards, identity) = match read_node(path)? {
            Some(NodeFile {
                shards,
                cluster: recorded,
            }) => {
                check_identity(path, recorded.as_ref(), cluster)?;
                if let Some(requested) = requested.filter(|&n| n != shards) {
                    bail!(
                        "data directory {} was created with {shards} shards; it cannot be opened \
                         with {requested} (a key's shard depends on the count; to change it, dump \
                         and load: docs/operations.md)",
                        path.display()
                    );
                }
                check_shard_dirs(path, shards)?;
                (shards, recorded)
            }
            None => {
                let shards = requested.unwrap_or_else(|| allowed_cpus().len().max(1) as u32);
                let identity = cluster.map(|c| ClusterIdentity {
                    cluster_id: cluster_id_of(&c.members),
                    node_id: c.node_id,
                    members: c.members.clone(),
                });
                create(path, shards, identity.as_ref())?;
                (shards, identity)
            }
        };
        Ok(DataDir {
            path: path.to_path_buf(),
            shards,
            cluster: identity,
            _lock: lock,
        })
    }

    pub fn shard_dir(&self, shard: u32) -> PathBuf {
        shard_dir(&self.path, shard)
    }
}

/// Whether a directory that exists may start with the flags given: a cluster's directory
/// keeps its identity (a different `--initial-cluster` is ignored, with a log line; a
/// different `--node-id` is refused), and a single node's directory does not join a cluster.
fn check_identity(
    path: &Path,
    recorded: Option<&ClusterIdentity>,
    asked: Option<&ClusterConfig>,
) -> anyhow::Result<()> {
    match (recorded, asked) {
        (None, None) => Ok(()),
        (None, Some(_)) => bail!(
            "data directory {} holds a single node's data; it cannot join a cluster (its log \
             was written by a group of one). Start the cluster on empty data directories and \
             move the data with `kvs dump` and `kvs load` (docs/cluster.md)",
            path.display()
        ),
        (Some(recorded), None) => {
            tracing::info!(
                node_id = recorded.node_id,
                members = %members_text(&recorded.members),
                "data directory belongs to a cluster: starting as its member"
            );
            Ok(())
        }
        (Some(recorded), Some(asked)) => {
            if asked.node_id != recorded.node_id {
                bail!(
                    "data directory {} belongs to node {} of cluster {:016x}, not node {}: \
                     check --node-id and --data-dir",
                    path.display(),
                    recorded.node_id,
                    recorded.cluster_id,
                    asked.node_id
                );
            }
            if asked.members != recorded.members {
                tracing::warn!(
                    given = %asked.members_text(),
                    recorded = %members_text(&recorded.members),
                    "--initial-cluster ignored: the data directory already belongs to a cluster"
                );
            }
            Ok(())
        }
    }
}

pub(crate) fn shard_dir(path: &Path, shard: u32) -> PathBuf {
    path.join(format!("shard-{shard:03}"))
}

fn lock(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("LOCK");
    let file = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        bail!("data directory {} is in use by another kvsd", dir.display());
    }
    Ok(file)
}

/// What NODE records, or None when there is no NODE and no shard directory holds anything
/// (a new directory, or one whose creation a crash cut short before NODE).
fn read_node(dir: &Path) -> anyhow::Result<Option<NodeFile>> {
    let path = dir.join("NODE");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let with_data: Vec<String> = shard_dirs(dir)?
                .into_iter()
                .filter(|(_, p)| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()))
                .map(|(_, p)| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            if !with_data.is_empty() {
                bail!(
                    "{} is missing, but the data directory holds shard directories with data ({}): \
                     the shard count they were written with is unknown, and guessing it wrong \
                     would hide keys. If the directory had {} shards, restore NODE with the two \
                     lines `format 1` and `shards {}` (docs/operations.md, \"When kvsd reports \
                     damage\")",
                    path.display(),
                    with_data.join(", "),
                    with_data.len(),
                    with_data.len()
                );
            }
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut format = None;
    let mut shards = None;
    let (mut cluster_id, mut node_id, mut members) = (None, None, None);
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("format", v)) => format = v.trim().parse::<u32>().ok(),
            Some(("shards", v)) => shards = v.trim().parse::<u32>().ok(),
            Some(("cluster", v)) => cluster_id = Some(u64::from_str_radix(v.trim(), 16).ok()),
            Some(("node", v)) => node_id = Some(v.trim().parse::<u64>().ok()),
            Some(("members", v)) => members = Some(parse_members(v.trim()).ok()),
            _ => {}
        }
    }
    if format != Some(1) {
        bail!(
            "{}: unknown data format (this kvsd reads format 1)",
            path.display()
        );
    }
    let Some(shards) = shards.filter(|&n| n > 0) else {
        bail!("{}: no valid shard count", path.display());
    };
    let cluster = match (cluster_id, node_id, members) {
        (None, None, None) => None,
        (Some(Some(cluster_id)), Some(Some(node_id)), Some(Some(members)))
            if members.iter().any(|&(id, _)| id == node_id) =>
        {
            Some(ClusterIdentity {
                cluster_id,
                node_id,
                members,
            })
        }
        _ => bail!(
            "{}: the cluster, node and members lines are incomplete or malformed",
            path.display()
        ),
    };
    Ok(Some(NodeFile { shards, cluster }))
}

/// The `shard-NNN` directories in `dir`, by shard number.
fn shard_dirs(dir: &Path) -> anyhow::Result<Vec<(u32, PathBuf)>> {
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_prefix("shard-")) else {
            continue;
        };
        if let Ok(shard) = number.parse::<u32>() {
            found.push((shard, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Every shard directory NODE counts is there, and no other.
fn check_shard_dirs(dir: &Path, shards: u32) -> anyhow::Result<()> {
    let found = shard_dirs(dir)?;
    for shard in 0..shards {
        if !found.iter().any(|(s, _)| *s == shard) {
            bail!(
                "{} is missing: NODE says this data directory has {shards} shards, so every key \
                 of shard {shard} (about 1/{shards} of all keys) would be lost. Restore the \
                 directory from a backup (docs/operations.md, \"When kvsd reports damage\")",
                shard_dir(dir, shard).display()
            );
        }
    }
    if let Some((_, extra)) = found.iter().find(|(s, _)| *s >= shards) {
        bail!(
            "{} is not a shard of this data directory (NODE says {shards} shards): it may be \
             another node's; move it away before starting",
            extra.display()
        );
    }
    Ok(())
}

/// Creates a new data directory's shard directories, then NODE (written whole and synced,
/// last: a directory with NODE has all its shard directories).
fn create(dir: &Path, shards: u32, cluster: Option<&ClusterIdentity>) -> anyhow::Result<()> {
    for shard in 0..shards {
        let path = shard_dir(dir, shard);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    let path = dir.join("NODE");
    let temporary = dir.join("NODE.tmp");
    let write = || -> std::io::Result<()> {
        let file = File::create(&temporary)?;
        let mut text = format!("format 1\nshards {shards}\n");
        if let Some(cluster) = cluster {
            text.push_str(&format!(
                "cluster {:016x}\nnode {}\nmembers {}\n",
                cluster.cluster_id,
                cluster.node_id,
                members_text(&cluster.members)
            ));
        }
        std::io::Write::write_all(&mut &file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// `kvsd --verify`: checks every shard's log (as start-up would recover it) and page file;
/// returns whether all are clean. Changes nothing, and holds the directory's lock, so it
/// never runs beside a kvsd using the directory.
pub fn verify(path: &Path) -> anyhow::Result<bool> {
    if !path.is_dir() {
        bail!("data directory {} does not exist", path.display());
    }
    let _lock = lock(path)?;
    let shards = match read_node(path) {
        Ok(Some(node)) => node.shards,
        Ok(None) => bail!("{} holds no kvs data (no NODE file)", path.display()),
        Err(problem) => {
            println!("PROBLEM: {problem:#}");
            println!("verify: problems found");
            return Ok(false);
        }
    };
    let mut clean = true;
    if let Err(problem) = check_shard_dirs(path, shards) {
        println!("PROBLEM: {problem:#}");
        clean = false;
    }
    for shard in 0..shards {
        let shard_path = shard_dir(path, shard);
        if !shard_path.is_dir() {
            continue;
        }
        let disk = DmaDisk::new(&shard_path)
            .with_context(|| format!("cannot open {}", shard_path.display()))?;
        let log = verify_log(&disk, shard);
        clean &= log.is_some();
        let report = futures_lite::future::block_on(kvs_core::store::verify::verify(&disk, shard))
            .with_context(|| format!("cannot verify shard {shard}"))?;
        match &report.checkpoint {
            None => println!("shard {shard}: {}: no checkpoint yet (nothing to check)", report.path),
            Some(meta) => println!(
                "shard {shard}: {}: checkpoint {} at log index {}: {} keys, tree height {}, {} leaf + {} inner + {} extent pages, {} free of {}",
                report.path,
                meta.seq,
                meta.applied_index,
                report.keys,
                meta.height,
                report.leaf_pages,
                report.inner_pages,
                report.extent_pages,
                report.free_pages,
                meta.page_count,
            ),
        }
        for problem in &report.problems {
            println!("shard {shard}: PROBLEM: {problem}");
        }
        clean &= report.is_clean();
        // The checks start-up makes between the two.
        let checkpoint = report.checkpoint.as_ref().map_or(0, |m| m.applied_index);
        if let Some(log) = log {
            let first_after = log
                .records
                .iter()
                .filter(|r| r.kind == RecordKind::Entry && r.index > checkpoint)
                .map(|r| r.index)
                .min();
            if log.segments == 0 && checkpoint > 0 {
                println!(
                    "shard {shard}: PROBLEM: the log is missing: the page file holds a checkpoint \
                     at entry {checkpoint}, so the log held segments"
                );
                clean = false;
            } else if let Some(first) = first_after.filter(|&first| first > checkpoint + 1) {
                println!(
                    "shard {shard}: PROBLEM: the log goes on at entry {first} but the checkpoint \
                     is at {checkpoint}: entries in between are in neither"
                );
                clean = false;
            }
        }
    }
    println!(
        "{}",
        if clean {
            "verify: clean"
        } else {
            "verify: problems found"
        }
    );
    Ok(clean)
}

/// Prints what start-up would find in one shard's log; returns it, or None (after printing
/// the problem) when start-up would refuse the log.
fn verify_log(disk: &DmaDisk, shard: u32) -> Option<Recovered> {
    match futures_lite::future::block_on(Log::verify(disk.clone(), shard)) {
        Ok(found) => {
            println!(
                "shard {shard}: log: {} segments, {} records, last entry {}",
                found.segments,
                found.records.len(),
                found.last_index
            );
            if let Some((path, offset)) = &found.truncated {
                println!(
                    "shard {shard}: log: torn tail at {path} offset {offset} (a write a crash \
                     interrupted, never acknowledged): start-up will cut it off"
                );
            }
            for path in &found.removed {
                println!(
                    "shard {shard}: log: {path} is left over from an interrupted trim or \
                     roll-over and holds no commit group: start-up will remove it"
                );
            }
            if found.manifest_created {
                println!("shard {shard}: log: no manifest (an older kvs): start-up will write one");
            }
            Some(found)
        }
        Err(error @ (LogError::Damaged { .. } | LogError::Corrupt { .. })) => {
            println!("shard {shard}: PROBLEM: {error}");
            None
        }
        Err(error) => {
            println!("shard {shard}: PROBLEM: cannot read the log: {error}");
            None
        }
    }
}
