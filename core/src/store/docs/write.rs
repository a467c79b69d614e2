//! Document writes: insert, update (with upsert), delete, and dropping a collection, each
//! changing documents and all their index entries within one command. A command checks
//! everything first (sizes, duplicate `_id`s, unique indexes) and only then changes the
//! tree, so a refused command changes nothing.

use std::collections::{HashMap, HashSet};

use super::catalog::{default_index_name, parse_index_key, Collection};
use super::keys::{
    catalog_key, doc_key, doc_prefix, id_of, index_key_owner, index_prefix, prefix_end,
};
use crate::doc::binary;
use crate::doc::command::DocError;
use crate::doc::index_key;
use crate::doc::plan::keys_of;
use crate::doc::query::{Cond, Filter};
use crate::doc::update::Update;
use crate::doc::value::{Value, DEPTH_MAX};
use crate::limits::{TREE_KEY_SIZE_MAX, VALUE_SIZE_MAX};
use crate::log::LogFile;
use crate::store::{PagedStore, StoreError};

/// Largest encoded `_id`, in bytes.
pub const ID_KEY_SIZE_MAX: usize = 512;
/// Largest document, encoded (MongoDB's limit, in our encoding).
pub const DOCUMENT_SIZE_MAX: usize = VALUE_SIZE_MAX;

/// The equality conditions of a filter's top level, as (path, value): what an upsert
/// starts its new document from.
fn equalities(filter: &Filter, out: &mut Vec<(Vec<String>, Value)>) {
    match filter {
        Filter::And(parts) => parts.iter().for_each(|p| equalities(p, out)),
        Filter::Field {
            path,
            cond: Cond::Eq(v),
        } => out.push((path.clone(), v.clone())),
        Filter::Field {
            path,
            cond: Cond::Every(conds),
        } => {
            for c in conds {
                if let Cond::Eq(v) = c {
                    out.push((path.clone(), v.clone()));
                }
            }
        }
        _ => {}
    }
}

fn set_path(doc: &mut Value, path: &[String], value: Value) {
    let Value::Object(fields) = doc else { return };
    let (first, rest) = path.split_first().expect("a path has a field");
    if rest.is_empty() {
        match fields.iter_mut().find(|(k, _)| k == first) {
            Some((_, v)) => *v = value,
            None => fields.push((first.clone(), value)),
        }
        return;
    }
    if !fields.iter().any(|(k, _)| k == first) {
        fields.push((first.clone(), Value::Object(Vec::new())));
    }
    let (_, child) = fields
        .iter_mut()
        .find(|(k, _)| k == first)
        .expect("just added");
    set_path(child, rest, value);
}

/// The document an upsert inserts when nothing matched: the filter's equality fields,
/// then the update (operators applied to it, or the replacement instead of it). Its `_id`
/// is the filter's, if it names one, or `new_id`.
pub fn upsert_document(filter: &Filter, update: &Update, new_id: Value) -> Result<Value, DocError> {
    let mut doc = Value::Object(Vec::new());
    let mut seeds = Vec::new();
    equalities(filter, &mut seeds);
    for (path, value) in seeds {
        set_path(&mut doc, &path, value);
    }
    let id = doc.get("_id").cloned().unwrap_or(new_id);
    match update {
        Update::Replace(replacement) => doc = replacement.clone(),
        Update::Operators(_) => update.apply(&mut doc)?,
    }
    Ok(id_first(doc, id))
}

/// Puts `_id` first, as MongoDB stores it.
fn id_first(doc: Value, id: Value) -> Value {
    let Value::Object(fields) = doc else {
        return doc;
    };
    let mut out = Vec::with_capacity(fields.len() + 1);
    out.push(("_id".to_string(), id));
    out.extend(fields.into_iter().filter(|(k, _)| k != "_id"));
    Value::Object(out)
}

/// A document ready to be written: its `_id` key, encoding and index entries.
struct Prepared {
    id_key: Vec<u8>,
    bytes: Vec<u8>,
    /// Per index of the collection (in order): its entries, and whether multikey.
    entries: Vec<(Vec<Vec<u8>>, bool)>,
}

