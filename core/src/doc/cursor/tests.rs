//! Sort, skip, limit and projection, with MongoDB's documented behaviour.

use super::*;

fn v(text: &str) -> Value {
    Value::from_json(text).unwrap()
}

fn docs(text: &str) -> Vec<Value> {
    match v(text) {
        Value::Array(items) => items,
        _ => panic!("an array"),
    }
}

fn ids(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d.get("_id").map_or("?".into(), |id| id.to_string()))
        .collect()
}

fn find(
    collection: &[Value],
    filter: &str,
    sort: &str,
    skip: usize,
    limit: Option<usize>,
) -> Vec<Value> {
    Find {
        filter: Filter::parse(&v(filter)).unwrap(),
        sort: Sort::parse(&v(sort)).unwrap(),
        skip,
        limit,
        projection: None,
    }
    .run(collection)
}

#[test]
fn multi_key_sort_with_mixed_types_and_missing_fields() {
    let c = docs(
        r#"[{"_id": 1, "a": 2, "b": "x"}, {"_id": 2, "a": "s"}, {"_id": 3},
            {"_id": 4, "a": null}, {"_id": 5, "a": 2, "b": "a"}, {"_id": 6, "a": 1.5},
            {"_id": 7, "a": true}, {"_id": 8, "a": {"k": 1}}]"#,
    );
    // null and missing first (in collection order), then numbers, strings, objects, booleans.
    assert_eq!(
        ids(&find(&c, "{}", r#"{"a": 1, "b": 1}"#, 0, None)),
        ["3", "4", "6", "5", "1", "2", "8", "7"]
    );
    assert_eq!(
        ids(&find(&c, "{}", r#"{"a": -1, "b": -1}"#, 0, None)),
        ["7", "8", "2", "1", "5", "6", "3", "4"]
    );
}

#[test]
fn arrays_sort_by_their_smallest_or_largest_element() {
    let c = docs(
        r#"[{"_id": "a", "n": [1, 9]}, {"_id": "b", "n": 5}, {"_id": "c", "n": [3, 4]},
            {"_id": "d", "n": []}, {"_id": "e"}]"#,
    );
    // Ascending by the smallest element; the empty array before null/missing.
    assert_eq!(
        ids(&find(&c, "{}", r#"{"n": 1}"#, 0, None)),
        ["\"d\"", "\"e\"", "\"a\"", "\"c\"", "\"b\""]
    );
    // Descending by the largest element.
    assert_eq!(
        ids(&find(&c, "{}", r#"{"n": -1}"#, 0, None)),
        ["\"a\"", "\"b\"", "\"c\"", "\"e\"", "\"d\""]
    );
}

#[test]
fn skip_and_limit_come_after_the_sort() {
    let c: Vec<Value> = (0..10)
        .map(|i| v(&format!(r#"{{"_id": {i}, "k": {}}}"#, (i * 7) % 10)))
        .collect();
    let page = find(&c, r#"{"k": {"$gte": 2}}"#, r#"{"k": 1}"#, 2, Some(3));
    let keys: Vec<String> = page
        .iter()
        .map(|d| d.get("k").unwrap().to_string())
        .collect();
    assert_eq!(keys, ["4", "5", "6"]);
    assert!(find(&c, "{}", "{}", 20, Some(5)).is_empty());
    assert_eq!(find(&c, "{}", "{}", 0, Some(0)).len(), 0);
}

#[test]
fn projections() {
    let doc = v(
        r#"{"_id": 1, "item": "x", "size": {"h": 14, "w": 21, "uom": "cm"},
                    "instock": [{"wh": "A", "qty": 5}, {"wh": "C", "qty": 15}, 7]}"#,
    );
    let project = |spec: &str| {
        Projection::parse(&v(spec))
            .unwrap()
            .map_or(doc.clone(), |p| p.apply(&doc))
            .to_string()
    };
    assert_eq!(project(r#"{"item": 1}"#), r#"{"_id":1,"item":"x"}"#);
    assert_eq!(project(r#"{"item": 1, "_id": 0}"#), r#"{"item":"x"}"#);
    assert_eq!(
        project(r#"{"size.uom": 1, "item": 1}"#),
        r#"{"_id":1,"item":"x","size":{"uom":"cm"}}"#,
        "fields come in document order"
    );
    assert_eq!(
        project(r#"{"instock.qty": 1}"#),
        r#"{"_id":1,"instock":[{"qty":5},{"qty":15}]}"#
    );
    assert_eq!(
        project(r#"{"size": 0, "instock": 0}"#),
        r#"{"_id":1,"item":"x"}"#
    );
    assert_eq!(
        project(r#"{"size.h": 0, "instock.wh": 0, "_id": 0}"#),
        r#"{"item":"x","size":{"w":21,"uom":"cm"},"instock":[{"qty":5},{"qty":15},7]}"#
    );
    assert_eq!(
        project(r#"{"_id": 0}"#),
        r#"{"item":"x","size":{"h":14,"w":21,"uom":"cm"},"instock":[{"wh":"A","qty":5},{"wh":"C","qty":15},7]}"#
    );
    assert_eq!(project(r#"{"_id": 1}"#), r#"{"_id":1}"#);
    assert_eq!(project("{}"), doc.to_string());
    assert_eq!(project(r#"{"missing": 1}"#), r#"{"_id":1}"#);
}

#[test]
fn bad_sorts_and_projections_are_errors() {
    let err = |r: Result<Option<Projection>, QueryError>| r.expect_err("refused").to_string();
    assert!(err(Projection::parse(&v(r#"{"a": 1, "b": 0}"#))).contains("mixes"));
    assert!(err(Projection::parse(&v(r#"{"a": {"$slice": 1}}"#))).contains("not supported"));
    assert!(err(Projection::parse(&v(r#"{"a": 1, "a.b": 1}"#))).contains("collides"));
    assert!(err(Projection::parse(&v("[]"))).contains("document"));
    assert!(Sort::parse(&v(r#"{"a": 2}"#))
        .unwrap_err()
        .to_string()
        .contains("1 or -1"));
    assert!(Sort::parse(&v(r#"{"a..b": 1}"#))
        .unwrap_err()
        .to_string()
        .contains("bad field path"));
}

/// An array element that is itself an array is a sort key of type array (after numbers,
/// strings and documents), not elements to look into: only the field's own array is
/// represented by its elements.
#[test]
fn nested_arrays_sort_as_arrays() {
    let collection = docs(
        r#"[
      {"_id": 1, "a": [[], [0, 0]]},
      {"_id": 2, "a": []},
      {"_id": 3, "a": "s"},
      {"_id": 4},
      {"_id": 5, "a": [[5], 7]},
      {"_id": 6, "a": {"x": 1}}
    ]"#,
    );
    assert_eq!(
        ids(&find(&collection, "{}", r#"{"a": 1}"#, 0, None)),
        ["2", "4", "5", "3", "6", "1"]
    );
}
