//! Where each shard's leader serves clients, as a cluster's INFO tells it: the table a
//! cluster-aware client sends each key by, so a request goes straight to its shard's leader
//! instead of taking a forwarding hop through another node (docs/cluster.md).
//!
//! Sans-IO: built from INFO's JSON; [`Routes::leader_for`] names the address for a key.

use serde_json::Value;

use crate::shard_for_key;

/// Each shard's leader's client address, by shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub shard_count: u32,
    /// None where the shard has no leader the node knew, or the leader's address is unknown.
    pub leaders: Vec<Option<String>>,
}

impl Routes {
    /// The routes in a node's INFO; None when the node is not one of a cluster (a single
    /// node leads every shard: nothing to route) or the JSON is not INFO.
    pub fn from_info(info: &str) -> Option<Routes> {
        let info: Value = serde_json::from_str(info).ok()?;
        let shards = info.get("shard")?.as_array()?;
        let shard_count = u32::try_from(info.get("shards")?.as_u64()?).ok()?;
        if shards.len() != shard_count as usize || shard_count == 0 {
            return None;
        }
        let mut leaders = Vec::with_capacity(shards.len());
        for shard in shards {
            let cluster = shard.get("cluster")?;
            let leader = cluster.get("leader").and_then(Value::as_u64);
            let addr = leader.and_then(|id| {
                cluster
                    .get("nodes")?
                    .as_array()?
                    .iter()
                    .find(|node| node.get("id").and_then(Value::as_u64) == Some(id))?
                    .get("addr")?
                    .as_str()
                    .map(String::from)
            });
            // A node listening on every address (0.0.0.0) advertises no address to dial.
            let addr = addr.filter(|a| {
                a.parse::<std::net::SocketAddr>()
                    .map_or(true, |sa| !sa.ip().is_unspecified())
            });
            leaders.push(addr);
        }
        Some(Routes {
            shard_count,
            leaders,
        })
    }

    /// The address of the leader of `key`'s shard, when known.
    pub fn leader_for(&self, key: &[u8]) -> Option<&str> {
        if self.shard_count == 0 {
            return None;
        }
        let shard = shard_for_key(key, self.shard_count) as usize;
        self.leaders.get(shard)?.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(leaders: &[Option<u64>]) -> String {
        let nodes = json!([
            {"id": 1, "addr": "127.0.0.1:7001"},
            {"id": 2, "addr": "127.0.0.1:7002"},
            {"id": 3, "addr": null},
        ]);
        let shards: Vec<Value> = leaders
            .iter()
            .enumerate()
            .map(|(i, leader)| json!({"shard": i, "cluster": {"leader": leader, "nodes": nodes}}))
            .collect();
        json!({"shards": leaders.len(), "shard": shards}).to_string()
    }

    #[test]
    fn keys_go_to_their_shards_leader() {
        let routes = Routes::from_info(&info(&[Some(1), Some(2), None, Some(3)])).unwrap();
        assert_eq!(routes.shard_count, 4);
        assert_eq!(
            routes.leaders,
            vec![
                Some("127.0.0.1:7001".to_string()),
                Some("127.0.0.1:7002".to_string()),
                None,
                None // node 3's address is not known yet
            ]
        );
        for key in [&b"a"[..], b"user:1", b"", b"zz"] {
            let expected = routes.leaders[shard_for_key(key, 4) as usize].as_deref();
            assert_eq!(routes.leader_for(key), expected);
        }
    }

    #[test]
    fn a_single_node_or_garbage_has_no_routes() {
        let single = json!({"shards": 1, "shard": [{"shard": 0, "leader": true}]}).to_string();
        assert_eq!(Routes::from_info(&single), None);
        assert_eq!(Routes::from_info("not json"), None);
        assert_eq!(
            Routes::from_info(&json!({"shards": 2, "shard": []}).to_string()),
            None
        );
        assert_eq!(Routes::default().leader_for(b"k"), None);
    }
}
