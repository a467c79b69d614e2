//! The Prometheus text a scrape of `/metrics` returns: every core's figures (`metrics`)
//! summed, each shard's last published `ShardInfo`, the node's connections and data
//! directory's disk, and the process's memory, CPU and files. Encoded in the Prometheus text
//! format 0.0.4 by the `prometheus` crate (TiKV's; `prometheus-client` writes OpenMetrics,
//! whose counter HELP lines `promtool check metrics` rejects). docs/operations.md lists the
//! metrics.

use crate::metrics::{
    error_label, NodeMetrics, Protocol, ERROR_LABELS, LATENCY_BUCKETS_MICROS, NATIVE_COMMANDS,
    PROTOCOLS, RESP_COMMANDS,
};
use crate::shard_ops::ShardInfo;
use prometheus::proto::{self, MetricFamily, MetricType};
use std::sync::Arc;

/// Adding a family cannot fail; the type keeps the families' code short.
type Error = std::convert::Infallible;

type Labels = Vec<(&'static str, String)>;

/// Everything one scrape reports, gathered before encoding.
#[derive(Debug)]
pub struct Scrape {
    pub metrics: Arc<NodeMetrics>,
    /// Per shard: its last published figures, and whether they are from before this scrape
    /// (its loop did not answer in time).
    pub shards: Vec<(Option<ShardInfo>, bool)>,
    pub connections: u64,
    pub process: ProcessFigures,
    /// The data directory's filesystem: (bytes free to kvsd, bytes in all).
    pub disk: Option<(u64, u64)>,
}

/// The process's own figures, from /proc.
#[derive(Debug, Default)]
pub struct ProcessFigures {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
}

impl ProcessFigures {
    /// Reads /proc/self; a figure it cannot read is left 0.
    pub fn read() -> ProcessFigures {
        let mut figures = ProcessFigures::default();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may hold spaces.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
                let (utime, stime) = (field(14).unwrap_or(0), field(15).unwrap_or(0));
                figures.cpu_seconds = (utime + stime) as f64 / ticks;
                figures.threads = field(20).unwrap_or(0);
                figures.virtual_bytes = field(23).unwrap_or(0);
                figures.resident_bytes = field(24).unwrap_or(0) * page;
                if let (Some(start), Some(boot)) = (field(22), boot_time_seconds()) {
                    figures.start_time_seconds = boot + start as f64 / ticks;
                }
            }
        }
        figures.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit for the call to fill.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            figures.max_fds = limit.rlim_cur;
        }
        figures
    }
}

/// When the machine booted, in seconds since the Unix epoch: the realtime clock less the
/// boot-time clock (not /proc/stat, which a hardened unit hides with `ProcSubset=pid`).
fn boot_time_seconds() -> Option<f64> {
    let seconds = |clock| {
        let mut time = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `time` is valid for the call to fill.
        (unsafe { libc::clock_gettime(clock, &mut time) } == 0)
            .then(|| time.tv_sec as f64 + time.tv_nsec as f64 / 1e9)
    };
    Some(seconds(libc::CLOCK_REALTIME)? - seconds(libc::CLOCK_BOOTTIME)?)
}

/// Bytes free to an unprivileged writer and bytes in all on the filesystem holding `path`.
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: zeroed statvfs is a valid value for the call to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is valid for writes.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_bavail as u64 * block, stat.f_blocks as u64 * block))
}

impl Scrape {
    /// The Prometheus text exposition of this scrape.
    pub fn encode(self) -> String {
        let mut family = Family {
            families: Vec::new(),
        };
        let Ok(()) = self.encode_requests(&mut family);
        let Ok(()) = self.encode_shards(&mut family);
        let Ok(()) = self.encode_node(&mut family);
        prometheus::TextEncoder::new()
            .encode_to_string(&family.families)
            .expect("families built here are well formed")
    }
}

/// The metric families of a scrape, added one at a time: a descriptor and its samples.
struct Family {
    families: Vec<MetricFamily>,
}

