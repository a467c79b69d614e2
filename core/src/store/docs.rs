//! Document collections and their secondary indexes, in the shard's one B+tree.
//!
//! ```text
//! space 2  documents      2 · collection id (u32 BE) · index key of _id   -> document (binary)
//! space 3  index entries  3 · index id (u32 BE) · index key · key of _id  -> key of _id
//! space 4  catalogue      4 · collection name                            -> definition
//!                         4                                              -> {"next": id}
//! ```
//!
//! Documents sit in `_id` order (the [`index_key`] encoding orders bytes as MongoDB orders
//! values), so the collection itself is the `_id` index. An index entry's value repeats the
//! `_id` key, so a scan of index entries finds its documents without parsing its keys.
//!
//! Every write is one [`DocCommand`] applied inside one log entry's apply: the document and
//! all its index entries change together or not at all (no checkpoint can fall inside a
//! command, and recovery replays whole commands). A command checks everything first
//! (duplicate `_id`, unique indexes, sizes, a bad filter or update) and only then changes
//! the tree; a refused command changes nothing.
//!
//! Reads ([`PagedStore::doc_find`]) plan per shard: an `_id` range, a ready secondary index
//! whose leading field the filter bounds (or whose order is the requested sort), or a scan
//! of the collection. The filter is always applied again to each document read, so an
//! index's bounds only need to be loose enough.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::{PagedStore, StoreError, SPACE_CATALOG, SPACE_DOC, SPACE_INDEX};
use crate::doc::binary;
use crate::doc::command::{check_name, DocCommand, DocError, DocErrorKind};
use crate::doc::cursor::{Sort, SortKey};
use crate::doc::index_key;
use crate::doc::plan::{index_bounds, keys_of, IndexSpec, KeyRange};
use crate::doc::query::{split_path, Cond, Filter};
use crate::doc::update::Update;
use crate::doc::value::{compare, Value, DEPTH_MAX};
use crate::limits::{TREE_KEY_SIZE_MAX, VALUE_SIZE_MAX};
use crate::log::LogFile;
use crate::state::CommandResult;

/// Largest encoded `_id`, in bytes.
pub const ID_KEY_SIZE_MAX: usize = 512;
/// Largest document, encoded (MongoDB's limit, in our encoding).
pub const DOCUMENT_SIZE_MAX: usize = VALUE_SIZE_MAX;
/// Most fields of one index.
pub const INDEX_FIELDS_MAX: usize = 32;
/// Entries read per step of a scan.
const SCAN_CHUNK: usize = 256;

/// A secondary index's definition.
#[derive(Debug, Clone)]
pub struct IndexDef {
    pub name: String,
    pub id: u32,
    /// The key document it was created with: `{"field": 1 | -1, ...}`.
    pub key: Value,
    pub spec: IndexSpec,
    pub unique: bool,
    /// Some document gave more than one key (an array): bounds on two conditions of one
    /// field cannot be intersected.
    pub multikey: bool,
    /// Built: the planner may use it.
    pub ready: bool,
    /// While building: the `_id` of the last document indexed so far.
    pub built_to: Option<Value>,
}

/// A collection's definition.
#[derive(Debug, Clone)]
pub struct Collection {
    pub name: String,
    pub id: u32,
    pub indexes: Vec<IndexDef>,
    /// Index builds that failed (a unique index over duplicates): name and reason.
    pub failed: Vec<(String, String)>,
}

/// Every collection of the shard, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub collections: BTreeMap<String, Collection>,
    next_id: u32,
}

/// Parses an index key document into its spec.
pub fn parse_index_key(key: &Value) -> Result<IndexSpec, DocError> {
    let Value::Object(fields) = key else {
        return Err(DocError::bad(format!(
            "an index key is a document like {{\"field\": 1}}, not {key}"
        )));
    };
    if fields.is_empty() || fields.len() > INDEX_FIELDS_MAX {
        return Err(DocError::bad(format!(
            "an index has 1 to {INDEX_FIELDS_MAX} fields, not {}",
            fields.len()
        )));
    }
    let mut spec = IndexSpec { fields: Vec::new() };
    for (path, direction) in fields {
        let descending = match direction.as_f64() {
            Some(1.0) => false,
            Some(-1.0) => true,
            _ => {
                return Err(DocError::bad(format!(
                    "index key {path:?} takes 1 or -1, not {direction}"
                )))
            }
        };
        let path = split_path("index key", path, false)?;
        if spec.fields.iter().any(|(p, _)| *p == path) {
            return Err(DocError::bad(format!(
                "index key names {:?} twice",
                path.join(".")
            )));
        }
        spec.fields.push((path, descending));
    }
    Ok(spec)
}

