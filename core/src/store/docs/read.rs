//! Document reads: find and count with cursor paging (a page resumes just after the last
//! document returned), the matches an update or a delete works on, and the index lookups
//! other shards ask for. They read what the planner chose and check the filter again on
//! every document, so an index's bounds only need to be loose enough.

use std::cmp::Ordering;
use std::collections::HashSet;

use super::catalog::Collection;
use super::keys::{
    doc_key, doc_prefix, id_of, index_key_owner, index_prefix, just_after, prefix_end, under,
};
use super::plan::{Access, FindStats};
use crate::doc::binary;
use crate::doc::command::DocError;
use crate::doc::cursor::{Sort, SortKey};
use crate::doc::index_key;
use crate::doc::query::Filter;
use crate::doc::value::{compare, Value};
use crate::log::LogFile;
use crate::store::{PagedStore, StoreError};

/// Entries read per step of a scan.
const SCAN_CHUNK: usize = 256;

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
    pub fn precedes(&self, sort: &Sort, doc: &Value) -> bool {
        sort.compare_to(doc, &self.keys)
            .then_with(|| compare(id_of(doc), &self.id))
            == Ordering::Greater
    }
}

/// Orders documents by the sort, then by `_id` (a total order, so cursors can resume).
pub fn order(sort: &Sort, a: &Value, b: &Value) -> Ordering {
    sort.compare(a, b).then_with(|| compare(id_of(a), id_of(b)))
}

impl<F: LogFile> PagedStore<F> {
    /// Reads a stored document (from the pool and the hot cache when it can, which it
    /// then fills, as a key-value GET does), or the version it had at snapshot `at`.
    async fn read_doc(&self, key: &[u8], at: Option<u64>) -> Result<Option<Value>, StoreError> {
        let found = match (at, self.try_get_tree(key)) {
            (Some(ts), _) => self.get_tree_at(key, ts).await?,
            (None, Some(found)) => found,
            (None, None) => self.get_tree(key).await?,
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
    pub(super) async fn key_taken(
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

    /// Finds the documents of `coll` a query selects, in order (sort, then `_id`); when
    /// `count_only`, counts them and keeps none. `at`: as they were at that snapshot (ADR
    /// 0023; it must stay open meanwhile, see [`PagedStore::get_at`]), else as they are.
    pub async fn doc_find(
        &self,
        coll: &str,
        query: &FindQuery,
        count_only: bool,
        at: Option<u64>,
    ) -> Result<(Vec<Value>, u64, FindStats), StoreError> {
        let mut stats = FindStats::new();
        let Some(coll) = self.doc_collection(coll).await? else {
            return Ok((Vec::new(), 0, stats));
        };
        let found = self
            .select(&coll, query, count_only, at, &mut stats)
            .await?;
        Ok((
            found.docs.into_iter().map(|(_, d)| d).collect(),
            found.count,
            stats,
        ))
    }

    /// Up to `limit` tree entries in `[start, end)`, now or at snapshot `at`.
    async fn scan_docs(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        at: Option<u64>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        match at {
            None => self.scan_tree(start, Some(end), limit).await,
            Some(ts) => self.scan_tree_at(start, end, limit, ts).await,
        }
    }

    async fn select(
        &self,
        coll: &Collection,
        query: &FindQuery,
        count_only: bool,
        at: Option<u64>,
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
                        let chunk = self.scan_docs(&from, &end, SCAN_CHUNK, at).await?;
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
                        let chunk = self.scan_docs(&from, &end, SCAN_CHUNK, at).await?;
                        let full = chunk.len() == SCAN_CHUNK;
                        for (key, id_key) in chunk {
                            stats.keys_examined += 1;
                            from = just_after(&key);
                            if def.multikey && !seen.insert(id_key.clone()) {
                                continue;
                            }
                            let dkey = doc_key(coll.id, &id_key);
                            // Gone since the entry was read (a write went on meanwhile).
                            let Some(doc) = self.read_doc(&dkey, at).await? else {
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
    pub(super) async fn matching(
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
        Ok(self
            .select(coll, &query, false, None, &mut stats)
            .await?
            .docs)
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
