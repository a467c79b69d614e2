//! The same queries with and without an index return the same documents.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-4i64..4).prop_map(Value::Int),
        prop_oneof![Just(-1.5), Just(0.5), Just(2.0), Just(3.5)].prop_map(Value::Double),
        prop_oneof![Just("a"), Just("b"), Just("ab"), Just("")]
            .prop_map(|s| Value::String(s.into())),
    ]
}

fn field_value() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => scalar().prop_map(Some),
        2 => prop::collection::vec(scalar(), 0..4).prop_map(|v| Some(Value::Array(v))),
        1 => scalar().prop_map(|x| Some(Value::Object(vec![("x".into(), x)]))),
        1 => prop::collection::vec(
            prop_oneof![scalar().prop_map(|x| Value::Object(vec![("x".into(), x)])), Just(Value::Object(vec![]))],
            0..3
        )
        .prop_map(|v| Some(Value::Array(v))),
        1 => Just(None),
    ]
}

fn doc() -> impl Strategy<Value = Value> {
    (field_value(), field_value()).prop_map(|(a, b)| {
        let mut fields = Vec::new();
        if let Some(a) = a {
            fields.push(("a".to_string(), a));
        }
        if let Some(b) = b {
            fields.push(("b".to_string(), b));
        }
        Value::Object(fields)
    })
}

fn condition() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        Just("$eq"),
        Just("$gt"),
        Just("$gte"),
        Just("$lt"),
        Just("$lte"),
        Just("$ne"),
        Just("$exists")
    ];
    prop_oneof![
        scalar(),
        (op, scalar()).prop_map(|(op, v)| {
            let v = if op == "$exists" {
                Value::Bool(matches!(v, Value::Bool(true)))
            } else {
                v
            };
            Value::Object(vec![(op.to_string(), v)])
        }),
        prop::collection::vec(scalar(), 1..3)
            .prop_map(|vs| Value::Object(vec![("$in".to_string(), Value::Array(vs))])),
        (scalar(), scalar()).prop_map(|(lo, hi)| Value::Object(vec![
            ("$gte".to_string(), lo),
            ("$lt".to_string(), hi)
        ])),
    ]
}

fn filter() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("a"), Just("a.x")],
        condition(),
        prop::option::of(condition()),
    )
        .prop_map(|(path, c, other)| {
            let mut fields = vec![(path.to_string(), c)];
            if let Some(o) = other {
                fields.push(("b".to_string(), o));
            }
            Value::Object(fields)
        })
}

/// Documents an index scan over `bounds` yields, filtered again.
fn through_index(docs: &[Value], index: &IndexSpec, filter: &Filter) -> Option<BTreeSet<usize>> {
    let mut entries: BTreeMap<Vec<u8>, BTreeSet<usize>> = BTreeMap::new();
    let mut multikey = false;
    for (i, d) in docs.iter().enumerate() {
        let (keys, multi) = keys_of(d, index);
        multikey |= multi;
        for k in keys {
            entries.entry(k).or_default().insert(i);
        }
    }
    let bounds = index_bounds(filter, index, multikey)?;
    let mut found = BTreeSet::new();
    for (start, end) in bounds {
        let range: Box<dyn Iterator<Item = (&Vec<u8>, &BTreeSet<usize>)>> = match end {
            Some(end) => Box::new(entries.range(start..end)),
            None => Box::new(entries.range(start..)),
        };
        for (_, ids) in range {
            found.extend(ids.iter().copied().filter(|&i| filter.matches(&docs[i])));
        }
    }
    Some(found)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn indexed_and_unindexed_queries_agree(
        docs in prop::collection::vec(doc(), 0..12),
        query in filter(),
        descending in any::<bool>(),
        compound in any::<bool>(),
    ) {
        let filter = Filter::parse(&query).unwrap();
        let path: Vec<String> = match query {
            Value::Object(ref f) => f[0].0.split('.').map(str::to_string).collect(),
            _ => unreachable!(),
        };
        let mut fields = vec![(path, descending)];
        if compound {
            fields.push((vec!["b".to_string()], !descending));
        }
        let index = IndexSpec { fields };
        let scanned: BTreeSet<usize> =
            (0..docs.len()).filter(|&i| filter.matches(&docs[i])).collect();
        if let Some(indexed) = through_index(&docs, &index, &filter) {
            prop_assert_eq!(indexed, scanned, "query {}", query);
        }
    }
}

#[test]
fn bounds_are_used_where_they_help() {
    let index = IndexSpec {
        fields: vec![(vec!["age".to_string()], false)],
    };
    let bounds = |q: &str| {
        index_bounds(
            &Filter::parse(&Value::from_json(q).unwrap()).unwrap(),
            &index,
            false,
        )
    };
    assert_eq!(bounds(r#"{"age": 5}"#).map(|b| b.len()), Some(1));
    assert_eq!(
        bounds(r#"{"age": {"$in": [1, 3, 1]}}"#).map(|b| b.len()),
        Some(2)
    );
    assert_eq!(
        bounds(r#"{"age": {"$gte": 18, "$lt": 65}}"#).map(|b| b.len()),
        Some(1)
    );
    assert_eq!(
        bounds(r#"{"age": {"$gt": 65, "$lt": 18}}"#).map(|b| b.len()),
        Some(0),
        "empty"
    );
    assert!(
        bounds(r#"{"name": "x"}"#).is_none(),
        "another field: no bounds"
    );
    assert!(bounds(r#"{"age": {"$ne": 5}}"#).is_none());
    assert!(bounds(r#"{"$or": [{"age": 1}, {"age": 2}]}"#).is_none());
}
