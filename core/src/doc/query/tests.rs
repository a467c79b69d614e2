//! Semantics tests: collections and queries from MongoDB's documentation ("Query an Array",
//! "Query an Array of Embedded Documents", "Query for Null or Missing Fields", the operator
//! pages), with the results MongoDB documents for them.

use super::*;

fn docs(text: &str) -> Vec<Value> {
    match Value::from_json(text).unwrap() {
        Value::Array(items) => items,
        _ => panic!("an array of documents"),
    }
}

/// The `_id` (or `item`) of each document the filter matches, in collection order.
fn found(collection: &[Value], filter: &str) -> Vec<String> {
    let filter = Filter::parse(&Value::from_json(filter).unwrap()).unwrap();
    collection
        .iter()
        .filter(|d| filter.matches(d))
        .map(|d| match d.get("_id").or_else(|| d.get("item")) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "?".into(),
        })
        .collect()
}

fn error(filter: &str) -> String {
    Filter::parse(&Value::from_json(filter).unwrap())
        .expect_err("the filter is refused")
        .to_string()
}

const ARRAYS: &str = r#"[
  {"item": "journal", "qty": 25, "tags": ["blank", "red"], "dim_cm": [14, 21]},
  {"item": "notebook", "qty": 50, "tags": ["red", "blank"], "dim_cm": [14, 21]},
  {"item": "paper", "qty": 100, "tags": ["red", "blank", "plain"], "dim_cm": [14, 21]},
  {"item": "planner", "qty": 75, "tags": ["blank", "red"], "dim_cm": [22.85, 30]},
  {"item": "postcard", "qty": 45, "tags": ["blue"], "dim_cm": [10, 15.25]}
]"#;