fn metric(labels: &Labels) -> proto::Metric {
    let mut metric = proto::Metric::default();
    metric.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name((*name).into());
                pair.set_value(value.clone());
                pair
            })
            .collect(),
    );
    metric
}

impl Family {
    /// Adds a family; one without samples is left out (the text format has no empty ones).
    fn add(&mut self, name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) {
        if metrics.is_empty() {
            return;
        }
        let mut family = MetricFamily::default();
        family.set_name(name.into());
        family.set_help(help.into());
        family.set_field_type(kind);
        family.set_metric(metrics);
        self.families.push(family);
    }

    /// Counters; `name` without the `_total` the exposition gives it.
    fn counters(&mut self, name: &str, help: &str, samples: &[(Labels, u64)]) -> Result<(), Error> {
        let samples: Vec<_> = samples
            .iter()
            .map(|(l, v)| (l.clone(), *v as f64))
            .collect();
        self.counters_f64(name, help, &samples)
    }

    fn counters_f64(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Labels, f64)],
    ) -> Result<(), Error> {
        let metrics = samples
            .iter()
            .map(|(labels, value)| {
                let mut counter = proto::Counter::default();
                counter.set_value(*value);
                let mut metric = metric(labels);
                metric.set_counter(counter);
                metric
            })
            .collect();
        self.add(&format!("{name}_total"), help, MetricType::COUNTER, metrics);
        Ok(())
    }

    fn gauges(&mut self, name: &str, help: &str, samples: &[(Labels, f64)]) -> Result<(), Error> {
        let metrics = samples
            .iter()
            .map(|(labels, value)| {
                let mut gauge = proto::Gauge::default();
                gauge.set_value(*value);
                let mut metric = metric(labels);
                metric.set_gauge(gauge);
                metric
            })
            .collect();
        self.add(name, help, MetricType::GAUGE, metrics);
        Ok(())
    }

    /// Histograms of durations, from buckets of microseconds (not cumulative) and sums.
    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Labels, [u64; LATENCY_BUCKETS_MICROS.len() + 1], u64)],
    ) -> Result<(), Error> {
        let metrics = samples
            .iter()
            .map(|(labels, buckets, sum_micros)| {
                let mut cumulative = 0;
                // The +Inf bucket is implied by the count.
                let bounds = LATENCY_BUCKETS_MICROS
                    .iter()
                    .zip(buckets.iter())
                    .map(|(&micros, &count)| {
                        cumulative += count;
                        let mut bucket = proto::Bucket::default();
                        bucket.set_upper_bound(micros as f64 / 1e6);
                        bucket.set_cumulative_count(cumulative);
                        bucket
                    })
                    .collect();
                let mut histogram = proto::Histogram::default();
                histogram.set_bucket(bounds);
                histogram.set_sample_count(buckets.iter().sum());
                histogram.set_sample_sum(*sum_micros as f64 / 1e6);
                let mut metric = metric(labels);
                metric.set_histogram(histogram);
                metric
            })
            .collect();
        self.add(name, help, MetricType::HISTOGRAM, metrics);
        Ok(())
    }
}