fn prepare(coll: Option<&Collection>, doc: &Value) -> Result<Prepared, DocError> {
    let Value::Object(_) = doc else {
        return Err(DocError::bad(format!("a document is an object, not {doc}")));
    };
    let Some(id) = doc.get("_id") else {
        return Err(DocError::bad("a stored document needs an _id"));
    };
    if matches!(id, Value::Array(_)) {
        return Err(DocError::bad(format!("_id cannot be an array: {id}")));
    }
    // An update or an upsert's dotted paths can nest deeper than any JSON accepted: such
    // a document could not be read back.
    if doc.depth() > DEPTH_MAX {
        return Err(DocError::bad(format!(
            "document {id} would nest deeper than {DEPTH_MAX} levels"
        )));
    }
    let id_key = index_key::key(id);
    if id_key.len() > ID_KEY_SIZE_MAX {
        return Err(DocError::too_large(format!(
            "an _id of {} encoded bytes exceeds the {ID_KEY_SIZE_MAX}-byte limit",
            id_key.len()
        )));
    }
    let bytes = binary::to_bytes(doc);
    if bytes.len() > DOCUMENT_SIZE_MAX {
        return Err(DocError::too_large(format!(
            "document {id} of {} bytes exceeds the {DOCUMENT_SIZE_MAX}-byte limit",
            bytes.len()
        )));
    }
    let entries = match coll {
        Some(coll) => coll
            .indexes
            .iter()
            .map(|index| index.entries_of(doc, &id_key))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    Ok(Prepared {
        id_key,
        bytes,
        entries,
    })
}

/// What storing `doc` in a collection whose indexes have the key specs `index_keys` would
/// refuse, found without storing it: a transaction's coordinator checks the documents it
/// will commit, since a refusal when the commit applies would come too late (ADR 0024).
/// The same checks as a write's, in the same words.
pub fn check_document(doc: &Value, index_keys: &[Value]) -> Result<(), DocError> {
    let prepared = prepare(None, doc)?;
    for key in index_keys {
        let spec = parse_index_key(key)?;
        for k in keys_of(doc, &spec).0 {
            // The length of `IndexDef::entry_key`'s key (every index id encodes alike).
            let entry = index_prefix(0).len() + k.len() + prepared.id_key.len();
            if entry > TREE_KEY_SIZE_MAX {
                return Err(DocError::too_large(format!(
                    "index {}: a key of {entry} bytes exceeds the {TREE_KEY_SIZE_MAX}-byte limit",
                    default_index_name(key)
                )));
            }
        }
    }
    Ok(())
}

/// The outcome of a document command: its reply, or why nothing changed.
pub(super) type Outcome = Result<Value, DocError>;

pub(super) fn reply(fields: Vec<(&str, Value)>) -> Outcome {
    Ok(Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    ))
}

impl<F: LogFile> PagedStore<F> {
    pub(super) async fn doc_insert(
        &self,
        index: u64,
        name: &str,
        docs: Vec<Value>,
    ) -> Result<Outcome, StoreError> {
        let existing = self.doc_collection(name).await?;
        let mut prepared = Vec::with_capacity(docs.len());
        let mut ids: HashSet<Vec<u8>> = HashSet::new();
        for doc in &docs {
            let p = match prepare(existing.as_ref(), doc) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let id = id_of(doc);
            if !ids.insert(p.id_key.clone()) {
                return Ok(Err(DocError::duplicate(format!(
                    "duplicate key: _id {id} appears twice in the insert"
                ))));
            }
            if let Some(coll) = &existing {
                if self
                    .run(|st| st.lookup(&doc_key(coll.id, &p.id_key)))
                    .await?
                    .is_some()
                {
                    return Ok(Err(DocError::duplicate(format!(
                        "duplicate key: a document with _id {id} exists in {name}"
                    ))));
                }
            }
            prepared.push(p);
        }
        if let Some(coll) = &existing {
            let changes: Vec<(&Prepared, Option<&Prepared>)> =
                prepared.iter().map(|p| (p, None)).collect();
            if let Err(e) = self.check_unique(coll, &changes).await? {
                return Ok(Err(e));
            }
        }
        let mut coll = match existing {
            Some(coll) => coll,
            None => {
                let coll = self.new_collection(name);
                self.save_collection(index, &coll).await?;
                coll
            }
        };
        let mut catalog_changed = false;
        for p in &prepared {
            self.put(index, doc_key(coll.id, &p.id_key), p.bytes.clone())
                .await?;
            for (def, (entries, multikey)) in coll.indexes.iter_mut().zip(&p.entries) {
                for entry in entries {
                    self.put(index, entry.clone(), p.id_key.clone()).await?;
                }
                if *multikey && !def.multikey {
                    def.multikey = true;
                    catalog_changed = true;
                }
            }
        }
        if catalog_changed {
            self.save_collection(index, &coll).await?;
        }
        Ok(reply(vec![("inserted", Value::Int(prepared.len() as i64))]))
    }

