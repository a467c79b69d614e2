//! Where a document lives: the shard its collection and `_id` hash to, the shards a filter
//! must ask, and the `_id` given to a document that comes without one. Writes and reads find
//! a document on the same shard because both place it here.

use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

use kvs_core::doc::index_key;
use kvs_core::doc::query::{Cond, Filter};
use kvs_core::doc::value::Value;
use kvs_wire::key_hash;

use crate::route::CoreContext;

/// The shard a document with this `_id` lives on: a hash of the collection and the
/// `_id`'s key. FNV-1a alone keeps the parity of the bytes' low bits, and the keys of
/// small integers share theirs, so every one of them would land on one shard of two: the
/// hash is mixed (MurmurHash3's finaliser) before it picks.
pub(super) fn shard_of(ctx: &CoreContext, coll: &str, id: &Value) -> u32 {
    shard_for_doc(coll, id, ctx.shard_count)
}

fn shard_for_doc(coll: &str, id: &Value, shard_count: u32) -> u32 {
    let mut key = coll.as_bytes().to_vec();
    key.push(0);
    index_key::encode(id, &mut key);
    let mut h = key_hash(&key);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(shard_count)) as u32
}

/// The one `_id` a filter pins, if it pins one (a top-level equality on a value).
pub(super) fn pinned_id(filter: &Filter) -> Option<Value> {
    match filter {
        // (An array never equals an `_id`, which cannot be one: such a filter pins nothing.)
        Filter::Field { path, cond } if path.len() == 1 && path[0] == "_id" => match cond {
            Cond::Eq(v) if !matches!(v, Value::Array(_)) => Some(v.clone()),
            Cond::Every(conds) => conds.iter().find_map(|c| match c {
                Cond::Eq(v) if !matches!(v, Value::Array(_)) => Some(v.clone()),
                _ => None,
            }),
            _ => None,
        },
        Filter::And(parts) => parts.iter().find_map(pinned_id),
        _ => None,
    }
}

pub(super) fn targets(ctx: &CoreContext, coll: &str, filter: &Filter) -> Vec<u32> {
    match pinned_id(filter) {
        Some(id) => vec![shard_of(ctx, coll, &id)],
        None => (0..ctx.shard_count).collect(),
    }
}

/// A new `_id`: 12 bytes as 24 hex digits, like a MongoDB ObjectId (seconds since the
/// epoch, a per-process random part, a counter), so generated ids sort by creation time.
pub(super) fn new_id() -> Value {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let process = *PROCESS.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
        if random.is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = (nanos ^ u64::from(std::process::id()) << 32).to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    });
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    let count = COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
    Value::String(format!(
        "{seconds:08x}{:010x}{:06x}",
        process & 0xff_ffff_ffff,
        count & 0xff_ffff
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_and_ordered_by_time() {
        let ids: Vec<Value> = (0..1000).map(|_| new_id()).collect();
        let mut set = std::collections::HashSet::new();
        for id in &ids {
            let Value::String(s) = id else { panic!() };
            assert_eq!(s.len(), 24);
            assert!(set.insert(s.clone()));
        }
        // Seconds lead, then the process, then a counter: ids made one after another in a
        // process sort in the order they were made.
        for pair in ids.windows(2) {
            let (Value::String(a), Value::String(b)) = (&pair[0], &pair[1]) else {
                panic!("ids are strings")
            };
            assert!(a < b, "{a} was made before {b} but sorts after it");
            assert!(a[..8] <= b[..8], "the time prefix never goes back");
        }
    }

    #[test]
    fn documents_spread_evenly_over_shards() {
        for shards in [2u32, 3, 4] {
            let mut counts = vec![0u32; shards as usize];
            for i in 0..10_000 {
                counts[shard_for_doc("c", &Value::Int(i), shards) as usize] += 1;
            }
            let even = 10_000 / shards;
            for count in &counts {
                assert!(
                    count.abs_diff(even) < even / 10,
                    "{shards} shards: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn a_filter_pins_a_shard_only_by_a_scalar_id_equality() {
        let parse = |t: &str| Filter::parse(&Value::from_json(t).unwrap()).unwrap();
        assert!(pinned_id(&parse(r#"{"_id": 5}"#)).is_some());
        assert!(pinned_id(&parse(r#"{"_id": 5, "a": 1}"#)).is_some());
        assert!(pinned_id(&parse(r#"{"_id": {"$eq": "x"}}"#)).is_some());
        assert!(pinned_id(&parse(r#"{"_id": {"$gt": 5}}"#)).is_none());
        assert!(pinned_id(&parse(r#"{"_id": [5]}"#)).is_none());
        assert!(pinned_id(&parse(r#"{"$or": [{"_id": 5}, {"_id": 6}]}"#)).is_none());
    }
}
