//! Pipelines from MongoDB's documentation of each stage and accumulator, with the results
//! it documents.

use super::*;

fn v(text: &str) -> Value {
    Value::from_json(text).unwrap()
}

/// Runs `pipeline` over the documents of `collection` (a JSON array).
fn try_run(collection: &str, pipeline: &str) -> Result<Vec<Value>, QueryError> {
    let Value::Array(docs) = v(collection) else {
        panic!("an array")
    };
    Pipeline::parse(&v(pipeline)).unwrap().run(docs)
}

fn run(collection: &str, pipeline: &str) -> Vec<String> {
    try_run(collection, pipeline)
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect()
}

fn error(pipeline: &str) -> String {
    Pipeline::parse(&v(pipeline))
        .expect_err("refused")
        .to_string()
}

const SALES: &str = r#"[
  {"_id": 1, "item": "abc", "price": 10, "quantity": 2},
  {"_id": 2, "item": "jkl", "price": 20, "quantity": 1},
  {"_id": 3, "item": "xyz", "price": 5, "quantity": 10},
  {"_id": 4, "item": "xyz", "price": 5, "quantity": 20},
  {"_id": 5, "item": "abc", "price": 10, "quantity": 10},
  {"_id": 6, "item": "def", "price": 7.5, "quantity": 5},
  {"_id": 7, "item": "def", "price": 7.5, "quantity": 10},
  {"_id": 8, "item": "abc", "price": 10, "quantity": 5}
]"#;

#[test]
fn group_with_accumulators() {
    assert_eq!(
        run(
            SALES,
            r#"[{"$group": {"_id": "$item", "count": {"$sum": 1}}}, {"$sort": {"_id": 1}}]"#
        ),
        [
            r#"{"_id":"abc","count":3}"#,
            r#"{"_id":"def","count":2}"#,
            r#"{"_id":"jkl","count":1}"#,
            r#"{"_id":"xyz","count":2}"#
        ]
    );
    assert_eq!(
        run(
            SALES,
            r#"[{"$group": {"_id": null, "n": {"$count": {}}, "q": {"$sum": "$quantity"}}}]"#
        ),
        [r#"{"_id":null,"n":8,"q":63}"#]
    );
    assert_eq!(
        run(
            SALES,
            r#"[{"$group": {"_id": "$item", "avg": {"$avg": "$quantity"}, "min": {"$min": "$price"},
                 "max": {"$max": "$quantity"}, "first": {"$first": "$_id"}, "last": {"$last": "$_id"},
                 "ids": {"$push": "$_id"}}},
                {"$match": {"_id": {"$in": ["def", "xyz"]}}}, {"$sort": {"_id": -1}}]"#
        ),
        [
            r#"{"_id":"xyz","avg":15.0,"min":5,"max":20,"first":3,"last":4,"ids":[3,4]}"#,
            r#"{"_id":"def","avg":7.5,"min":7.5,"max":10,"first":6,"last":7,"ids":[6,7]}"#
        ]
    );
    // A compound group key, and $sum over doubles.
    assert_eq!(
        run(
            SALES,
            r#"[{"$match": {"item": "def"}},
                {"$group": {"_id": {"item": "$item", "p": "$price"}, "total": {"$sum": "$price"}}}]"#
        ),
        [r#"{"_id":{"item":"def","p":7.5},"total":15.0}"#]
    );
}

#[test]
fn the_issues_example() {
    let people = r#"[
      {"_id": "p1", "name": "ann", "age": 31, "addr": {"city": "Oslo"}},
      {"_id": "p2", "name": "bob", "age": 19, "addr": {"city": "Oslo"}},
      {"_id": "p3", "name": "cid", "age": 40, "addr": {"city": "Lima"}},
      {"_id": "p4", "name": "dee", "age": 52, "addr": {"city": "Oslo"}},
      {"_id": "p5", "name": "eve", "age": 23}
    ]"#;
    assert_eq!(
        run(
            people,
            r#"[{"$match": {"age": {"$gt": 20}}}, {"$group": {"_id": "$addr.city", "n": {"$sum": 1}}},
                {"$sort": {"_id": 1}}]"#
        ),
        [
            r#"{"_id":null,"n":1}"#,
            r#"{"_id":"Lima","n":1}"#,
            r#"{"_id":"Oslo","n":2}"#
        ]
    );
}

