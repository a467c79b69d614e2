//! JSON documents and MongoDB's query language, independent of storage: the document
//! [`value::Value`] with MongoDB's type order, and [`query::Filter`], a parsed filter that
//! matches documents with MongoDB's semantics. (Issue: JSON document collections; design in
//! ADR 0008. Storage, indexes and the wire come on top of this.)

pub mod query;
pub mod value;
