//! JSON documents and MongoDB's query language, independent of storage:
//!
//! - [`value`]: the document [`value::Value`] (fields in order, integers apart from doubles)
//!   and MongoDB's comparison order.
//! - [`binary`]: the compact binary form documents are stored in.
//! - [`command`]: document writes as they are logged, and their errors.
//! - [`index_key`]: values as index keys whose byte order is MongoDB's order.
//! - [`query`]: filters, parsed once and matched against documents with MongoDB's semantics.
//! - [`update`]: replacement documents and update operators.
//! - [`cursor`]: sort, skip, limit and projection over matched documents.
//! - [`aggregate`]: the aggregation pipeline.
//! - [`plan`]: index keys of documents, and the index ranges a filter needs.
//!
//! (Issue: JSON document collections; design in ADR 0008. Storage, indexes, the wire and
//! the CLI come on top of this.)

pub mod aggregate;
pub mod binary;
pub mod command;
pub mod cursor;
pub mod index_key;
pub mod plan;
pub mod query;
pub mod update;
pub mod value;
