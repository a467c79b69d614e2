//! Update operators against examples from MongoDB's documentation of each operator.

use super::*;

fn v(text: &str) -> Value {
    Value::from_json(text).unwrap()
}

/// `doc` after `update`, as compact JSON.
fn updated(doc: &str, update: &str) -> String {
    let mut doc = v(doc);
    Update::parse(&v(update)).unwrap().apply(&mut doc).unwrap();
    doc.to_string()
}

/// The error `update` gives on `doc`, checking the document is unchanged.
fn fails(doc: &str, update: &str) -> String {
    let mut d = v(doc);
    let before = d.to_string();
    let error = match Update::parse(&v(update)) {
        Err(e) => e,
        Ok(u) => u.apply(&mut d).expect_err("the update fails"),
    };
    assert_eq!(d.to_string(), before, "a failed update changes nothing");
    error.to_string()
}

#[test]
fn set_creates_paths_and_sets_array_elements() {
    assert_eq!(
        updated(
            r#"{"_id": 100, "quantity": 250, "details": {"model": "14QQ"}}"#,
            r#"{"$set": {"quantity": 500, "details.make": "Kustom Kidz"}}"#
        ),
        r#"{"_id":100,"quantity":500,"details":{"model":"14QQ","make":"Kustom Kidz"}}"#
    );
    assert_eq!(
        updated(
            r#"{"tags": ["a", "b"]}"#,
            r#"{"$set": {"tags.1": "rain gear"}}"#
        ),
        r#"{"tags":["a","rain gear"]}"#
    );
    assert_eq!(
        updated(r#"{"tags": ["a"]}"#, r#"{"$set": {"tags.3": "x"}}"#),
        r#"{"tags":["a",null,null,"x"]}"#,
        "arrays are padded with nulls"
    );
    assert_eq!(
        updated(
            r#"{"r": [{"rating": 1}]}"#,
            r#"{"$set": {"r.0.rating": 2}}"#
        ),
        r#"{"r":[{"rating":2}]}"#
    );
    assert_eq!(
        updated("{}", r#"{"$set": {"a.b.c": 1}}"#),
        r#"{"a":{"b":{"c":1}}}"#
    );
    assert!(fails(r#"{"a": 5}"#, r#"{"$set": {"a.b": 1}}"#).contains("cannot create field"));
}

#[test]
fn unset_removes_fields_and_nulls_array_elements() {
    assert_eq!(
        updated(
            r#"{"item": "x", "quantity": 1, "instock": true}"#,
            r#"{"$unset": {"quantity": "", "instock": "", "nothing": ""}}"#
        ),
        r#"{"item":"x"}"#
    );
    assert_eq!(
        updated(r#"{"a": [1, 2, 3]}"#, r#"{"$unset": {"a.1": ""}}"#),
        r#"{"a":[1,null,3]}"#
    );
}

#[test]
fn inc_and_mul() {
    assert_eq!(
        updated(
            r#"{"quantity": 10, "metrics": {"orders": 2, "ratings": 3.5}}"#,
            r#"{"$inc": {"quantity": -2, "metrics.orders": 1, "metrics.new": 5}}"#
        ),
        r#"{"quantity":8,"metrics":{"orders":3,"ratings":3.5,"new":5}}"#
    );
    assert_eq!(
        updated(r#"{"p": 10}"#, r#"{"$mul": {"p": 1.25}}"#),
        r#"{"p":12.5}"#
    );
    assert_eq!(
        updated(r#"{"p": 3}"#, r#"{"$mul": {"p": 2}}"#),
        r#"{"p":6}"#
    );
    assert_eq!(updated("{}", r#"{"$mul": {"p": 2}}"#), r#"{"p":0}"#);
    assert!(fails(r#"{"a": "x"}"#, r#"{"$inc": {"a": 1}}"#).contains("not a number"));
    assert!(fails("{}", r#"{"$inc": {"a": "1"}}"#).contains("must be a number"));
    assert!(fails(r#"{"a": 9223372036854775807}"#, r#"{"$inc": {"a": 1}}"#).contains("overflow"));
}

#[test]
fn min_and_max_compare_in_mongodb_order() {
    assert_eq!(
        updated(
            r#"{"low": 200, "high": 800}"#,
            r#"{"$min": {"low": 150}, "$max": {"high": 950}}"#
        ),
        r#"{"low":150,"high":950}"#
    );
    assert_eq!(
        updated(
            r#"{"low": 200, "high": 800}"#,
            r#"{"$min": {"low": 250}, "$max": {"high": 700}}"#
        ),
        r#"{"low":200,"high":800}"#
    );
    // Across types: a string is greater than any number.
    assert_eq!(
        updated(r#"{"a": 5}"#, r#"{"$max": {"a": "x"}}"#),
        r#"{"a":"x"}"#
    );
    assert_eq!(updated("{}", r#"{"$min": {"a": 1}}"#), r#"{"a":1}"#);
}

#[test]
fn push_add_to_set_and_pull() {
    assert_eq!(
        updated(r#"{"scores": [44]}"#, r#"{"$push": {"scores": 89}}"#),
        r#"{"scores":[44,89]}"#
    );
    assert_eq!(
        updated(
            r#"{"scores": [44]}"#,
            r#"{"$push": {"scores": {"$each": [90, 92]}}}"#
        ),
        r#"{"scores":[44,90,92]}"#
    );
    assert_eq!(updated("{}", r#"{"$push": {"s": [1]}}"#), r#"{"s":[[1]]}"#);
    assert!(fails(r#"{"s": 1}"#, r#"{"$push": {"s": 2}}"#).contains("not an array"));
    assert!(fails("{}", r#"{"$push": {"s": {"$each": [1], "$sort": 1}}}"#).contains("unsupported"));
    assert_eq!(
        updated(
            r#"{"tags": ["electronics", "supplies"]}"#,
            r#"{"$addToSet": {"tags": {"$each": ["camera", "electronics", "accessories"]}}}"#
        ),
        r#"{"tags":["electronics","supplies","camera","accessories"]}"#
    );
    assert_eq!(
        updated(r#"{"n": [1, 2]}"#, r#"{"$addToSet": {"n": 2.0}}"#),
        r#"{"n":[1,2]}"#,
        "2.0 equals 2"
    );
    assert_eq!(
        updated(
            r#"{"fruits": ["apples", "pears", "oranges", "grapes"], "votes": [3, 5, 6, 7, 7, 8]}"#,
            r#"{"$pull": {"fruits": {"$in": ["apples", "oranges"]}, "votes": {"$gte": 6}}}"#
        ),
        r#"{"fruits":["pears","grapes"],"votes":[3,5]}"#
    );
    assert_eq!(
        updated(
            r#"{"results": [{"item": "A", "score": 5}, {"item": "B", "score": 8}]}"#,
            r#"{"$pull": {"results": {"score": 8, "item": "B"}}}"#
        ),
        r#"{"results":[{"item":"A","score":5}]}"#
    );
    assert_eq!(
        updated(r#"{"a": [1, 2, 1]}"#, r#"{"$pull": {"a": 1}}"#),
        r#"{"a":[2]}"#
    );
    assert_eq!(
        updated("{}", r#"{"$pull": {"a": 1}}"#),
        "{}",
        "nothing to pull from"
    );
}

#[test]
fn rename_moves_fields() {
    assert_eq!(
        updated(
            r#"{"_id": 1, "nmae": "x", "a": 1}"#,
            r#"{"$rename": {"nmae": "name"}}"#
        ),
        r#"{"_id":1,"a":1,"name":"x"}"#
    );
    assert_eq!(
        updated(
            r#"{"first": "a"}"#,
            r#"{"$rename": {"first": "name.first"}}"#
        ),
        r#"{"name":{"first":"a"}}"#
    );
    assert_eq!(
        updated(r#"{"a": 1}"#, r#"{"$rename": {"x": "y"}}"#),
        r#"{"a":1}"#
    );
    assert!(fails(r#"{"a": [{"b": 1}]}"#, r#"{"$rename": {"a.0.b": "c"}}"#).contains("arrays"));
}

#[test]
fn replacement_keeps_the_id() {
    assert_eq!(
        updated(r#"{"_id": 7, "a": 1, "b": 2}"#, r#"{"c": 3}"#),
        r#"{"_id":7,"c":3}"#
    );
    assert!(fails(r#"{"_id": 7}"#, r#"{"_id": 8, "c": 3}"#).contains("_id"));
}

#[test]
fn bad_updates_are_errors() {
    assert!(fails("{}", r#"{"$foo": {"a": 1}}"#).contains("unknown update operator $foo"));
    assert!(fails("{}", r#"{"$set": {"a": 1}, "b": 2}"#).contains("mixes"));
    assert!(fails("{}", r#"{"$set": {"a": 1}, "$inc": {"a": 1}}"#).contains("conflicts"));
    assert!(fails("{}", r#"{"$set": {"a": 1, "a.b": 2}}"#).contains("conflicts"));
    assert!(fails("{}", r#"{"$set": {"a": 1}, "$rename": {"b": "a"}}"#).contains("conflicts"));
    assert!(fails(r#"{"_id": 1}"#, r#"{"$set": {"_id": 2}}"#).contains("_id"));
    assert!(fails(r#"{"_id": 1}"#, r#"{"$unset": {"_id": ""}}"#).contains("_id"));
    assert!(fails("{}", r#"{"$set": {}}"#).contains("non-empty"));
    assert!(fails("{}", r#"{"$set": 5}"#).contains("takes a document"));
    assert!(fails("{}", r#"{"$set": {"a..b": 1}}"#).contains("bad field path"));
    assert!(fails("{}", r#"{"a.b": 1}"#).contains("dotted"));
    assert!(fails("{}", r#"{"$pull": {"a": {"$foo": 1}}}"#).contains("unknown operator"));
}
