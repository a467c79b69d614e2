//! The catalogue: collection and index definitions, their records in key space 4, and the
//! copy in memory that the store keeps in step. It is the lowest layer of documents, as
//! reads, writes, index builds and verify all start from a collection's definition.

use std::collections::BTreeMap;

use super::keys::{catalog_key, index_prefix};
use crate::doc::binary;
use crate::doc::command::DocError;
use crate::doc::plan::{keys_of, IndexSpec};
use crate::doc::query::split_path;
use crate::doc::value::Value;
use crate::limits::TREE_KEY_SIZE_MAX;
use crate::log::LogFile;
use crate::store::{PagedStore, StoreError, SPACE_CATALOG};

/// Most fields of one index.
pub const INDEX_FIELDS_MAX: usize = 32;

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

pub(super) fn s(v: &str) -> Value {
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
    pub(super) fn entry_key(&self, key: &[u8], id_key: &[u8]) -> Vec<u8> {
        let mut k = index_prefix(self.id);
        k.extend_from_slice(key);
        k.extend_from_slice(id_key);
        k
    }

    /// The tree keys of `doc`'s entries; whether the document makes the index multikey.
    pub(super) fn entries_of(
        &self,
        doc: &Value,
        id_key: &[u8],
    ) -> Result<(Vec<Vec<u8>>, bool), DocError> {
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

    pub(super) fn from_value(v: &Value) -> Option<Collection> {
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

    pub(super) fn index(&self, name: &str) -> Option<&IndexDef> {
        self.indexes.iter().find(|i| i.name == name)
    }
}

impl<F: LogFile> PagedStore<F> {
    pub(super) fn corrupt_record(&self, key: &[u8], detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            shard: self.shard,
            path: self.path.clone(),
            page: 0,
            detail: format!("record {}: {}", String::from_utf8_lossy(key), detail.into()),
        }
    }

    /// Reads the catalogue into memory, once.
    pub(super) async fn load_catalog(&self) -> Result<(), StoreError> {
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

    pub(super) fn next_catalog_id(&self) -> u32 {
        let mut catalog = self.catalog.borrow_mut();
        let catalog = catalog.as_mut().expect("loaded");
        let id = catalog.next_id;
        catalog.next_id += 1;
        id
    }

    /// Writes a collection's definition (and the id counter) to the tree and the cache.
    pub(super) async fn save_collection(
        &self,
        index: u64,
        coll: &Collection,
    ) -> Result<(), StoreError> {
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

    pub(super) fn new_collection(&self, name: &str) -> Collection {
        Collection {
            name: name.to_string(),
            id: self.next_catalog_id(),
            indexes: Vec::new(),
            failed: Vec::new(),
        }
    }
}
