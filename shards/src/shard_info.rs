//! INFO for one shard: what its log, store, cache and Raft group report. A child of `shard`,
//! so it sees the shard's fields.

use kvs_core::log::LogDisk;

use super::ShardCore;
use crate::shard_ops::{ReplicaInfo, ShardClusterInfo, ShardInfo};

impl<D: LogDisk + Clone, R> ShardCore<D, R> {
    pub fn info(&self) -> ShardInfo {
        let status = self.peer.status();
        let store = self.peer.store().stats();
        let history = self.peer.store().history_stats();
        ShardInfo {
            shard: self.shard,
            keys: self.peer.store().key_count(),
            documents: self.peer.store().doc_count(),
            term: status.term,
            last_index: status.last_index,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            leader: status.is_leader,
            log_size_bytes: status.log.size_bytes,
            log_segments: status.log.segments,
            log_groups_written: status.log.groups,
            log_records_written: status.log.records,
            log_syncs: status.log.syncs,
            log_synced_writes_completed: status.log.synced_writes_completed,
            log_groups_in_flight: self.peer.groups_in_flight() as u64,
            writes_applied: self.writes_applied,
            cache_pages: store.cached_pages,
            hot_cache_hits: store.hot_hits,
            hot_cache_misses: store.hot_misses,
            hinted_writes: store.hinted_writes,
            cache_capacity_pages: store.cache_capacity_pages,
            cache_memory_bytes: store.cache_memory_bytes,
            dirty_pages: store.dirty_pages,
            page_file_pages: store.page_count,
            free_pages: store.free_pages,
            page_reads: store.page_reads,
            pool_hits: store.pool_hits,
            pool_misses: store.pool_misses,
            evictions: store.evictions,
            tree_height: store.tree_height,
            checkpoints: store.checkpoints,
            checkpoint_index: store.last_checkpoint_index,
            snapshots_open: history.snapshots as u64,
            versions_kept: history.versions as u64,
            version_bytes: history.bytes as u64,
            failed: self
                .failed
                .as_ref()
                .map(|(code, message)| format!("{code}: {message}")),
            cluster: self
                .cluster_view
                .as_ref()
                .map(|(cluster_id, nodes)| ShardClusterInfo {
                    cluster_id: cluster_id.clone(),
                    node_id: self.peer.id(),
                    leader: self.peer.leader(),
                    forwarded: self.forwarded,
                    snapshots_sent: self.snapshots_sent,
                    snapshots_installed: self.peer.snapshots_installed(),
                    entries_read_back: self.peer.entries_read_back(),
                    reads_by_lease: self.peer.lease_reads(),
                    replicas: self
                        .peer
                        .replicas()
                        .into_iter()
                        .map(|(node, match_index, role)| ReplicaInfo {
                            node,
                            match_index,
                            role: role.into(),
                        })
                        .collect(),
                    nodes: nodes.clone(),
                }),
        }
    }
}