/// MongoDB's default index name: `field_1_other_-1`.
pub fn default_index_name(key: &Value) -> String {
    match key {
        Value::Object(fields) => fields
            .iter()
            .map(|(f, d)| format!("{f}_{d}"))
            .collect::<Vec<_>>()
            .join("_"),
        other => other.to_string(),
    }
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

impl IndexDef {
    fn to_value(&self) -> Value {
        let mut f = vec![
            ("name".to_string(), s(&self.name)),
            ("id".to_string(), Value::Int(i64::from(self.id))),
            ("key".to_string(), self.key.clone()),
            ("unique".to_string(), Value::Bool(self.unique)),
            ("multikey".to_string(), Value::Bool(self.multikey)),
            ("ready".to_string(), Value::Bool(self.ready)),
        ];
        if let Some(id) = &self.built_to {
            f.push(("builtTo".to_string(), id.clone()));
        }
        Value::Object(f)
    }

    fn from_value(v: &Value) -> Option<IndexDef> {
        let key = v.get("key")?.clone();
        Some(IndexDef {
            name: as_str(v.get("name")?)?,
            id: as_u32(v.get("id")?)?,
            spec: parse_index_key(&key).ok()?,
            key,
            unique: as_bool(v.get("unique")?)?,
            multikey: as_bool(v.get("multikey")?)?,
            ready: as_bool(v.get("ready")?)?,
            built_to: v.get("builtTo").cloned(),
        })
    }

    /// The tree key of this index's entry for one index key and `_id` key.
    fn entry_key(&self, key: &[u8], id_key: &[u8]) -> Vec<u8> {
        let mut k = index_prefix(self.id);
        k.extend_from_slice(key);
        k.extend_from_slice(id_key);
        k
    }

    /// The tree keys of `doc`'s entries; whether the document makes the index multikey.
    fn entries_of(&self, doc: &Value, id_key: &[u8]) -> Result<(Vec<Vec<u8>>, bool), DocError> {
        let (keys, multikey) = keys_of(doc, &self.spec);
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = self.entry_key(&key, id_key);
            if entry.len() > TREE_KEY_SIZE_MAX {
                return Err(DocError::too_large(format!(
                    "index {}: a key of {} bytes exceeds the {TREE_KEY_SIZE_MAX}-byte limit",
                    self.name,
                    entry.len()
                )));
            }
            entries.push(entry);
        }
        Ok((entries, multikey))
    }

    /// Describes the index for `listIndexes`.
    pub fn describe(&self) -> Value {
        Value::Object(vec![
            ("name".to_string(), s(&self.name)),
            ("key".to_string(), self.key.clone()),
            ("unique".to_string(), Value::Bool(self.unique)),
            ("multikey".to_string(), Value::Bool(self.multikey)),
            (
                "state".to_string(),
                s(if self.ready { "ready" } else { "building" }),
            ),
        ])
    }
}

fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}
fn as_u32(v: &Value) -> Option<u32> {
    match v {
        Value::Int(n) => u32::try_from(*n).ok(),
        _ => None,
    }
}
fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

impl Collection {
    fn to_value(&self) -> Value {
        Value::Object(vec![
            ("name".to_string(), s(&self.name)),
            ("id".to_string(), Value::Int(i64::from(self.id))),
            (
                "indexes".to_string(),
                Value::Array(self.indexes.iter().map(IndexDef::to_value).collect()),
            ),
            (
                "failed".to_string(),
                Value::Array(
                    self.failed
                        .iter()
                        .map(|(n, e)| Value::Array(vec![s(n), s(e)]))
                        .collect(),
                ),
            ),
        ])
    }

    fn from_value(v: &Value) -> Option<Collection> {
        let Value::Array(indexes) = v.get("indexes")? else {
            return None;
        };
        let Value::Array(failed) = v.get("failed")? else {
            return None;
        };
        Some(Collection {
            name: as_str(v.get("name")?)?,
            id: as_u32(v.get("id")?)?,
            indexes: indexes
                .iter()
                .map(IndexDef::from_value)
                .collect::<Option<_>>()?,
            failed: failed
                .iter()
                .map(|f| match f {
                    Value::Array(p) if p.len() == 2 => Some((as_str(&p[0])?, as_str(&p[1])?)),
                    _ => None,
                })
                .collect::<Option<_>>()?,
        })
    }

    fn index(&self, name: &str) -> Option<&IndexDef> {
        self.indexes.iter().find(|i| i.name == name)
    }
}

/// The first key of collection `id`'s documents.
pub fn doc_prefix(id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + 16);
    k.push(SPACE_DOC);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn doc_key(coll: u32, id_key: &[u8]) -> Vec<u8> {
    let mut k = doc_prefix(coll);
    k.extend_from_slice(id_key);
    k
}

