//! JSON as clients send it: documents, filters, updates, sorts, projections and aggregation
//! pipelines, each parsed and then run against a document.
#![no_main]

use kvs_core::doc::aggregate::Pipeline;
use kvs_core::doc::cursor::{Projection, Sort};
use kvs_core::doc::query::Filter;
use kvs_core::doc::update::Update;
use kvs_core::doc::value::Value;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = Value::from_json(text) else {
        return;
    };
    let doc = Value::from_json(r#"{"_id": 1, "a": [1, {"b": "x"}], "n": 2.5, "s": "t"}"#).unwrap();
    if let Ok(filter) = Filter::parse(&value) {
        let _ = filter.matches(&doc);
    }
    if let Ok(update) = Update::parse(&value) {
        let mut changed = doc.clone();
        let _ = update.apply(&mut changed);
    }
    if let Ok(sort) = Sort::parse(&value) {
        let _ = sort.compare(&doc, &value);
    }
    if let Ok(Some(projection)) = Projection::parse(&value) {
        let _ = projection.apply(&doc);
    }
    if let Ok(pipeline) = Pipeline::parse(&value) {
        let _ = pipeline.run(vec![doc.clone(), value.clone()]);
    }
});