    /// Checks the unique indexes for a set of changes (new version, old version): no key
    /// of a new version may be held by another document, either in the index (by a
    /// document the changes do not move off it) or among the changes themselves.
    async fn check_unique(
        &self,
        coll: &Collection,
        changes: &[(&Prepared, Option<&Prepared>)],
    ) -> Result<Result<(), DocError>, StoreError> {
        for (i, def) in coll.indexes.iter().enumerate() {
            if !def.unique {
                continue;
            }
            // Keys (without the _id part) the changed documents will hold, and by whom.
            let mut claimed: HashMap<Vec<u8>, &[u8]> = HashMap::new();
            // Entries the changes remove.
            let mut leaving: HashSet<Vec<u8>> = HashSet::new();
            for (new, old) in changes {
                if let Some(old) = old {
                    for entry in &old.entries[i].0 {
                        leaving.insert(entry.clone());
                    }
                }
                for entry in &new.entries[i].0 {
                    let key = entry[..entry.len() - new.id_key.len()].to_vec();
                    if let Some(other) = claimed.insert(key, &new.id_key) {
                        if other != new.id_key.as_slice() {
                            return Ok(Err(DocError::duplicate(format!(
                                "duplicate key in unique index {} of {}",
                                def.name, coll.name
                            ))));
                        }
                    }
                }
            }
            for (new, _) in changes {
                for entry in &new.entries[i].0 {
                    let key_prefix = &entry[..entry.len() - new.id_key.len()];
                    let found = self
                        .scan_tree(key_prefix, Some(&prefix_end(key_prefix)), 64)
                        .await?;
                    for (held, owner) in found {
                        if owner != new.id_key && !leaving.contains(&held) {
                            let who = index_key_owner(&owner);
                            return Ok(Err(DocError::duplicate(format!(
                                "duplicate key in unique index {} of {}: the key is held by _id {who}",
                                def.name, coll.name
                            ))));
                        }
                    }
                }
            }
        }
        Ok(Ok(()))
    }

    pub(super) async fn doc_update(
        &self,
        index: u64,
        name: &str,
        filter: &Filter,
        update: &Update,
        multi: bool,
        upsert: Option<Value>,
    ) -> Result<Outcome, StoreError> {
        let existing = self.doc_collection(name).await?;
        let mut matched: Vec<(Vec<u8>, Value)> = Vec::new();
        if let Some(coll) = &existing {
            matched = self.matching(coll, filter, multi).await?;
        }
        if matched.is_empty() {
            let Some(new_id) = upsert else {
                return Ok(reply(vec![
                    ("matched", Value::Int(0)),
                    ("modified", Value::Int(0)),
                ]));
            };
            let doc = match upsert_document(filter, update, new_id) {
                Ok(doc) => doc,
                Err(e) => return Ok(Err(e)),
            };
            let id = id_of(&doc).clone();
            return Ok(match self.doc_insert(index, name, vec![doc]).await? {
                Ok(_) => reply(vec![
                    ("matched", Value::Int(0)),
                    ("modified", Value::Int(0)),
                    ("upserted", id),
                ]),
                Err(e) => Err(e),
            });
        }
        let mut coll = existing.expect("documents matched");
        let mut changes: Vec<(Prepared, Prepared)> = Vec::new();
        for (_, old) in &matched {
            let mut new = old.clone();
            if let Err(e) = update.apply(&mut new) {
                return Ok(Err(DocError::bad(format!(
                    "update of _id {}: {}",
                    id_of(old),
                    e.0
                ))));
            }
            if new == *old {
                continue;
            }
            let old_p = match prepare(Some(&coll), old) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let new_p = match prepare(Some(&coll), &new) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            changes.push((new_p, old_p));
        }
        let pairs: Vec<(&Prepared, Option<&Prepared>)> =
            changes.iter().map(|(n, o)| (n, Some(o))).collect();
        if let Err(e) = self.check_unique(&coll, &pairs).await? {
            return Ok(Err(e));
        }
        let mut catalog_changed = false;
        for (new, old) in &changes {
            self.put(index, doc_key(coll.id, &new.id_key), new.bytes.clone())
                .await?;
            for (i, def) in coll.indexes.iter_mut().enumerate() {
                let (old_entries, _) = &old.entries[i];
                let (new_entries, multikey) = &new.entries[i];
                for entry in old_entries {
                    if !new_entries.contains(entry) {
                        self.delete(index, entry).await?;
                    }
                }
                for entry in new_entries {
                    if !old_entries.contains(entry) {
                        self.put(index, entry.clone(), new.id_key.clone()).await?;
                    }
                }
                if *multikey && !def.multikey {
                    def.multikey = true;
                    catalog_changed = true;
                }
            }
        }
        if catalog_changed {
            self.save_collection(index, &coll).await?;
        }
        Ok(reply(vec![
            ("matched", Value::Int(matched.len() as i64)),
            ("modified", Value::Int(changes.len() as i64)),
        ]))
    }