/// The first key of index `id`'s entries.
pub fn index_prefix(id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + 32);
    k.push(SPACE_INDEX);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn catalog_key(name: &str) -> Vec<u8> {
    let mut k = vec![SPACE_CATALOG];
    k.extend_from_slice(name.as_bytes());
    k
}

/// The smallest key above every key starting with `prefix`. Every prefix here starts with
/// its space's byte (never 0xFF), so there is one.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    crate::doc::plan::prefix_end(prefix).expect("a key prefix starts with its space byte")
}

/// Ranges of keys after `prefix` as ranges of tree keys.
fn under(prefix: &[u8], ranges: &[KeyRange]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let with_prefix = |tail: &[u8]| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(tail);
        k
    };
    ranges
        .iter()
        .map(|(start, end)| {
            let end = match end {
                Some(end) => with_prefix(end),
                None => prefix_end(prefix),
            };
            (with_prefix(start), end)
        })
        .collect()
}

/// The key just after `key` (no key lies between them).
fn just_after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// The `_id` of a stored document.
fn id_of(doc: &Value) -> &Value {
    doc.get("_id").unwrap_or(&Value::Null)
}

/// The pseudo-index the collection's own `_id` order forms.
fn id_spec() -> IndexSpec {
    IndexSpec {
        fields: vec![(vec!["_id".to_string()], false)],
    }
}

/// How a query reads its candidates.
#[derive(Debug, Clone)]
pub enum Access {
    /// Every document, in `_id` order.
    CollScan,
    /// Ranges of `_id` keys.
    IdRanges(Vec<KeyRange>),
    /// Ranges of a secondary index (all of it when `ranges` is None).
    Index {
        name: String,
        ranges: Option<Vec<KeyRange>>,
    },
}

/// What a read did, for `explain`.
#[derive(Debug, Clone)]
pub struct FindStats {
    pub access: Access,
    /// The access yields documents in the requested order: the read stops at the limit.
    pub ordered: bool,
    pub keys_examined: u64,
    pub docs_examined: u64,
}

impl FindStats {
    /// Before a read: nothing examined yet (a collection that does not exist stays so).
    fn new() -> FindStats {
        FindStats {
            access: Access::CollScan,
            ordered: true,
            keys_examined: 0,
            docs_examined: 0,
        }
    }

    /// The plan and its counts as a document.
    pub fn describe(&self, returned: u64) -> Value {
        let ranges = |r: &[KeyRange]| {
            Value::Array(
                r.iter()
                    .map(|(start, end)| {
                        Value::Array(vec![
                            s(&index_key::describe_bound(start)),
                            end.as_ref()
                                .map_or(s("end"), |e| s(&index_key::describe_bound(e))),
                        ])
                    })
                    .collect(),
            )
        };
        let mut f = Vec::new();
        match &self.access {
            Access::CollScan => f.push(("stage".to_string(), s("COLLSCAN"))),
            Access::IdRanges(r) => {
                f.push(("stage".to_string(), s("IXSCAN")));
                f.push(("index".to_string(), s("_id_")));
                f.push(("bounds".to_string(), ranges(r)));
            }
            Access::Index { name, ranges: r } => {
                f.push(("stage".to_string(), s("IXSCAN")));
                f.push(("index".to_string(), s(name)));
                f.push(("bounds".to_string(), r.as_deref().map_or(s("all"), ranges)));
            }
        }
        f.push(("providesSort".to_string(), Value::Bool(self.ordered)));
        f.push((
            "keysExamined".to_string(),
            Value::Int(self.keys_examined as i64),
        ));
        f.push((
            "docsExamined".to_string(),
            Value::Int(self.docs_examined as i64),
        ));
        f.push(("nReturned".to_string(), Value::Int(returned as i64)));
        Value::Object(f)
    }
}

/// A read of one shard's part of a collection.
#[derive(Debug, Clone)]
pub struct FindQuery {
    pub filter: Filter,
    pub sort: Sort,
    /// At most this many documents (the first in order).
    pub limit: Option<usize>,
    /// Only documents after this position (a cursor): the sort keys and the `_id` of the
    /// last document already returned.
    pub after: Option<After>,
}

/// A cursor's position: the sort keys ([`Sort::position`]) and `_id` of a document.
#[derive(Debug, Clone)]
pub struct After {
    pub keys: Vec<SortKey>,
    pub id: Value,
}

impl After {
    /// The position of `doc` in `sort`'s order, as a cursor carries it.
    pub fn token(sort: &Sort, doc: &Value) -> Value {
        Value::Object(vec![
            ("keys".to_string(), sort.position(doc)),
            ("_id".to_string(), id_of(doc).clone()),
        ])
    }

