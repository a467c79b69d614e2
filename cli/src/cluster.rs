//! `kvs cluster status`: the node's INFO turned into the cluster's picture — its id, every
//! member with where it serves and whether this node hears it, and every shard's leader,
//! term, commit index and replicas (docs/cluster.md).

use serde_json::{json, Map, Value};

/// The leader of shard `shard` in a node's INFO (None: it knows none; a node of one leads
/// every shard).
pub fn leader_of(info: &str, shard: u32) -> Option<u64> {
    let info: Value = serde_json::from_str(info).ok()?;
    let row = info
        .get("shard")?
        .as_array()?
        .iter()
        .find(|s| s.get("shard").and_then(Value::as_u64) == Some(u64::from(shard)))?;
    match row.get("cluster").filter(|c| c.is_object()) {
        Some(cluster) => cluster.get("leader").and_then(Value::as_u64),
        None => Some(1),
    }
}

/// The `cluster status` JSON for a node's INFO (`info`, as the server sent it).
pub fn status_from_info(info: &str) -> Result<String, String> {
    let info: Value =
        serde_json::from_str(info).map_err(|e| format!("the server's INFO is not JSON: {e}"))?;
    let shards = info
        .get("shard")
        .and_then(Value::as_array)
        .ok_or("the server's INFO lists no shards")?;
    let mut cluster_id = Value::Null;
    // Nodes by id: each shard's core sees them on its own links; a node is reachable when
    // any core's link to it is up, last heard at the latest any core heard it.
    let mut nodes: Vec<Map<String, Value>> = Vec::new();
    let mut shard_rows = Vec::new();
    for shard in shards {
        let number = shard.get("shard").cloned().unwrap_or(Value::Null);
        let term = shard.get("term").cloned().unwrap_or(Value::Null);
        let commit = shard.get("commit_index").cloned().unwrap_or(Value::Null);
        let Some(cluster) = shard.get("cluster").filter(|c| c.is_object()) else {
            // A node of one: it leads every shard.
            shard_rows.push(json!({
                "shard": number, "leader": 1, "term": term, "commit_index": commit,
                "replicas": [{"node": 1, "match_index": shard.get("last_index"), "role": "leader"}],
            }));
            continue;
        };
        cluster_id = cluster.get("cluster_id").cloned().unwrap_or(Value::Null);
        for node in cluster
            .get("nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = node.get("id").cloned().unwrap_or(Value::Null);
            let seen = node
                .get("reachable")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let heard = node.get("last_heard_ms").and_then(Value::as_u64);
            let sent = node.get("bytes_sent").and_then(Value::as_u64).unwrap_or(0);
            match nodes.iter_mut().find(|n| n.get("id") == Some(&id)) {
                Some(known) => {
                    if seen {
                        known.insert("reachable".into(), Value::Bool(true));
                    }
                    let before = known.get("last_heard_ms").and_then(Value::as_u64);
                    let latest = match (before, heard) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    known.insert("last_heard_ms".into(), json!(latest));
                    let total = known.get("bytes_sent").and_then(Value::as_u64).unwrap_or(0);
                    known.insert("bytes_sent".into(), json!(total + sent));
                    for field in ["addr", "resp_addr"] {
                        if known.get(field).is_none_or(Value::is_null) {
                            known
                                .insert(field.into(), node.get(field).cloned().unwrap_or_default());
                        }
                    }
                }
                None => {
                    let mut row = Map::new();
                    row.insert("id".into(), id);
                    for field in ["addr", "peer_addr", "resp_addr"] {
                        row.insert(field.into(), node.get(field).cloned().unwrap_or_default());
                    }
                    row.insert("reachable".into(), Value::Bool(seen));
                    row.insert("last_heard_ms".into(), json!(heard));
                    row.insert("bytes_sent".into(), json!(sent));
                    nodes.push(row);
                }
            }
        }
        shard_rows.push(json!({
            "shard": number,
            "leader": cluster.get("leader").cloned().unwrap_or(Value::Null),
            "term": term,
            "commit_index": commit,
            "replicas": cluster.get("replicas").cloned().unwrap_or(json!([])),
        }));
    }
    if nodes.is_empty() {
        nodes.push(Map::from_iter([
            ("id".to_string(), json!(1)),
            ("addr".to_string(), Value::Null),
            ("peer_addr".to_string(), Value::Null),
            ("resp_addr".to_string(), Value::Null),
            ("reachable".to_string(), Value::Bool(true)),
            ("last_heard_ms".to_string(), json!(0)),
            ("bytes_sent".to_string(), json!(0)),
        ]));
    }
    nodes.sort_by_key(|n| n.get("id").and_then(Value::as_u64));
    let status = json!({
        "cluster_id": cluster_id,
        "nodes": nodes,
        "shards": shard_rows,
    });
    Ok(status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_merge_across_shards_and_a_node_of_one_leads_everything() {
        let node = |id: u64, reachable: bool, heard: Option<u64>| {
            json!({"id": id, "addr": format!("127.0.0.1:700{id}"), "peer_addr": format!("127.0.0.1:710{id}"),
                   "resp_addr": null, "reachable": reachable, "last_heard_ms": heard})
        };
        let shard = |n: u64, leader: Value, nodes: Value| {
            json!({"shard": n, "term": 3, "commit_index": 9, "last_index": 9,
                   "cluster": {"cluster_id": "00ab", "node_id": 1, "leader": leader,
                               "replicas": [{"node": 1, "match_index": 9, "role": "leader"}],
                               "nodes": nodes}})
        };
        let info = json!({"shard": [
            shard(0, json!(1), json!([node(1, true, Some(0)), node(2, false, None), node(3, true, Some(40))])),
            shard(1, Value::Null, json!([node(1, true, Some(0)), node(2, true, Some(15)), node(3, true, Some(12))])),
        ]});
        let status: Value =
            serde_json::from_str(&status_from_info(&info.to_string()).unwrap()).unwrap();
        assert_eq!(status["cluster_id"], "00ab");
        assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
        assert_eq!(status["nodes"][1]["reachable"], true);
        assert_eq!(status["nodes"][1]["last_heard_ms"], 15);
        assert_eq!(status["nodes"][2]["last_heard_ms"], 12);
        assert_eq!(status["shards"][0]["leader"], 1);
        assert_eq!(status["shards"][1]["leader"], Value::Null);

        let single =
            json!({"shard": [{"shard": 0, "term": 1, "commit_index": 4, "last_index": 4}]});
        let status: Value =
            serde_json::from_str(&status_from_info(&single.to_string()).unwrap()).unwrap();
        assert_eq!(status["cluster_id"], Value::Null);
        assert_eq!(status["shards"][0]["leader"], 1);
        assert!(status_from_info("not json").is_err());
    }
}