#[test]
fn query_an_array() {
    let c = docs(ARRAYS);
    assert_eq!(found(&c, r#"{"tags": ["red", "blank"]}"#), ["notebook"]);
    assert_eq!(
        found(&c, r#"{"tags": {"$all": ["red", "blank"]}}"#),
        ["journal", "notebook", "paper", "planner"]
    );
    assert_eq!(
        found(&c, r#"{"tags": "red"}"#),
        ["journal", "notebook", "paper", "planner"]
    );
    assert_eq!(found(&c, r#"{"dim_cm": {"$gt": 25}}"#), ["planner"]);
    // Different elements may satisfy the two conditions.
    assert_eq!(
        found(&c, r#"{"dim_cm": {"$gt": 15, "$lt": 20}}"#),
        ["journal", "notebook", "paper", "postcard"]
    );
    // One element must satisfy both.
    assert_eq!(
        found(&c, r#"{"dim_cm": {"$elemMatch": {"$gt": 22, "$lt": 30}}}"#),
        ["planner"]
    );
    assert_eq!(found(&c, r#"{"dim_cm.1": {"$gt": 25}}"#), ["planner"]);
    assert_eq!(found(&c, r#"{"tags": {"$size": 3}}"#), ["paper"]);
    assert!(found(&c, r#"{"tags": {"$all": []}}"#).is_empty());
}

const INSTOCK: &str = r#"[
  {"item": "journal", "instock": [{"warehouse": "A", "qty": 5}, {"warehouse": "C", "qty": 15}]},
  {"item": "notebook", "instock": [{"warehouse": "C", "qty": 5}]},
  {"item": "paper", "instock": [{"warehouse": "A", "qty": 60}, {"warehouse": "B", "qty": 15}]},
  {"item": "planner", "instock": [{"warehouse": "A", "qty": 40}, {"warehouse": "B", "qty": 5}]},
  {"item": "postcard", "instock": [{"warehouse": "B", "qty": 15}, {"warehouse": "C", "qty": 35}]}
]"#;

#[test]
fn query_an_array_of_embedded_documents() {
    let c = docs(INSTOCK);
    assert_eq!(
        found(&c, r#"{"instock": {"warehouse": "A", "qty": 5}}"#),
        ["journal"]
    );
    assert!(
        found(&c, r#"{"instock": {"qty": 5, "warehouse": "A"}}"#).is_empty(),
        "whole-document equality depends on field order"
    );
    assert_eq!(
        found(&c, r#"{"instock.0.qty": {"$lte": 20}}"#),
        ["journal", "notebook", "postcard"]
    );
    assert_eq!(
        found(&c, r#"{"instock.qty": {"$lte": 20}}"#),
        ["journal", "notebook", "paper", "planner", "postcard"]
    );
    assert_eq!(
        found(
            &c,
            r#"{"instock": {"$elemMatch": {"qty": 5, "warehouse": "A"}}}"#
        ),
        ["journal"]
    );
    assert_eq!(
        found(
            &c,
            r#"{"instock": {"$elemMatch": {"qty": {"$gt": 10, "$lte": 20}}}}"#
        ),
        ["journal", "paper", "postcard"]
    );
    assert_eq!(
        found(&c, r#"{"instock.qty": {"$gt": 10, "$lte": 20}}"#),
        ["journal", "paper", "planner", "postcard"]
    );
    assert_eq!(
        found(&c, r#"{"instock.qty": 5, "instock.warehouse": "A"}"#),
        ["journal", "planner"]
    );
}

#[test]
fn null_and_missing_fields() {
    let c = docs(r#"[{"_id": 1, "item": null}, {"_id": 2}]"#);
    assert_eq!(found(&c, r#"{"item": null}"#), ["1", "2"]);
    assert_eq!(found(&c, r#"{"item": {"$type": 10}}"#), ["1"]);
    assert_eq!(found(&c, r#"{"item": {"$type": "null"}}"#), ["1"]);
    assert_eq!(found(&c, r#"{"item": {"$exists": false}}"#), ["2"]);
    assert_eq!(found(&c, r#"{"item": {"$exists": true}}"#), ["1"]);
    assert!(found(&c, r#"{"item": {"$ne": null}}"#).is_empty());
    assert_eq!(found(&c, r#"{"item": {"$in": [null, 3]}}"#), ["1", "2"]);
    assert_eq!(found(&c, r#"{"item": {"$gte": null}}"#), ["1", "2"]);
    assert!(found(&c, r#"{"item": {"$gt": null}}"#).is_empty());
}

#[test]
fn comparisons_stay_within_a_type_bracket() {
    let c = docs(
        r#"[{"_id": "int", "a": 1}, {"_id": "double", "a": 2.5}, {"_id": "string", "a": "x"},
            {"_id": "null", "a": null}, {"_id": "missing"}, {"_id": "bool", "a": true},
            {"_id": "array", "a": [0, "y"]}, {"_id": "object", "a": {"b": 1}}]"#,
    );
    assert_eq!(found(&c, r#"{"a": {"$gt": 0}}"#), ["int", "double"]);
    assert_eq!(
        found(&c, r#"{"a": {"$gte": 0}}"#),
        ["int", "double", "array"]
    );
    assert_eq!(found(&c, r#"{"a": {"$lt": "z"}}"#), ["string", "array"]);
    assert_eq!(found(&c, r#"{"a": {"$lte": false}}"#), Vec::<String>::new());
    assert_eq!(found(&c, r#"{"a": {"$gte": {"b": 0}}}"#), ["object"]);
    assert_eq!(found(&c, r#"{"a": 1.0}"#), ["int"], "1 equals 1.0");
    assert_eq!(
        found(&c, r#"{"a": {"$type": "number"}}"#),
        ["int", "double", "array"]
    );
    assert_eq!(
        found(&c, r#"{"a": {"$type": ["string", "bool"]}}"#),
        ["string", "bool", "array"]
    );
    assert_eq!(found(&c, r#"{"a": {"$type": "array"}}"#), ["array"]);
    // Booleans are not numbers, and $size counts arrays only (not a string's length).
    assert_eq!(found(&c, r#"{"a": 1}"#), ["int"]);
    assert_eq!(found(&c, r#"{"a": {"$size": 2}}"#), ["array"]);
    assert_eq!(found(&c, r#"{"a": {"$size": 1}}"#), Vec::<String>::new());
}

#[test]
fn negations_match_missing_fields() {
    let c = docs(
        r#"[{"item": "a", "price": 1.99, "sale": true}, {"item": "b", "price": 2.5},
            {"item": "c", "sale": false}, {"item": "d", "price": 1.99}]"#,
    );
    assert_eq!(
        found(&c, r#"{"price": {"$not": {"$gt": 1.99}}}"#),
        ["a", "c", "d"]
    );
    assert_eq!(found(&c, r#"{"price": {"$ne": 1.99}}"#), ["b", "c"]);
    assert_eq!(found(&c, r#"{"price": {"$nin": [1.99, 2.5]}}"#), ["c"]);
    assert_eq!(
        found(&c, r#"{"$nor": [{"price": 1.99}, {"sale": true}]}"#),
        ["b", "c"]
    );
    assert_eq!(
        found(&c, r#"{"$or": [{"price": 2.5}, {"sale": false}]}"#),
        ["b", "c"]
    );
    assert_eq!(
        found(
            &c,
            r#"{"$and": [{"price": {"$exists": true}}, {"price": {"$lt": 2}}]}"#
        ),
        ["a", "d"]
    );
}

#[test]
fn regular_expressions() {
    let c = docs(
        r#"[{"item": "a", "sku": "abc123"}, {"item": "b", "sku": "ABC789"},
            {"item": "c", "sku": "xyz456"}, {"item": "d", "sku": ["q", "abc"]}, {"item": "e", "sku": 5}]"#,
    );
    assert_eq!(found(&c, r#"{"sku": {"$regex": "^abc"}}"#), ["a", "d"]);
    assert_eq!(
        found(&c, r#"{"sku": {"$regex": "^abc", "$options": "i"}}"#),
        ["a", "b", "d"]
    );
    assert_eq!(
        found(&c, r#"{"sku": {"$not": {"$regex": "^abc"}}}"#),
        ["b", "c", "e"]
    );
}

#[test]
fn nested_paths_and_numeric_components() {
    let c = docs(
        r#"[{"item": "a", "addr": {"city": "Oslo", "zip": [1, 2]}},
            {"item": "b", "addr": {"city": "Lima"}},
            {"item": "c", "addr": [{"city": "Oslo"}, {"city": "Rome"}]},
            {"item": "d", "addr": "Oslo"},
            {"item": "e"}]"#,
    );
    assert_eq!(found(&c, r#"{"addr.city": "Oslo"}"#), ["a", "c"]);
    assert_eq!(
        found(&c, r#"{"addr.city": {"$in": ["Lima", "Rome"]}}"#),
        ["b", "c"]
    );
    assert_eq!(found(&c, r#"{"addr.1.city": "Rome"}"#), ["c"]);
    assert_eq!(found(&c, r#"{"addr.zip": 2}"#), ["a"]);
    assert_eq!(
        found(&c, r#"{"addr.city": {"$exists": false}}"#),
        ["d", "e"]
    );
    assert_eq!(found(&c, r#"{"addr.city": null}"#), ["d", "e"]);
    assert_eq!(found(&c, "{}"), ["a", "b", "c", "d", "e"]);
}

#[test]
fn bad_queries_are_errors_that_name_the_part() {
    assert!(error(r#"{"age": {"$foo": 1}}"#).contains("age: unknown operator $foo"));
    assert!(error(r#"{"$where": "1"}"#).contains("unknown top-level operator $where"));
    assert!(error(r#"{"age": {"$in": 5}}"#).contains("age: $in takes an array"));
    assert!(error(r#"{"age": {"$size": -1}}"#).contains("$size"));
    assert!(error(r#"{"age": {"$gt": 1, "b": 2}}"#).contains("mixes operators"));
    assert!(error(r#"{"$or": []}"#).contains("non-empty"));
    assert!(error(r#"{"$and": {"a": 1}}"#).contains("array"));
    assert!(error(r#"{"s": {"$regex": "("}}"#).contains("does not compile"));
    assert!(error(r#"{"s": {"$regex": "a", "$options": "q"}}"#).contains("option"));
    assert!(error(r#"{"a..b": 1}"#).contains("empty component"));
    assert!(error(r#"{"a": {"$type": "decimal"}}"#).contains("unknown type name"));
    assert!(error(r#"{"a": {"$not": 5}}"#).contains("$not"));
    assert!(error("[1]").contains("a filter is a document"));
    assert!(error(r#"{"a": {"$elemMatch": 1}}"#).contains("$elemMatch"));
}

/// Parsing and matching never panic, whatever the query and document.
#[test]
fn arbitrary_queries_and_documents_never_panic() {
    use proptest::prelude::*;
    fn value() -> impl Strategy<Value = super::Value> {
        let leaf = prop_oneof![
            Just(super::Value::Null),
            any::<bool>().prop_map(super::Value::Bool),
            (-5i64..5).prop_map(super::Value::Int),
            (-5.0f64..5.0).prop_map(super::Value::Double),
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("$gt"),
                Just("$in"),
                Just("$size"),
                Just("x.y")
            ]
            .prop_map(|s| super::Value::String(s.to_string())),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(super::Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("a"),
                            Just("b"),
                            Just("a.b"),
                            Just("$gt"),
                            Just("$lt"),
                            Just("$in"),
                            Just("$not"),
                            Just("$elemMatch"),
                            Just("$or"),
                            Just("$size"),
                            Just("$all"),
                            Just("$exists"),
                            Just("$type"),
                            Just("0"),
                            Just("$regex")
                        ],
                        inner
                    ),
                    0..4
                )
                .prop_map(|fields| {
                    let mut seen = Vec::new();
                    super::Value::Object(
                        fields
                            .into_iter()
                            .filter(|(k, _)| {
                                let fresh = !seen.contains(k);
                                seen.push(*k);
                                fresh
                            })
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    )
                }),
            ]
        })
    }
    proptest!(ProptestConfig::with_cases(2000), |(query in value(), doc in value())| {
        if let Ok(filter) = Filter::parse(&query) {
            let _ = filter.matches(&doc);
        }
    });
}

/// `{"a.b": null}` and `{"a.b": {"$ne": null}}` over the documents of MongoDB's
/// `null_query_semantics` test, with the results it asserts: a non-document `a`, a
/// document without `b`, or an array with a document without `b` match; an array of
/// scalars (or an empty array) does not, though no element has a `b`.
#[test]
fn dotted_null_matches_as_mongodb_does_through_arrays() {
    let collection = docs(
        r#"[
      {"_id": "a_empty_subobject", "a": {}},
      {"_id": "a_null", "a": null},
      {"_id": "a_number", "a": 4},
      {"_id": "a_subobject_b_not_null", "a": {"b": "hi"}},
      {"_id": "a_subobject_b_null", "a": {"b": null}},
      {"_id": "no_a"},
      {"_id": "a_double_array", "a": [[]]},
      {"_id": "a_empty_array", "a": []},
      {"_id": "a_object_array_no_b_nulls", "a": [{"b": 1}, {"b": 3}, {"b": "string"}]},
      {"_id": "a_object_array_some_b_nulls", "a": [{"b": null}, {"b": 3}, {"b": null}]},
      {"_id": "a_object_array_some_b_missing", "a": [{"b": 3}, {}]},
      {"_id": "a_value_array_all_nulls", "a": [null, null]},
      {"_id": "a_value_array_no_nulls", "a": [1, "string", 4]},
      {"_id": "a_value_array_with_null", "a": [1, "string", null, 4]}
    ]"#,
    );
    assert_eq!(
        found(&collection, r#"{"a.b": null}"#),
        [
            "a_empty_subobject",
            "a_null",
            "a_number",
            "a_subobject_b_null",
            "no_a",
            "a_object_array_some_b_nulls",
            "a_object_array_some_b_missing"
        ]
    );
    assert_eq!(
        found(&collection, r#"{"a.b": {"$ne": null}}"#),
        [
            "a_subobject_b_not_null",
            "a_double_array",
            "a_empty_array",
            "a_object_array_no_b_nulls",
            "a_value_array_all_nulls",
            "a_value_array_no_nulls",
            "a_value_array_with_null"
        ]
    );
    assert_eq!(
        found(&collection, r#"{"a": {"$nin": [null, []]}}"#),
        [
            "a_empty_subobject",
            "a_number",
            "a_subobject_b_not_null",
            "a_subobject_b_null",
            "a_object_array_no_b_nulls",
            "a_object_array_some_b_nulls",
            "a_object_array_some_b_missing",
            "a_value_array_no_nulls"
        ]
    );
}