    /// Reads a cursor's position back for `sort`.
    pub fn parse(sort: &Sort, token: &Value) -> Result<After, DocError> {
        let (Some(keys), Some(id)) = (token.get("keys"), token.get("_id")) else {
            return Err(DocError::bad(format!(
                "a cursor position is {{\"keys\": [...], \"_id\": ...}}, not {token}"
            )));
        };
        Ok(After {
            keys: sort.parse_position(keys)?,
            id: id.clone(),
        })
    }

    /// Whether `doc` comes after this position.
    fn precedes(&self, sort: &Sort, doc: &Value) -> bool {
        sort.compare_to(doc, &self.keys)
            .then_with(|| compare(id_of(doc), &self.id))
            == Ordering::Greater
    }
}

/// Orders documents by the sort, then by `_id` (a total order, so cursors can resume).
pub fn order(sort: &Sort, a: &Value, b: &Value) -> Ordering {
    sort.compare(a, b).then_with(|| compare(id_of(a), id_of(b)))
}

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

/// The outcome of a document command: its reply, or why nothing changed.
type Outcome = Result<Value, DocError>;

fn reply(fields: Vec<(&str, Value)>) -> Outcome {
    Ok(Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    ))
}

impl<F: LogFile> PagedStore<F> {
    fn corrupt_record(&self, key: &[u8], detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            shard: self.shard,
            path: self.path.clone(),
            page: 0,
            detail: format!("record {}: {}", String::from_utf8_lossy(key), detail.into()),
        }
    }

    /// Reads the catalogue into memory, once.
    async fn load_catalog(&self) -> Result<(), StoreError> {
        if self.catalog.borrow().is_some() {
            return Ok(());
        }
        let entries = self
            .scan_tree(&[SPACE_CATALOG], Some(&[SPACE_CATALOG + 1]), usize::MAX)
            .await?;
        let mut catalog = Catalog {
            collections: BTreeMap::new(),
            next_id: 1,
        };
        for (key, bytes) in entries {
            let value = binary::from_bytes(&bytes).map_err(|e| self.corrupt_record(&key, e.0))?;
            if key.len() == 1 {
                catalog.next_id = value
                    .get("next")
                    .and_then(as_u32)
                    .ok_or_else(|| self.corrupt_record(&key, "bad id counter"))?;
                continue;
            }
            let coll = Collection::from_value(&value)
                .ok_or_else(|| self.corrupt_record(&key, "bad collection definition"))?;
            catalog.collections.insert(coll.name.clone(), coll);
        }
        // Another load may have finished while this one waited for pages, and a command may
        // have changed the catalogue since: the copy already in place is the newer one.
        self.catalog.borrow_mut().get_or_insert(catalog);
        Ok(())
    }

    /// A collection's definition, if the collection exists.
    pub async fn doc_collection(&self, name: &str) -> Result<Option<Collection>, StoreError> {
        self.load_catalog().await?;
        Ok(self
            .catalog
            .borrow()
            .as_ref()
            .and_then(|c| c.collections.get(name).cloned()))
    }

    /// Every collection's definition.
    pub async fn doc_collections(&self) -> Result<Vec<Collection>, StoreError> {
        self.load_catalog().await?;
        Ok(self
            .catalog
            .borrow()
            .as_ref()
            .map(|c| c.collections.values().cloned().collect())
            .unwrap_or_default())
    }

    fn next_catalog_id(&self) -> u32 {
        let mut catalog = self.catalog.borrow_mut();
        let catalog = catalog.as_mut().expect("loaded");
        let id = catalog.next_id;
        catalog.next_id += 1;
        id
    }

    /// Writes a collection's definition (and the id counter) to the tree and the cache.
    async fn save_collection(&self, index: u64, coll: &Collection) -> Result<(), StoreError> {
        let next = self.catalog.borrow().as_ref().expect("loaded").next_id;
        let counter = Value::Object(vec![("next".to_string(), Value::Int(i64::from(next)))]);
        self.put(index, vec![SPACE_CATALOG], binary::to_bytes(&counter))
            .await?;
        self.put(
            index,
            catalog_key(&coll.name),
            binary::to_bytes(&coll.to_value()),
        )
        .await?;
        self.catalog
            .borrow_mut()
            .as_mut()
            .expect("loaded")
            .collections
            .insert(coll.name.clone(), coll.clone());
        Ok(())
    }

    fn new_collection(&self, name: &str) -> Collection {
        Collection {
            name: name.to_string(),
            id: self.next_catalog_id(),
            indexes: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Reads a stored document (from the pool and the hot cache when it can, which it
    /// then fills, as a key-value GET does).
    async fn read_doc(&self, key: &[u8]) -> Result<Option<Value>, StoreError> {
        let found = match self.try_get_tree(key) {
            Some(found) => found,
            None => self.get_tree(key).await?,
        };
        match found {
            None => Ok(None),
            Some(v) => binary::from_bytes(&v.value)
                .map(Some)
                .map_err(|e| self.corrupt_record(key, e.0)),
        }
    }

    /// Whether index `def` holds `key` for a document other than `id_key` (or any document,
    /// when `id_key` is None).
    async fn key_taken(
        &self,
        key_entry: &[u8],
        id_key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        // `key_entry` is the entry of `id_key`: the index key is what precedes the _id key.
        let key_prefix = &key_entry[..key_entry.len() - id_key.len()];
        let found = self
            .scan_tree(key_prefix, Some(&prefix_end(key_prefix)), 2)
            .await?;
        Ok(found
            .into_iter()
            .map(|(_, owner)| owner)
            .find(|owner| owner.as_slice() != id_key))
    }

    // ---- reads ----

    /// Chooses how to read the candidates of a query.
    fn plan(coll: &Collection, filter: &Filter, sort: &Sort) -> (Access, bool) {
        let natural = sort.is_empty() || sort_is(sort, &id_spec());
        if let Some(ranges) = index_bounds(filter, &id_spec(), false) {
            return (Access::IdRanges(ranges), natural);
        }
        let ready = || coll.indexes.iter().filter(|i| i.ready);
        let mut best: Option<(&IndexDef, Vec<KeyRange>)> = None;
        for def in ready() {
            if let Some(ranges) = index_bounds(filter, &def.spec, def.multikey) {
                let better = match &best {
                    None => true,
                    Some((b, _)) => def.unique && !b.unique,
                };
                if better {
                    best = Some((def, ranges));
                }
            }
        }
        if let Some((def, ranges)) = best {
            let ordered = !def.multikey && !sort.is_empty() && sort_is(sort, &def.spec);
            return (
                Access::Index {
                    name: def.name.clone(),
                    ranges: Some(ranges),
                },
                ordered,
            );
        }
        if !sort.is_empty() {
            if let Some(def) = ready().find(|d| !d.multikey && sort_is(sort, &d.spec)) {
                return (
                    Access::Index {
                        name: def.name.clone(),
                        ranges: None,
                    },
                    true,
                );
            }
        }
        (Access::CollScan, natural)
    }

    /// Finds the documents of `coll` a query selects, in order (sort, then `_id`); when
    /// `count_only`, counts them and keeps none.
    pub async fn doc_find(
        &self,
        coll: &str,
        query: &FindQuery,
        count_only: bool,
    ) -> Result<(Vec<Value>, u64, FindStats), StoreError> {
        let mut stats = FindStats::new();
        let Some(coll) = self.doc_collection(coll).await? else {
            return Ok((Vec::new(), 0, stats));
        };
        let found = self.select(&coll, query, count_only, &mut stats).await?;
        Ok((
            found.docs.into_iter().map(|(_, d)| d).collect(),
            found.count,
            stats,
        ))
    }

    async fn select(
        &self,
        coll: &Collection,
        query: &FindQuery,
        count_only: bool,
        stats: &mut FindStats,
    ) -> Result<Found, StoreError> {
        let (access, ordered) = Self::plan(coll, &query.filter, &query.sort);
        stats.access = access.clone();
        stats.ordered = ordered;
        let mut selected = Selected {
            query,
            ordered,
            count_only,
            docs: Vec::new(),
            count: 0,
        };
        let prefix = doc_prefix(coll.id);
        let docs_end = prefix_end(&prefix);
        match access {
            Access::CollScan | Access::IdRanges(_) => {
                let ranges: Vec<(Vec<u8>, Vec<u8>)> = match &access {
                    Access::IdRanges(ranges) => under(&prefix, ranges),
                    _ => {
                        // Natural order with a cursor: start just after its _id.
                        let start = match (&query.after, ordered) {
                            (Some(after), true) => {
                                just_after(&doc_key(coll.id, &index_key::key(&after.id)))
                            }
                            _ => prefix.clone(),
                        };
                        vec![(start, docs_end.clone())]
                    }
                };
                for (start, end) in ranges {
                    let mut from = start;
                    loop {
                        let chunk = self.scan_tree(&from, Some(&end), SCAN_CHUNK).await?;
                        let full = chunk.len() == SCAN_CHUNK;
                        for (key, bytes) in chunk {
                            stats.docs_examined += 1;
                            let doc = binary::from_bytes(&bytes)
                                .map_err(|e| self.corrupt_record(&key, e.0))?;
                            let id_key = key[prefix.len()..].to_vec();
                            if selected.offer(id_key, doc) {
                                return Ok(selected.finish());
                            }
                            from = just_after(&key);
                        }
                        if !full {
                            break;
                        }
                    }
                }
            }
            Access::Index { name, ranges } => {
                let def = coll.index(&name).expect("planned from the catalogue");
                let iprefix = index_prefix(def.id);
                let ranges: Vec<(Vec<u8>, Vec<u8>)> = match ranges {
                    None => vec![(iprefix.clone(), prefix_end(&iprefix))],
                    Some(ranges) => under(&iprefix, &ranges),
                };
                // A cursor over an index that gives the order: start just after its
                // entry instead of reading the pages before it again.
                let seek = match (&query.after, ordered) {
                    (Some(after), true) => {
                        // The index's fields are the sort's: its key is the sort keys.
                        let mut key = Vec::new();
                        let mut exact = true;
                        for (k, (_, descending)) in after.keys.iter().zip(&def.spec.fields) {
                            match k {
                                SortKey::Value(v) => {
                                    index_key::encode_component(v, *descending, &mut key)
                                }
                                SortKey::Empty => exact = false,
                            }
                        }
                        exact.then(|| just_after(&def.entry_key(&key, &index_key::key(&after.id))))
                    }
                    _ => None,
                };
                let mut seen: HashSet<Vec<u8>> = HashSet::new();
                for (start, end) in ranges {
                    let mut from = match &seek {
                        Some(seek) if *seek > start => seek.clone(),
                        _ => start,
                    };
                    if from >= end {
                        continue;
                    }
                    loop {
                        let chunk = self.scan_tree(&from, Some(&end), SCAN_CHUNK).await?;
                        let full = chunk.len() == SCAN_CHUNK;
                        for (key, id_key) in chunk {
                            stats.keys_examined += 1;
                            from = just_after(&key);
                            if def.multikey && !seen.insert(id_key.clone()) {
                                continue;
                            }
                            let dkey = doc_key(coll.id, &id_key);
                            // Gone since the entry was read (a write went on meanwhile).
                            let Some(doc) = self.read_doc(&dkey).await? else {
                                continue;
                            };
                            stats.docs_examined += 1;
                            if selected.offer(id_key, doc) {
                                return Ok(selected.finish());
                            }
                        }
                        if !full {
                            break;
                        }
                    }
                }
            }
        }
        Ok(selected.finish())
    }

    /// The documents of `coll` that `filter` matches, with their `_id` keys: the first
    /// (in `_id` order), or every one with `multi`. What an update or a delete works on.
    async fn matching(
        &self,
        coll: &Collection,
        filter: &Filter,
        multi: bool,
    ) -> Result<Vec<(Vec<u8>, Value)>, StoreError> {
        let query = FindQuery {
            filter: filter.clone(),
            sort: Sort::default(),
            limit: if multi { None } else { Some(1) },
            after: None,
        };
        let mut stats = FindStats::new();
        Ok(self.select(coll, &query, false, &mut stats).await?.docs)
    }

    // ---- writes ----

    /// Applies one logged document command.
    pub(super) async fn apply_document(
        &self,
        index: u64,
        body: &[u8],
    ) -> Result<CommandResult, StoreError> {
        let outcome = match DocCommand::decode(body) {
            Err(e) => Err(DocError::bad(e.0)),
            Ok(command) => {
                self.load_catalog().await?;
                match check_name("collection", command.coll()) {
                    Err(e) => Err(e),
                    Ok(()) => self.apply_doc_command(index, command).await?,
                }
            }
        };
        Ok(match outcome {
            Ok(reply) => CommandResult::Document {
                reply: binary::to_bytes(&reply),
            },
            Err(e) => CommandResult::DocumentRefused {
                kind: e.kind,
                message: e.message,
            },
        })
    }

    async fn apply_doc_command(
        &self,
        index: u64,
        command: DocCommand,
    ) -> Result<Outcome, StoreError> {
        let command = match command {
            DocCommand::Checked {
                coll,
                unique,
                command,
            } => {
                if let Some(c) = self.doc_collection(&coll).await? {
                    if let Some(def) = c
                        .indexes
                        .iter()
                        .find(|d| d.unique && !unique.contains(&d.name))
                    {
                        return Ok(Err(DocError {
                            kind: DocErrorKind::Retry,
                            message: format!(
                                "unique index {} of {coll} was not checked on the other shards",
                                def.name
                            ),
                        }));
                    }
                }
                *command
            }
            other => other,
        };
        match command {
            DocCommand::Checked { .. } => Ok(Err(DocError::bad("a checked command in another"))),
            DocCommand::Insert { coll, docs } => self.doc_insert(index, &coll, docs).await,
            DocCommand::Update {
                coll,
                filter,
                update,
                multi,
                upsert,
            } => {
                let parsed = Filter::parse(&filter)
                    .map_err(DocError::from)
                    .and_then(|f| Ok((f, Update::parse(&update)?)));
                match parsed {
                    Err(e) => Ok(Err(e)),
                    Ok((filter, update)) => {
                        self.doc_update(index, &coll, &filter, &update, multi, upsert)
                            .await
                    }
                }
            }
            DocCommand::Delete {
                coll,
                filter,
                multi,
            } => match Filter::parse(&filter) {
                Err(e) => Ok(Err(e.into())),
                Ok(filter) => self.doc_delete(index, &coll, &filter, multi).await,
            },
            DocCommand::CreateIndex {
                coll,
                name,
                key,
                unique,
            } => {
                self.doc_create_index(index, &coll, &name, key, unique)
                    .await
            }
            DocCommand::BuildIndex { coll, name, batch } => {
                self.doc_build_index(index, &coll, &name, batch).await
            }
            DocCommand::DropIndex { coll, name } => self.doc_drop_index(index, &coll, &name).await,
            DocCommand::Drop { coll } => self.doc_drop(index, &coll).await,
        }
    }

    async fn doc_insert(
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

    async fn doc_update(
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

    async fn doc_delete(
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
    async fn delete_range(&self, index: u64, start: &[u8], end: &[u8]) -> Result<u64, StoreError> {
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

    async fn doc_create_index(
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

    async fn doc_build_index(
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

    async fn doc_drop_index(
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

    async fn doc_drop(&self, index: u64, name: &str) -> Result<Outcome, StoreError> {
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

    /// The entries of index `name` of `coll` as (index key, `_id` key), in index order;
    /// None when there is no such index.
    pub async fn doc_index_keys(
        &self,
        coll: &str,
        name: &str,
    ) -> Result<Option<Vec<(Vec<u8>, Vec<u8>)>>, StoreError> {
        let Some(coll) = self.doc_collection(coll).await? else {
            return Ok(None);
        };
        let Some(def) = coll.index(name) else {
            return Ok(None);
        };
        let prefix = index_prefix(def.id);
        let end = prefix_end(&prefix);
        let mut out = Vec::new();
        let mut from = prefix.clone();
        loop {
            let chunk = self.scan_tree(&from, Some(&end), SCAN_CHUNK * 4).await?;
            let full = chunk.len() == SCAN_CHUNK * 4;
            for (key, id_key) in chunk {
                from = just_after(&key);
                let index_key = key[prefix.len()..key.len() - id_key.len()].to_vec();
                out.push((index_key, id_key));
            }
            if !full {
                return Ok(Some(out));
            }
        }
    }

    /// Whether any document other than `except` (an `_id` key) holds one of `keys`
    /// (index name, index key without `_id`) in a unique index of `coll`: the check a
    /// write on another shard asks for. Returns the first conflict's description.
    pub async fn doc_unique_conflict(
        &self,
        coll: &str,
        doc: &Value,
    ) -> Result<Option<String>, StoreError> {
        let Some(coll) = self.doc_collection(coll).await? else {
            return Ok(None);
        };
        let id_key = index_key::key(id_of(doc));
        for def in coll.indexes.iter().filter(|d| d.unique) {
            let Ok((entries, _)) = def.entries_of(doc, &id_key) else {
                continue;
            };
            for entry in entries {
                if let Some(owner) = self.key_taken(&entry, &id_key).await? {
                    return Ok(Some(format!(
                        "duplicate key in unique index {} of {}: the key is held by _id {}",
                        def.name,
                        coll.name,
                        index_key_owner(&owner)
                    )));
                }
            }
        }
        Ok(None)
    }
}

/// Checks documents against their indexes (for `kvsd --verify`): every document has
/// exactly the entries its indexed fields imply (a building index: those up to where it
/// got), and every entry belongs to a document that implies it.
pub(super) fn check_documents(
    catalog: Vec<(Vec<u8>, Vec<u8>)>,
    documents: Vec<(Vec<u8>, Vec<u8>)>,
    mut entries: HashMap<Vec<u8>, Vec<u8>>,
    problems: &mut Vec<String>,
) {
    let mut by_id: HashMap<u32, Collection> = HashMap::new();
    for (key, bytes) in catalog {
        if key.len() == 1 {
            continue;
        }
        match binary::from_bytes(&bytes)
            .ok()
            .as_ref()
            .and_then(Collection::from_value)
        {
            Some(coll) => {
                by_id.insert(coll.id, coll);
            }
            None => problems.push(format!(
                "catalogue record {:?} does not decode",
                String::from_utf8_lossy(&key[1..])
            )),
        }
    }
    for (key, bytes) in documents {
        let Some(coll_id) = key
            .get(1..5)
            .and_then(|b| b.try_into().ok().map(u32::from_be_bytes))
        else {
            problems.push(format!("document key {key:02x?} is too short"));
            continue;
        };
        let Some(coll) = by_id.get(&coll_id) else {
            problems.push(format!("document of unknown collection id {coll_id}"));
            continue;
        };
        let id_key = &key[5..];
        let doc = match binary::from_bytes(&bytes) {
            Ok(doc) => doc,
            Err(e) => {
                problems.push(format!("{}: document {id_key:02x?}: {e}", coll.name));
                continue;
            }
        };
        if index_key::key(id_of(&doc)) != id_key {
            problems.push(format!(
                "{}: document {} is stored under another _id",
                coll.name,
                id_of(&doc)
            ));
        }
        for def in &coll.indexes {
            let Ok((expected, _)) = def.entries_of(&doc, id_key) else {
                problems.push(format!(
                    "{}: document {} has an index key too large for {}",
                    coll.name,
                    id_of(&doc),
                    def.name
                ));
                continue;
            };
            let covered = def.ready
                || def
                    .built_to
                    .as_ref()
                    .is_some_and(|to| id_key <= index_key::key(to).as_slice());
            for entry in expected {
                match entries.remove(&entry) {
                    Some(owner) if owner == id_key => {}
                    Some(_) => problems.push(format!(
                        "{}: index {} entry of document {} names another document",
                        coll.name,
                        def.name,
                        id_of(&doc)
                    )),
                    None if covered => problems.push(format!(
                        "{}: document {} lacks its entry in index {}",
                        coll.name,
                        id_of(&doc),
                        def.name
                    )),
                    None => {}
                }
            }
        }
    }
    let mut orphans: Vec<&Vec<u8>> = entries.keys().collect();
    orphans.sort();
    for key in orphans.into_iter().take(10) {
        problems.push(format!(
            "index entry {key:02x?} has no document that implies it"
        ));
    }
    if entries.len() > 10 {
        problems.push(format!("{} more orphan index entries", entries.len() - 10));
    }
}

/// Whether a sort asks for exactly an index's order (same fields, same directions).
fn sort_is(sort: &Sort, spec: &IndexSpec) -> bool {
    let fields = sort.fields();
    fields.len() == spec.fields.len()
        && fields
            .iter()
            .zip(&spec.fields)
            .all(|((p, ascending), (q, descending))| p == q && *ascending != *descending)
}

/// Describes the owner of an index entry (its `_id` key) for an error message.
fn index_key_owner(id_key: &[u8]) -> String {
    index_key::decode(id_key)
        .map(|v| v.to_string())
        .unwrap_or_else(|| format!("(key {id_key:02x?})"))
}

/// The documents a read keeps: in order, at most the limit (when it has one).
struct Selected<'a> {
    query: &'a FindQuery,
    ordered: bool,
    count_only: bool,
    docs: Vec<(Vec<u8>, Value)>,
    count: u64,
}

impl Selected<'_> {
    /// Considers one candidate; returns true when the read can stop.
    fn offer(&mut self, id_key: Vec<u8>, doc: Value) -> bool {
        if !self.query.filter.matches(&doc) {
            return false;
        }
        if let Some(after) = &self.query.after {
            if !after.precedes(&self.query.sort, &doc) {
                return false;
            }
        }
        self.count += 1;
        if self.count_only {
            return false;
        }
        self.docs.push((id_key, doc));
        match self.query.limit {
            Some(limit) if self.ordered => self.docs.len() >= limit,
            Some(limit) => {
                // Keep memory bounded: sort and cut whenever twice the limit piled up.
                if self.docs.len() >= limit.saturating_mul(2).max(1024) {
                    self.cut(limit);
                }
                false
            }
            None => false,
        }
    }

    fn cut(&mut self, limit: usize) {
        let sort = &self.query.sort;
        self.docs.sort_by(|a, b| order(sort, &a.1, &b.1));
        self.docs.truncate(limit);
    }

    fn finish(mut self) -> Found {
        if !self.ordered {
            let limit = self.query.limit.unwrap_or(usize::MAX);
            self.cut(limit);
        }
        Found {
            docs: self.docs,
            count: self.count,
        }
    }
}

/// What a read selected: documents with their `_id` keys, in order, and how many matched.
struct Found {
    docs: Vec<(Vec<u8>, Value)>,
    count: u64,
}

#[cfg(test)]
mod tests;