impl Scrape {
    fn encode_requests(&self, family: &mut Family) -> Result<(), Error> {
        let cores = &self.metrics.cores;
        let mut requests = Vec::new();
        let mut errors = Vec::new();
        let mut latency = Vec::new();
        for (protocol, protocol_name) in PROTOCOLS {
            let names: &[&str] = match protocol {
                Protocol::Native => &NATIVE_COMMANDS,
                Protocol::Resp => &RESP_COMMANDS,
            };
            for (command, name) in names.iter().enumerate() {
                let labels = || -> Labels {
                    vec![
                        ("protocol", protocol_name.into()),
                        ("command", (*name).into()),
                    ]
                };
                let count: u64 = cores
                    .iter()
                    .map(|c| c.protocol(protocol).requests[command].get())
                    .sum();
                if count == 0 {
                    continue;
                }
                requests.push((labels(), count));
                let mut buckets = [0; LATENCY_BUCKETS_MICROS.len() + 1];
                let mut sum = 0;
                for core in cores {
                    sum += core.protocol(protocol).latency[command].add_into(&mut buckets);
                }
                latency.push((labels(), buckets, sum));
                for slot in 0..ERROR_LABELS {
                    let failed: u64 = cores
                        .iter()
                        .map(|c| c.protocol(protocol).errors[command * ERROR_LABELS + slot].get())
                        .sum();
                    if failed > 0 {
                        let mut labels = labels();
                        labels.push(("code", error_label(slot).into()));
                        errors.push((labels, failed));
                    }
                }
            }
        }
        family.counters(
            "kvs_requests",
            "Requests answered, by protocol and command.",
            &requests,
        )?;
        family.counters(
            "kvs_request_errors",
            "Requests answered with an error, by protocol, command and error code.",
            &errors,
        )?;
        family.histograms(
            "kvs_request_duration_seconds",
            "Time from the executor round that read a request to the round that queued its reply.",
            &latency,
        )
    }