    pub(super) async fn doc_delete(
        &self,
        index: u64,
        name: &str,
        filter: &Filter,
        multi: bool,
    ) -> Result<Outcome, StoreError> {
        let Some(coll) = self.doc_collection(name).await? else {
            return Ok(reply(vec![("deleted", Value::Int(0))]));
        };
        let matched = self.matching(&coll, filter, multi).await?;
        for (id_key, doc) in &matched {
            self.remove_doc(index, &coll, id_key, doc).await?;
        }
        Ok(reply(vec![("deleted", Value::Int(matched.len() as i64))]))
    }

    async fn remove_doc(
        &self,
        index: u64,
        coll: &Collection,
        id_key: &[u8],
        doc: &Value,
    ) -> Result<(), StoreError> {
        self.delete(index, &doc_key(coll.id, id_key)).await?;
        for def in &coll.indexes {
            // Keys of a stored document were within limits when it was written.
            if let Ok((entries, _)) = def.entries_of(doc, id_key) {
                for entry in entries {
                    self.delete(index, &entry).await?;
                }
            }
        }
        Ok(())
    }

    /// Deletes every key in `[start, end)`; returns how many.
    pub(super) async fn delete_range(
        &self,
        index: u64,
        start: &[u8],
        end: &[u8],
    ) -> Result<u64, StoreError> {
        let mut deleted = 0;
        let mut from = start.to_vec();
        loop {
            // One leaf at a time; the fence is where the next leaf starts, and every key
            // before it in the range is gone once this leaf's are deleted.
            let (entries, next) = self
                .run(|st| st.scan_leaf(&from, Some(end), usize::MAX))
                .await?;
            let keys: Vec<Vec<u8>> = entries
                .into_iter()
                .map(|e| Vec::<u8>::from(e.key))
                .collect();
            let reached_end = next.as_deref().is_some_and(|next| next >= end);
            for key in &keys {
                self.delete(index, key).await?;
                deleted += 1;
            }
            match next {
                Some(next) if !reached_end && next.as_slice() < end => from = next,
                _ => return Ok(deleted),
            }
        }
    }

    pub(super) async fn doc_drop(&self, index: u64, name: &str) -> Result<Outcome, StoreError> {
        let Some(coll) = self.doc_collection(name).await? else {
            return Ok(reply(vec![("dropped", Value::Bool(false))]));
        };
        let prefix = doc_prefix(coll.id);
        self.delete_range(index, &prefix, &prefix_end(&prefix))
            .await?;
        for def in &coll.indexes {
            let prefix = index_prefix(def.id);
            self.delete_range(index, &prefix, &prefix_end(&prefix))
                .await?;
        }
        self.delete(index, &catalog_key(name)).await?;
        self.catalog
            .borrow_mut()
            .as_mut()
            .expect("loaded")
            .collections
            .remove(name);
        Ok(reply(vec![("dropped", Value::Bool(true))]))
    }
}