#[test]
fn unwind_project_skip_limit_and_count() {
    let c = r#"[{"_id": 1, "sizes": ["S", "M"]}, {"_id": 2, "sizes": []}, {"_id": 3, "sizes": null},
                {"_id": 4}, {"_id": 5, "sizes": "L"}]"#;
    assert_eq!(
        run(c, r#"[{"$unwind": "$sizes"}]"#),
        [
            r#"{"_id":1,"sizes":"S"}"#,
            r#"{"_id":1,"sizes":"M"}"#,
            r#"{"_id":5,"sizes":"L"}"#
        ]
    );
    assert_eq!(
        run(
            c,
            r#"[{"$unwind": {"path": "$sizes", "preserveNullAndEmptyArrays": true, "includeArrayIndex": "i"}}]"#
        ),
        [
            r#"{"_id":1,"sizes":"S","i":0}"#,
            r#"{"_id":1,"sizes":"M","i":1}"#,
            r#"{"_id":2,"sizes":[],"i":null}"#,
            r#"{"_id":3,"sizes":null,"i":null}"#,
            r#"{"_id":4,"i":null}"#,
            r#"{"_id":5,"sizes":"L","i":null}"#
        ]
    );
    assert_eq!(
        run(
            SALES,
            r#"[{"$sort": {"quantity": -1}}, {"$skip": 1}, {"$limit": 2}, {"$project": {"item": 1, "q": "$quantity", "_id": 0}}]"#
        ),
        [r#"{"item":"xyz","q":10}"#, r#"{"item":"abc","q":10}"#]
    );
    assert_eq!(
        run(
            SALES,
            r#"[{"$project": {"quantity": 0, "price": 0}}, {"$limit": 1}]"#
        ),
        [r#"{"_id":1,"item":"abc"}"#]
    );
    assert_eq!(
        run(
            SALES,
            r#"[{"$match": {"quantity": {"$gte": 10}}}, {"$count": "big"}]"#
        ),
        [r#"{"big":4}"#]
    );
    assert_eq!(
        run(
            SALES,
            r#"[{"$project": {"label": {"$literal": "$x"}, "pq": {"p": "$price", "q": "$quantity"}}}, {"$limit": 1}]"#
        ),
        [r#"{"_id":1,"label":"$x","pq":{"p":10,"q":2}}"#]
    );
}

#[test]
fn bad_pipelines_are_errors_that_name_the_stage() {
    assert!(error(r#"[{"$foo": {}}]"#).contains("stage 0: unknown pipeline stage $foo"));
    assert!(error(r#"[{"$match": {}}, {"$group": {"n": {"$sum": 1}}}]"#)
        .contains("stage 1: $group needs an _id"));
    assert!(error(r#"[{"$group": {"_id": null, "n": {"$median": 1}}}]"#)
        .contains("unknown accumulator"));
    assert!(error(r#"[{"$limit": 0}]"#).contains("positive"));
    assert!(error(r#"[{"$skip": -1}]"#).contains("non-negative"));
    assert!(error(r#"[{"$count": "$x"}]"#).contains("field name"));
    assert!(error(r#"[{"$sort": {}}]"#).contains("at least one"));
    assert!(error(r#"[{"$project": {"a": 0, "b": "$c"}}]"#).contains("cannot exclude"));
    assert!(error(r#"[{"$unwind": "sizes"}]"#).contains("field path"));
    assert!(error(r#"[{"$group": {"_id": {"$dateToString": {}}}}]"#)
        .contains("unknown expression operator $dateToString"));
    assert!(error(r#"[{"$project": {"a": {"$subtract": [1]}}}]"#)
        .contains("$subtract takes exactly 2 arguments, not 1"));
    assert!(error(r#"[{"$project": {"a": {"$add": [1], "b": 2}}}]"#).contains("only field"));
    assert!(
        error(r#"[{"$project": {"a": {"$cond": {"if": true, "then": 1}}}}]"#)
            .contains("$cond needs \"else\"")
    );
    assert!(error(r#"{"$match": {}}"#).contains("array of stages"));
    assert!(error(r#"[{"$match": {}, "$limit": 1}]"#).contains("exactly one field"));
}

/// A `$group` split over "shards" and combined gives what one `$group` over all gives.
#[test]
fn a_group_split_over_shards_combines_to_the_whole() {
    let docs: Vec<Value> = (0..40)
        .map(|i| {
            Value::from_json(&format!(
                r#"{{"k": {}, "n": {}, "d": {}, "big": {}}}"#,
                i % 3,
                i,
                f64::from(i) / 4.0,
                if i % 7 == 0 { i64::MAX / 2 } else { 1 }
            ))
            .unwrap()
        })
        .collect();
    let stage = Value::from_json(
        r#"{"$group": {"_id": "$k", "s": {"$sum": "$n"}, "a": {"$avg": "$d"},
            "lo": {"$min": "$n"}, "hi": {"$max": "$d"}, "c": {"$count": {}},
            "f": {"$first": "$n"}, "l": {"$last": "$n"}, "p": {"$push": "$n"},
            "big": {"$sum": "$big"}, "x": {"$sum": {"$multiply": ["$n", "$d"]}},
            "y": {"$max": {"$cond": [{"$gt": ["$n", 20]}, "$d", null]}}}}"#,
    )
    .unwrap();
    let group = GroupStage::parse(&stage).unwrap().unwrap();
    let whole = Pipeline::parse(&Value::Array(vec![stage]))
        .unwrap()
        .run(docs.clone())
        .unwrap();
    for shards in 1..5 {
        let mut partials = Vec::new();
        for part in docs.chunks(docs.len().div_ceil(shards)) {
            partials.extend(group.partial(part).unwrap());
        }
        let combined = group.combine(&partials).unwrap();
        let show = |v: &[Value]| v.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        assert_eq!(show(&combined), show(&whole), "{shards} shards");
    }
}

fn run_err(collection: &str, pipeline: &str) -> String {
    try_run(collection, pipeline)
        .expect_err("the pipeline fails")
        .to_string()
}

/// Expression operators, with the examples and results of MongoDB's documentation of each.
#[test]
fn arithmetic_expressions() {
    let sales = r#"[{"_id": 1, "item": "abc", "price": 10, "fee": 2, "quantity": 2},
                    {"_id": 2, "item": "jkl", "price": 20.5, "fee": 1, "quantity": 1},
                    {"_id": 3, "item": "xyz", "price": 5, "quantity": 10}]"#;
    assert_eq!(
        run(
            sales,
            r#"[{"$project": {"item": 1, "total": {"$add": ["$price", "$fee"]},
                "cost": {"$multiply": ["$price", "$quantity"]},
                "net": {"$subtract": ["$price", "$fee"]}}}]"#
        ),
        [
            r#"{"_id":1,"item":"abc","total":12,"cost":20,"net":8}"#,
            r#"{"_id":2,"item":"jkl","total":21.5,"cost":20.5,"net":19.5}"#,
            r#"{"_id":3,"item":"xyz","total":null,"cost":50,"net":null}"#,
        ]
    );
    let work = r#"[{"_id": 1, "hours": 80, "tasks": 7, "start": 9.25, "end": -2.8}]"#;
    assert_eq!(
        run(
            work,
            r#"[{"$project": {"_id": 0, "days": {"$divide": ["$hours", 8]},
                "rest": {"$mod": ["$hours", "$tasks"]},
                "up": {"$ceil": "$start"}, "down": {"$floor": "$end"},
                "swing": {"$abs": {"$subtract": ["$end", "$start"]}}}}]"#
        ),
        [r#"{"days":10.0,"rest":3,"up":10.0,"down":-3.0,"swing":12.05}"#]
    );
    // Integers that overflow go on as doubles.
    assert_eq!(
        run(
            r#"[{"_id": 1, "n": 9223372036854775807}]"#,
            r#"[{"$project": {"_id": 0, "m": {"$add": ["$n", 1]}, "k": {"$add": ["$n", 0]}}}]"#
        ),
        [r#"{"m":9223372036854776000,"k":9223372036854775807}"#]
    );
    assert!(
        run_err(sales, r#"[{"$project": {"x": {"$add": ["$item", 1]}}}]"#)
            .contains("$add only supports numbers, not string")
    );
    assert!(run_err(
        sales,
        r#"[{"$project": {"x": {"$divide": ["$price", 0]}}}]"#
    )
    .contains("$divide by zero"));
    assert!(
        run_err(sales, r#"[{"$project": {"x": {"$mod": ["$price", 0]}}}]"#)
            .contains("$mod by zero")
    );
    // Expressions in $group.
    assert_eq!(
        run(
            sales,
            r#"[{"$group": {"_id": {"$gt": ["$price", 6]},
                "revenue": {"$sum": {"$multiply": ["$price", "$quantity"]}}}},
                {"$sort": {"_id": 1}}]"#
        ),
        [
            r#"{"_id":false,"revenue":50}"#,
            r#"{"_id":true,"revenue":40.5}"#
        ]
    );
}

#[test]
fn comparison_boolean_and_conditional_expressions() {
    let inventory = r#"[{"_id": 1, "item": "abc1", "qty": 300, "description": "product 1"},
                        {"_id": 2, "item": "abc2", "qty": 200, "description": null},
                        {"_id": 3, "item": "xyz1", "qty": 250}]"#;
    assert_eq!(
        run(
            inventory,
            r#"[{"$project": {"cmp": {"$cmp": ["$qty", 250]}, "eq": {"$eq": ["$qty", 250]},
                "ne": {"$ne": ["$qty", 250]}, "gt": {"$gt": ["$qty", 250]},
                "lte": {"$lte": ["$qty", 250]},
                "discount": {"$cond": {"if": {"$gte": ["$qty", 250]}, "then": 30, "else": 20}},
                "also": {"$cond": [{"$lt": ["$qty", 250]}, "low", "high"]},
                "description": {"$ifNull": ["$description", "Unspecified"]}}}]"#
        ),
        [
            r#"{"_id":1,"cmp":1,"eq":false,"ne":true,"gt":true,"lte":false,"discount":30,"also":"high","description":"product 1"}"#,
            r#"{"_id":2,"cmp":-1,"eq":false,"ne":true,"gt":false,"lte":true,"discount":20,"also":"low","description":"Unspecified"}"#,
            r#"{"_id":3,"cmp":0,"eq":true,"ne":false,"gt":false,"lte":true,"discount":30,"also":"high","description":"Unspecified"}"#,
        ]
    );
    // A missing value is not null: it sorts below it.
    assert_eq!(
        run(
            inventory,
            r#"[{"$project": {"_id": 0, "isNull": {"$eq": ["$description", null]},
                "nullOrMissing": {"$lte": ["$description", null]},
                "t": {"$type": "$description"}}}]"#
        ),
        [
            r#"{"isNull":false,"nullOrMissing":false,"t":"string"}"#,
            r#"{"isNull":true,"nullOrMissing":true,"t":"null"}"#,
            r#"{"isNull":false,"nullOrMissing":true,"t":"missing"}"#,
        ]
    );
    // Truth: false, null, missing and 0 are false; everything else, [] and "" too, true.
    assert_eq!(
        run(
            r#"[{"_id": 1, "z": 0, "e": [], "s": ""}]"#,
            r#"[{"$project": {"_id": 0, "a": {"$and": [1, "$e", "$s"]},
                "b": {"$and": [1, "$z"]}, "c": {"$or": ["$gone", null, "$z"]},
                "d": {"$or": [false, "$e"]}, "n": {"$not": ["$gone"]}, "t": {"$and": []}}}]"#
        ),
        [r#"{"a":true,"b":false,"c":false,"d":true,"n":true,"t":true}"#]
    );
}

#[test]
fn string_and_array_expressions() {
    let items = r#"[{"_id": 1, "item": "ABC1", "description": "Product 1", "colors": ["blue", "black"]},
                    {"_id": 2, "item": "abc2", "description": null, "colors": []},
                    {"_id": 3, "item": "café", "description": "x", "colors": ["red"]}]"#;
    assert_eq!(
        run(
            items,
            r#"[{"$project": {"_id": 0, "label": {"$concat": ["$item", " - ", "$description"]},
                "lower": {"$toLower": "$item"}, "upper": {"$toUpper": "$description"},
                "len": {"$strLenCP": "$item"}, "head": {"$substrCP": ["$item", 0, 3]},
                "n": {"$size": "$colors"}, "first": {"$arrayElemAt": ["$colors", 0]},
                "last": {"$arrayElemAt": ["$colors", -1]},
                "red": {"$in": ["red", "$colors"]}, "pair": ["$item", "$gone"]}}]"#
        ),
        [
            r#"{"label":"ABC1 - Product 1","lower":"abc1","upper":"PRODUCT 1","len":4,"head":"ABC","n":2,"first":"blue","last":"black","red":false,"pair":["ABC1",null]}"#,
            r#"{"label":null,"lower":"abc2","upper":"","len":4,"head":"abc","n":0,"red":false,"pair":["abc2",null]}"#,
            r#"{"label":"café - x","lower":"café","upper":"X","len":4,"head":"caf","n":1,"first":"red","last":"red","red":true,"pair":["café",null]}"#,
        ]
    );
    assert!(
        run_err(items, r#"[{"$project": {"n": {"$size": "$item"}}}]"#)
            .contains("$size only supports an array, not string")
    );
    assert!(run_err(items, r#"[{"$project": {"n": {"$size": "$gone"}}}]"#).contains("missing"));
    assert!(
        run_err(items, r#"[{"$project": {"n": {"$concat": ["$item", 1]}}}]"#)
            .contains("$concat only supports strings, not int")
    );
    assert!(
        run_err(items, r#"[{"$project": {"n": {"$in": ["a", "$item"]}}}]"#).contains("an array")
    );
}

/// Where MongoDB checks types against nulls, case mapping, limits and long operands.
#[test]
fn expression_edge_cases() {
    let sales = r#"[{"_id": 1, "item": "abc", "price": 10}]"#;
    // Arguments are taken in order: a wrong type before a null fails, after one it does not.
    assert!(
        run_err(sales, r#"[{"$project": {"x": {"$add": ["$item", null]}}}]"#)
            .contains("$add only supports numbers")
    );
    assert_eq!(
        run(
            sales,
            r#"[{"$project": {"_id": 0, "x": {"$add": [null, "$item"]},
                "y": {"$subtract": ["$item", null]}, "e": {"$arrayElemAt": ["$item", null]}}}]"#
        ),
        [r#"{"x":null,"y":null,"e":null}"#]
    );
    assert!(run_err(
        r#"[{"n": -9223372036854775808}]"#,
        r#"[{"$project": {"x": {"$abs": "$n"}}}]"#
    )
    .contains("does not fit"));
    // Case changes are ASCII only, as MongoDB's.
    assert_eq!(
        run(
            r#"[{"_id": 1, "s": "Straße Über"}]"#,
            r#"[{"$project": {"_id": 0, "u": {"$toUpper": "$s"}, "l": {"$toLower": "$s"}}}]"#
        ),
        [r#"{"u":"STRAßE ÜBER","l":"straße Über"}"#]
    );
    // An operand in a message is cut short.
    let long = format!(r#"[{{"s": "{}"}}]"#, "é".repeat(10_000));
    let message = run_err(&long, r#"[{"$project": {"x": {"$size": "$s"}}}]"#);
    assert!(
        message.len() < 300 && message.ends_with("...)"),
        "{message}"
    );
}

/// `$project` with embedded documents: `{"stop": {"title": 1}}` is `{"stop.title": 1}`
/// ("$project (aggregation)": include or exclude fields of embedded documents).
#[test]
fn project_takes_embedded_specifications_as_dotted_paths() {
    let bookmarks = r#"[{"_id": 1, "user": "1234", "stop": {"title": "book1", "author": "xyz", "page": 32}},
                        {"_id": 2, "user": "7890", "stop": [{"title": "book2", "author": "abc", "page": 5},
                                                            {"title": "book3", "author": "ijk", "page": 100}]}]"#;
    let dotted = run(bookmarks, r#"[{"$project": {"stop.title": 1}}]"#);
    assert_eq!(
        dotted,
        [
            r#"{"_id":1,"stop":{"title":"book1"}}"#,
            r#"{"_id":2,"stop":[{"title":"book2"},{"title":"book3"}]}"#,
        ]
    );
    assert_eq!(
        run(bookmarks, r#"[{"$project": {"stop": {"title": 1}}}]"#),
        dotted
    );
    let excluded = run(
        bookmarks,
        r#"[{"$project": {"stop": {"author": 0, "page": 0}, "user": 0}}]"#,
    );
    assert_eq!(excluded, dotted);
    // Computed fields nest the same way, beside inclusions.
    assert_eq!(
        run(
            bookmarks,
            r#"[{"$match": {"_id": 1}}, {"$project": {"stop": {"title": 1, "next": {"$add": ["$stop.page", 1]}}}}]"#
        ),
        [r#"{"_id":1,"stop":{"title":"book1","next":33}}"#]
    );
    assert!(error(r#"[{"$project": {"stop": {}}}]"#).contains("empty document"));
}

/// `$mod`'s result type, as MongoDB's own tests have it (jstests/aggregation/expressions/
/// expression_mod.js): a whole double divisor keeps an integer dividend's remainder an
/// integer.
#[test]
fn mod_keeps_integers_unless_a_double_needs_a_fraction() {
    assert_eq!(
        run(
            r#"[{"_id": 1}]"#,
            r#"[{"$project": {"_id": 0, "a": {"$mod": [10, 3.0]}, "b": {"$mod": [10.5, 3]},
                "c": {"$mod": [10, 2.5]}, "d": {"$mod": [-7, 2]}, "e": {"$mod": [10, 3]},
                "f": {"$mod": [-9223372036854775808, -1]}}}]"#
        ),
        [r#"{"a":1,"b":1.5,"c":0.0,"d":-1,"e":1,"f":0}"#]
    );
}
