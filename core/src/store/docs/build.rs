//! A secondary index's life: created (ready at once over an empty collection), built in
//! steps that each index the next batch of documents as one logged command, so writes go
//! on between steps, failed (a unique index over duplicates) or dropped. The catalogue's
//! `built_to` records where the next step resumes, also after a restart.

use std::cmp::Ordering;

use super::catalog::{parse_index_key, Collection, IndexDef};
use super::keys::{
    doc_key, doc_prefix, id_of, index_key_owner, index_prefix, just_after, prefix_end,
};
use super::write::{reply, Outcome};
use crate::doc::binary;
use crate::doc::command::{check_name, DocError};
use crate::doc::index_key;
use crate::doc::value::{compare, Value};
use crate::log::LogFile;
use crate::store::{PagedStore, StoreError};

impl<F: LogFile> PagedStore<F> {
    pub(super) async fn doc_create_index(
        &self,
        index: u64,
        name: &str,
        index_name: &str,
        key: Value,
        unique: bool,
    ) -> Result<Outcome, StoreError> {
        let spec = match parse_index_key(&key) {
            Ok(spec) => spec,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = check_name("index", index_name) {
            return Ok(Err(e));
        }
        if index_name == "_id_" {
            return Ok(Err(DocError::bad("the index name _id_ is reserved")));
        }
        let mut coll = match self.doc_collection(name).await? {
            Some(coll) => coll,
            None => self.new_collection(name),
        };
        if let Some(def) = coll.index(index_name) {
            if compare(&def.key, &key) == Ordering::Equal && def.unique == unique {
                return Ok(reply(vec![
                    ("created", Value::Bool(false)),
                    ("ready", Value::Bool(def.ready)),
                ]));
            }
            return Ok(Err(DocError::bad(format!(
                "an index named {index_name} exists on {name} with other options"
            ))));
        }
        if let Some(def) = coll.indexes.iter().find(|d| d.spec == spec) {
            return Ok(Err(DocError::bad(format!(
                "index {} of {name} has the same key",
                def.name
            ))));
        }
        let prefix = doc_prefix(coll.id);
        let empty = self
            .scan_tree(&prefix, Some(&prefix_end(&prefix)), 1)
            .await?
            .is_empty();
        coll.failed.retain(|(n, _)| n != index_name);
        coll.indexes.push(IndexDef {
            name: index_name.to_string(),
            id: self.next_catalog_id(),
            key,
            spec,
            unique,
            multikey: false,
            ready: empty,
            built_to: None,
        });
        self.save_collection(index, &coll).await?;
        Ok(reply(vec![
            ("created", Value::Bool(true)),
            ("ready", Value::Bool(empty)),
        ]))
    }

    pub(super) async fn doc_build_index(
        &self,
        index: u64,
        name: &str,
        index_name: &str,
        batch: u32,
    ) -> Result<Outcome, StoreError> {
        let Some(mut coll) = self.doc_collection(name).await? else {
            return Ok(Err(DocError::not_found(format!("no collection {name}"))));
        };
        let Some(at) = coll.indexes.iter().position(|d| d.name == index_name) else {
            return Ok(Err(DocError::not_found(format!(
                "no index {index_name} on {name}"
            ))));
        };
        if coll.indexes[at].ready {
            return Ok(reply(vec![
                ("ready", Value::Bool(true)),
                ("indexed", Value::Int(0)),
            ]));
        }
        let prefix = doc_prefix(coll.id);
        let start = match &coll.indexes[at].built_to {
            Some(id) => just_after(&doc_key(coll.id, &index_key::key(id))),
            None => prefix.clone(),
        };
        let docs = self
            .scan_tree(&start, Some(&prefix_end(&prefix)), batch as usize)
            .await?;
        let done = docs.len() < batch as usize;
        let def = coll.indexes[at].clone();
        let mut indexed = 0;
        let mut last_id = None;
        for (key, bytes) in docs {
            let doc = binary::from_bytes(&bytes).map_err(|e| self.corrupt_record(&key, e.0))?;
            let id_key = &key[prefix.len()..];
            let (entries, multikey) = match def.entries_of(&doc, id_key) {
                Ok(found) => found,
                Err(e) => return self.fail_build(index, coll, at, e.message).await,
            };
            if def.unique {
                for entry in &entries {
                    if let Some(owner) = self.key_taken(entry, id_key).await? {
                        let message = format!(
                            "duplicate key in unique index {index_name} of {name}: _id {} and _id {}",
                            id_of(&doc),
                            index_key_owner(&owner)
                        );
                        return self.fail_build(index, coll, at, message).await;
                    }
                }
            }
            for entry in entries {
                self.put(index, entry, id_key.to_vec()).await?;
            }
            coll.indexes[at].multikey |= multikey;
            indexed += 1;
            last_id = Some(id_of(&doc).clone());
        }
        let def = &mut coll.indexes[at];
        if done {
            def.ready = true;
            def.built_to = None;
        } else {
            def.built_to = last_id;
        }
        let ready = def.ready;
        self.save_collection(index, &coll).await?;
        Ok(reply(vec![
            ("ready", Value::Bool(ready)),
            ("indexed", Value::Int(indexed)),
        ]))
    }

    /// Ends a failed index build: the index and its entries go, the reason stays in the
    /// catalogue for the creator to read. The command itself succeeds (it changed state).
    async fn fail_build(
        &self,
        index: u64,
        mut coll: Collection,
        at: usize,
        message: String,
    ) -> Result<Outcome, StoreError> {
        let def = self.remove_index(index, &mut coll, at).await?;
        coll.failed.push((def.name, message.clone()));
        self.save_collection(index, &coll).await?;
        Ok(reply(vec![
            ("ready", Value::Bool(false)),
            ("failed", Value::String(message)),
        ]))
    }

    /// Takes index `at` out of `coll` and deletes its entries (the caller saves `coll`).
    async fn remove_index(
        &self,
        index: u64,
        coll: &mut Collection,
        at: usize,
    ) -> Result<IndexDef, StoreError> {
        let def = coll.indexes.remove(at);
        let prefix = index_prefix(def.id);
        self.delete_range(index, &prefix, &prefix_end(&prefix))
            .await?;
        Ok(def)
    }

    pub(super) async fn doc_drop_index(
        &self,
        index: u64,
        name: &str,
        index_name: &str,
    ) -> Result<Outcome, StoreError> {
        let coll = self.doc_collection(name).await?;
        let Some(mut coll) = coll else {
            return Ok(Err(DocError::not_found(format!("no collection {name}"))));
        };
        if index_name == "_id_" {
            return Ok(Err(DocError::bad("the _id index cannot be dropped")));
        }
        let Some(at) = coll.indexes.iter().position(|d| d.name == index_name) else {
            return Ok(Err(DocError::not_found(format!(
                "no index {index_name} on {name}"
            ))));
        };
        self.remove_index(index, &mut coll, at).await?;
        self.save_collection(index, &coll).await?;
        Ok(reply(vec![("dropped", Value::Bool(true))]))
    }
}
