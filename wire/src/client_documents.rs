//! The client library's document commands (`docs/documents.md`): insert, find, count,
//! update, remove, aggregate, indexes and collections, each a document command run by
//! [`Client::document`] with its reply read into Rust values.

use serde_json::{json, Value as JsonValue};

use crate::client::{Client, ClientError};
use crate::documents;

impl Client {
    /// Inserts documents into `coll`; returns their `_id`s in order (generated for those
    /// without one).
    pub fn insert(&self, coll: &str, docs: &[JsonValue]) -> Result<Vec<JsonValue>, ClientError> {
        documents::insert(&|c| self.document(c), coll, docs)
    }

    /// Every document `query` selects, reading page after page. `query` holds the find
    /// command's options: `filter`, `sort`, `skip`, `limit`, `projection`, `batchSize`.
    pub fn find(&self, coll: &str, query: &JsonValue) -> Result<Vec<JsonValue>, ClientError> {
        let mut out = Vec::new();
        self.find_each(coll, query, |doc| {
            out.push(doc);
            Ok(())
        })?;
        Ok(out)
    }

    /// Like [`Client::find`], handing each document to `each` as its page arrives.
    pub fn find_each(
        &self,
        coll: &str,
        query: &JsonValue,
        each: impl FnMut(JsonValue) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        documents::find_each(&|c| self.document(c), coll, query, each)
    }

    /// Counts the documents of `coll` the filter matches.
    pub fn count(&self, coll: &str, filter: &JsonValue) -> Result<u64, ClientError> {
        documents::count(&|c| self.document(c), coll, filter)
    }

    /// Updates the first (or, with `multi`, every) matching document; with `upsert`,
    /// inserts one when none matches. Returns the reply: `matched`, `modified` and, after
    /// an upsert, `upserted` (the new `_id`).
    pub fn update(
        &self,
        coll: &str,
        filter: &JsonValue,
        update: &JsonValue,
        upsert: bool,
        multi: bool,
    ) -> Result<JsonValue, ClientError> {
        self.document(&documents::update_command(
            coll, filter, update, upsert, multi,
        ))
    }

    /// Deletes the first (or, with `multi`, every) matching document; returns how many.
    pub fn remove(&self, coll: &str, filter: &JsonValue, multi: bool) -> Result<u64, ClientError> {
        documents::remove(&|c| self.document(c), coll, filter, multi)
    }

    /// Runs an aggregation pipeline; returns its documents.
    pub fn aggregate(
        &self,
        coll: &str,
        pipeline: &JsonValue,
    ) -> Result<Vec<JsonValue>, ClientError> {
        documents::aggregate(&|c| self.document(c), coll, pipeline)
    }

    /// Creates an index (`key` like `{"age": 1}`) and waits until it is built; returns
    /// its name.
    pub fn create_index(
        &self,
        coll: &str,
        key: &JsonValue,
        name: Option<&str>,
        unique: bool,
    ) -> Result<String, ClientError> {
        let mut command = json!({"createIndex": coll, "key": key, "unique": unique});
        if let Some(name) = name {
            command["name"] = json!(name);
        }
        let reply = self.document(&command)?;
        match reply["name"].as_str() {
            Some(name) => Ok(name.to_string()),
            None => Err(ClientError::Protocol(format!("createIndex reply {reply}"))),
        }
    }

    pub fn drop_index(&self, coll: &str, name: &str) -> Result<(), ClientError> {
        self.document(&json!({"dropIndex": coll, "name": name}))
            .map(|_| ())
    }

    /// The indexes of `coll`, `_id_` first.
    pub fn list_indexes(&self, coll: &str) -> Result<Vec<JsonValue>, ClientError> {
        let mut reply = self.document(&json!({"listIndexes": coll}))?;
        match reply["indexes"].take() {
            JsonValue::Array(indexes) => Ok(indexes),
            _ => Err(ClientError::Protocol(format!("listIndexes reply {reply}"))),
        }
    }

    /// How each shard would run the query, and what it examined running it.
    pub fn explain(&self, coll: &str, query: &JsonValue) -> Result<JsonValue, ClientError> {
        let mut command = json!({"explain": coll});
        if let (Some(fields), Some(options)) = (command.as_object_mut(), query.as_object()) {
            for (k, v) in options {
                fields.insert(k.clone(), v.clone());
            }
        }
        self.document(&command)
    }

    pub fn collections(&self) -> Result<Vec<String>, ClientError> {
        let reply = self.document(&json!({"listCollections": 1}))?;
        Ok(reply["collections"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Drops a collection; returns whether it existed.
    pub fn drop_collection(&self, coll: &str) -> Result<bool, ClientError> {
        let reply = self.document(&json!({"drop": coll}))?;
        Ok(reply["dropped"].as_bool().unwrap_or(false))
    }
}