    fn encode_shards(&self, family: &mut Family) -> Result<(), Error> {
        let shard_label = |shard: usize| -> Labels { vec![("shard", shard.to_string())] };
        let cores = &self.metrics.cores;
        let per_core = |f: &dyn Fn(&crate::metrics::CoreMetrics) -> u64| -> Vec<(Labels, u64)> {
            cores.iter().map(|c| (shard_label(c.core), f(c))).collect()
        };
        let syncs: Vec<_> = cores
            .iter()
            .map(|c| {
                let mut buckets = [0; LATENCY_BUCKETS_MICROS.len() + 1];
                let sum = c.log_sync.add_into(&mut buckets);
                (shard_label(c.core), buckets, sum)
            })
            .collect();
        family.histograms(
            "kvs_log_sync_duration_seconds",
            "Each commit group's log write and fdatasync, per shard.",
            &syncs,
        )?;
        let seconds: Vec<_> = cores
            .iter()
            .map(|c| (shard_label(c.core), c.checkpoint_micros.get() as f64 / 1e6))
            .collect();
        family.counters_f64(
            "kvs_checkpoint_duration_seconds",
            "Seconds spent writing checkpoints (paced by --checkpoint-rate).",
            &seconds,
        )?;
        family.counters(
            "kvs_checkpoint_bytes",
            "Bytes of pages checkpoints wrote.",
            &per_core(&|c| c.checkpoint_bytes.get()),
        )?;
        family.counters(
            "kvs_page_writes",
            "Pages checkpoints wrote to the shard's page file.",
            &per_core(&|c| c.page_writes.get()),
        )?;
        family.counters(
            "kvs_raft_leader_changes",
            "Times the shard's group leader changed or became unknown, as this node saw it.",
            &per_core(&|c| c.leader_changes.get()),
        )?;
        let stale: Vec<(Labels, f64)> = self
            .shards
            .iter()
            .enumerate()
            .map(|(shard, (_, stale))| (shard_label(shard), f64::from(u8::from(*stale))))
            .collect();
        family.gauges(
            "kvs_shard_info_stale",
            "1 when the shard's loop did not publish its figures for this scrape within a second (a busy or stuck core); its other figures are then older.",
            &stale,
        )?;
        let infos: Vec<(usize, &ShardInfo)> = self
            .shards
            .iter()
            .enumerate()
            .filter_map(|(shard, (info, _))| info.as_ref().map(|info| (shard, info)))
            .collect();
        let counter = |family: &mut Family, name, help, f: fn(&ShardInfo) -> u64| {
            let samples: Vec<_> = infos.iter().map(|(s, i)| (shard_label(*s), f(i))).collect();
            family.counters(name, help, &samples)
        };
        let gauge = |family: &mut Family, name, help, f: fn(&ShardInfo) -> f64| {
            let samples: Vec<_> = infos.iter().map(|(s, i)| (shard_label(*s), f(i))).collect();
            family.gauges(name, help, &samples)
        };
        counter(
            family,
            "kvs_log_writes",
            "Records (client writes and Raft entries) written to the shard's log.",
            |i| i.log_records_written,
        )?;
        counter(
            family,
            "kvs_log_groups",
            "Commit groups written to the shard's log.",
            |i| i.log_groups_written,
        )?;
        counter(
            family,
            "kvs_log_syncs",
            "fdatasyncs of the shard's log.",
            |i| i.log_syncs,
        )?;
        gauge(
            family,
            "kvs_log_bytes",
            "Bytes of log segments the shard holds on disk.",
            |i| i.log_size_bytes as f64,
        )?;
        gauge(
            family,
            "kvs_log_segments",
            "Log segments the shard holds on disk.",
            |i| i.log_segments as f64,
        )?;
        counter(
            family,
            "kvs_writes_applied",
            "Writes applied to the shard's store.",
            |i| i.writes_applied,
        )?;
        counter(
            family,
            "kvs_checkpoints",
            "Checkpoints the shard wrote.",
            |i| i.checkpoints,
        )?;
        gauge(
            family,
            "kvs_checkpoint_index",
            "The log index the shard's newest checkpoint reflects.",
            |i| i.checkpoint_index as f64,
        )?;
        gauge(
            family,
            "kvs_snapshots_open",
            "Snapshot reads open on the shard (ADR 0023).",
            |i| i.snapshots_open as f64,
        )?;
        gauge(
            family,
            "kvs_mvcc_versions_kept",
            "Old versions the shard keeps for open snapshots.",
            |i| i.versions_kept as f64,
        )?;
        gauge(
            family,
            "kvs_mvcc_version_bytes",
            "Bytes of the old versions the shard keeps for open snapshots.",
            |i| i.version_bytes as f64,
        )?;
        counter(
            family,
            "kvs_buffer_pool_hits",
            "Page lookups the shard's buffer pool answered.",
            |i| i.pool_hits,
        )?;
        counter(
            family,
            "kvs_buffer_pool_misses",
            "Page lookups that missed the shard's buffer pool.",
            |i| i.pool_misses,
        )?;
        counter(
            family,
            "kvs_buffer_pool_evictions",
            "Pages evicted from the shard's buffer pool.",
            |i| i.evictions,
        )?;
        gauge(
            family,
            "kvs_buffer_pool_pages",
            "Pages in the shard's buffer pool.",
            |i| i.cache_pages as f64,
        )?;
        gauge(
            family,
            "kvs_buffer_pool_capacity_pages",
            "Pages the shard's buffer pool may hold (its memory budget over what a page costs).",
            |i| i.cache_capacity_pages as f64,
        )?;
        gauge(
            family,
            "kvs_buffer_pool_memory_bytes",
            "What the shard's resident pages take in memory, as last measured.",
            |i| i.cache_memory_bytes as f64,
        )?;
        gauge(
            family,
            "kvs_buffer_pool_dirty_pages",
            "Changed pages not yet checkpointed.",
            |i| i.dirty_pages as f64,
        )?;
        counter(
            family,
            "kvs_page_reads",
            "Pages read from the shard's page file.",
            |i| i.page_reads,
        )?;
        counter(
            family,
            "kvs_hot_cache_hits",
            "Point reads the hot-key cache answered.",
            |i| i.hot_cache_hits,
        )?;
        counter(
            family,
            "kvs_hot_cache_misses",
            "Point reads the hot-key cache did not answer.",
            |i| i.hot_cache_misses,
        )?;
        gauge(
            family,
            "kvs_page_file_pages",
            "Pages in the shard's page file.",
            |i| i.page_file_pages as f64,
        )?;
        gauge(
            family,
            "kvs_keys",
            "Key-value pairs in the shard (documents not counted).",
            |i| i.keys as f64,
        )?;
        let documents: Vec<_> = infos
            .iter()
            .filter_map(|(s, i)| Some((shard_label(*s), i.documents? as f64)))
            .collect();
        family.gauges(
            "kvs_documents",
            "Documents in the shard (all collections).",
            &documents,
        )?;
        gauge(
            family,
            "kvs_shard_failed",
            "1 when the shard stopped taking writes after a disk error (read-only); see the log.",
            |i| f64::from(u8::from(i.failed.is_some())),
        )?;
        gauge(family, "kvs_raft_term", "The shard's Raft term.", |i| {
            i.term as f64
        })?;
        gauge(
            family,
            "kvs_raft_last_index",
            "The last index in the shard's log.",
            |i| i.last_index as f64,
        )?;
        gauge(
            family,
            "kvs_raft_commit_index",
            "The shard's commit index.",
            |i| i.commit_index as f64,
        )?;
        gauge(
            family,
            "kvs_raft_applied_index",
            "The shard's applied index.",
            |i| i.applied_index as f64,
        )?;
        gauge(
            family,
            "kvs_raft_is_leader",
            "1 when this node leads the shard's group (always on a single node).",
            |i| f64::from(u8::from(i.leader)),
        )?;
        gauge(
            family,
            "kvs_raft_has_leader",
            "1 when this node knows a leader of the shard's group.",
            |i| {
                f64::from(u8::from(
                    i.cluster.as_ref().is_none_or(|c| c.leader.is_some()),
                ))
            },
        )?;
        counter(
            family,
            "kvs_raft_snapshots_sent",
            "Snapshots the shard sent whole to followers.",
            |i| i.cluster.as_ref().map_or(0, |c| c.snapshots_sent),
        )?;
        counter(
            family,
            "kvs_raft_snapshots_installed",
            "Snapshots the shard installed from a leader.",
            |i| i.cluster.as_ref().map_or(0, |c| c.snapshots_installed),
        )?;
        counter(
            family,
            "kvs_forwarded_requests",
            "Requests the shard forwarded to its leader on another node.",
            |i| i.cluster.as_ref().map_or(0, |c| c.forwarded),
        )?;
        counter(
            family,
            "kvs_reads_by_lease",
            "Linearizable reads answered from the leader lease.",
            |i| i.cluster.as_ref().map_or(0, |c| c.reads_by_lease),
        )?;
        let mut lag = Vec::new();
        for (shard, info) in &infos {
            let Some(cluster) = info.cluster.as_ref().filter(|_| info.leader) else {
                continue;
            };
            for replica in cluster
                .replicas
                .iter()
                .filter(|r| r.node != cluster.node_id)
            {
                let labels = vec![
                    ("shard", shard.to_string()),
                    ("follower", replica.node.to_string()),
                ];
                // A follower the leader has no progress for yet lacks everything.
                let matched = replica.match_index.unwrap_or(0);
                lag.push((labels, info.last_index.saturating_sub(matched) as f64));
            }
        }
        family.gauges(
            "kvs_raft_follower_lag_entries",
            "On the shard's leader: log entries each follower lacks.",
            &lag,
        )
    }

    fn encode_node(&self, family: &mut Family) -> Result<(), Error> {
        let none = || -> Labels { Vec::new() };
        family.gauges(
            "kvs_connections",
            "Open client connections, both protocols.",
            &[(none(), self.connections as f64)],
        )?;
        if let Some((free, total)) = self.disk {
            family.gauges(
                "kvs_data_dir_free_bytes",
                "Bytes free on the data directory's filesystem.",
                &[(none(), free as f64)],
            )?;
            family.gauges(
                "kvs_data_dir_size_bytes",
                "Size of the data directory's filesystem.",
                &[(none(), total as f64)],
            )?;
        }
        let p = &self.process;
        family.counters_f64(
            "process_cpu_seconds",
            "User and system CPU time spent in seconds.",
            &[(none(), p.cpu_seconds)],
        )?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                p.threads as f64,
            ),
        ] {
            family.gauges(name, help, &[(none(), value)])?;
        }
        Ok(())
    }
}
