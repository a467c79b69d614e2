//! What a find does with the documents a filter matched: sort (several keys, MongoDB's
//! array rules), skip, limit and projection.
//!
//! Sort keys: a missing field sorts as null; an array sorts by its smallest element when
//! ascending and its largest when descending (MongoDB's rule), and an empty array before
//! null. Projections are inclusion (`{"a": 1, "b.c": 1}`) or exclusion (`{"a": 0}`), never
//! both except for `_id`, which is included unless excluded.

use std::cmp::Ordering;

use super::query::{bad, reach, split_path, Filter, QueryError};
use super::value::{compare, Value};

/// A sort specification: fields with a direction each, most significant first.
#[derive(Debug, Clone, Default)]
pub struct Sort {
    keys: Vec<(Vec<String>, bool)>,
}

/// One sort key of a document, as it compares.
#[derive(Debug, Clone)]
pub enum SortKey {
    /// An empty array: before everything else.
    Empty,
    Value(Value),
}

fn compare_keys(a: &SortKey, b: &SortKey) -> Ordering {
    match (a, b) {
        (SortKey::Empty, SortKey::Empty) => Ordering::Equal,
        (SortKey::Empty, _) => Ordering::Less,
        (_, SortKey::Empty) => Ordering::Greater,
        (SortKey::Value(x), SortKey::Value(y)) => compare(x, y),
    }
}

impl Sort {
    /// Parses `{"field": 1 | -1, ...}`.
    pub fn parse(spec: &Value) -> Result<Sort, QueryError> {
        let Value::Object(fields) = spec else {
            return Err(bad(format!("a sort is a document, not {spec}")));
        };
        let mut keys = Vec::with_capacity(fields.len());
        for (path, direction) in fields {
            let ascending = match direction.as_f64() {
                Some(1.0) => true,
                Some(-1.0) => false,
                _ => {
                    return Err(bad(format!(
                        "sort: {path:?} takes 1 or -1, not {direction}"
                    )))
                }
            };
            keys.push((split_path("sort", path, false)?, ascending));
        }
        Ok(Sort { keys })
    }

    /// The sort's fields, most significant first, each with true when ascending.
    pub fn fields(&self) -> &[(Vec<String>, bool)] {
        &self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn key(doc: &Value, path: &[String], ascending: bool) -> SortKey {
        let reached = reach(doc, path);
        let mut best: Option<&Value> = None;
        let mut candidates = 0;
        let mut empty_array = false;
        // An array the path reaches is represented by its elements; an element that is an
        // array is a candidate of its own (of type array).
        let values = reached.values().iter().filter(|value| match value {
            Value::Array(items) => {
                empty_array |= items.is_empty();
                false
            }
            _ => true,
        });
        for value in values
            .chain(reached.elements().iter())
            .copied()
            .collect::<Vec<_>>()
        {
            candidates += 1;
            let better = match best {
                None => true,
                Some(b) => {
                    let order = compare(value, b);
                    if ascending {
                        order == Ordering::Less
                    } else {
                        order == Ordering::Greater
                    }
                }
            };
            if better {
                best = Some(value);
            }
        }
        match best {
            Some(v) => SortKey::Value(v.clone()),
            None if empty_array && candidates == 0 => SortKey::Empty,
            None => SortKey::Value(Value::Null),
        }
    }

    /// Where `doc` stands in this order: its sort keys, for a cursor. Each key is written
    /// `{"v": value}`, or `{"empty": true}` for an empty array.
    pub fn position(&self, doc: &Value) -> Value {
        Value::Array(
            self.keys
                .iter()
                .map(|(path, ascending)| match Sort::key(doc, path, *ascending) {
                    SortKey::Empty => Value::Object(vec![("empty".to_string(), Value::Bool(true))]),
                    SortKey::Value(v) => Value::Object(vec![("v".to_string(), v)]),
                })
                .collect(),
        )
    }

    /// Reads a position (from [`Sort::position`]) back, checking that it fits this sort.
    pub fn parse_position(&self, position: &Value) -> Result<Vec<SortKey>, QueryError> {
        let Value::Array(keys) = position else {
            return Err(bad("a cursor position is an array of sort keys"));
        };
        if keys.len() != self.keys.len() {
            return Err(bad(format!(
                "a cursor position of {} keys for a sort of {}",
                keys.len(),
                self.keys.len()
            )));
        }
        keys.iter()
            .map(|key| match key {
                Value::Object(f) => match f.as_slice() {
                    [(name, Value::Bool(true))] if name == "empty" => Ok(SortKey::Empty),
                    [(name, v)] if name == "v" => Ok(SortKey::Value(v.clone())),
                    _ => Err(bad(format!("bad cursor sort key {key}"))),
                },
                _ => Err(bad(format!("bad cursor sort key {key}"))),
            })
            .collect()
    }

    /// Orders a document against a position.
    pub fn compare_to(&self, doc: &Value, position: &[SortKey]) -> Ordering {
        for ((path, ascending), key) in self.keys.iter().zip(position) {
            let order = compare_keys(&Sort::key(doc, path, *ascending), key);
            let order = if *ascending { order } else { order.reverse() };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }

    /// Orders two documents.
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        for (path, ascending) in &self.keys {
            let order = compare_keys(
                &Sort::key(a, path, *ascending),
                &Sort::key(b, path, *ascending),
            );
            let order = if *ascending { order } else { order.reverse() };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }

    /// Sorts `docs` (stable: equal documents keep their order).
    pub fn sort(&self, docs: &mut [Value]) {
        if self.keys.is_empty() {
            return;
        }
        // Compute each document's keys once.
        let mut keyed: Vec<(Vec<SortKey>, Value)> = docs
            .iter_mut()
            .map(|d| {
                let keys = self
                    .keys
                    .iter()
                    .map(|(path, ascending)| Sort::key(d, path, *ascending))
                    .collect();
                (keys, std::mem::replace(d, Value::Null))
            })
            .collect();
        keyed.sort_by(|(a, _), (b, _)| {
            for ((ka, kb), (_, ascending)) in a.iter().zip(b).zip(&self.keys) {
                let order = compare_keys(ka, kb);
                let order = if *ascending { order } else { order.reverse() };
                if order != Ordering::Equal {
                    return order;
                }
            }
            Ordering::Equal
        });
        for (slot, (_, doc)) in docs.iter_mut().zip(keyed) {
            *slot = doc;
        }
    }
}

/// A tree of projected paths.
#[derive(Debug, Clone, Default)]
pub struct PathTree {
    children: Vec<(String, PathTree)>,
    /// The path ends here: the whole value is projected.
    leaf: bool,
}

impl PathTree {
    fn insert(&mut self, path: &[String]) -> Result<(), ()> {
        let Some((first, rest)) = path.split_first() else {
            self.leaf = true;
            return Ok(());
        };
        if self.leaf {
            return Err(());
        }
        let i = match self.children.iter().position(|(k, _)| k == first) {
            Some(i) => i,
            None => {
                self.children.push((first.clone(), PathTree::default()));
                self.children.len() - 1
            }
        };
        let child = &mut self.children[i].1;
        if rest.is_empty() && !child.children.is_empty() || child.leaf {
            return Err(());
        }
        child.insert(rest)
    }

    fn child(&self, name: &str) -> Option<&PathTree> {
        self.children
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, t)| t)
    }
}

/// A projection: which fields of each result to return.
#[derive(Debug, Clone)]
pub enum Projection {
    /// Only these fields (and `_id` unless `id` is false).
    Include { paths: PathTree, id: bool },
    /// Everything but these fields.
    Exclude { paths: PathTree },
}

impl Projection {
    /// Parses `{"a": 1, "b.c": 1}` or `{"a": 0}`; `{}` returns whole documents.
    pub fn parse(spec: &Value) -> Result<Option<Projection>, QueryError> {
        let Value::Object(fields) = spec else {
            return Err(bad(format!("a projection is a document, not {spec}")));
        };
        if fields.is_empty() {
            return Ok(None);
        }
        let mut include = None;
        let mut id = true;
        let mut paths = PathTree::default();
        for (path, flag) in fields {
            let on = match flag {
                Value::Bool(b) => *b,
                Value::Int(_) | Value::Double(_) => flag.as_f64() != Some(0.0),
                _ => {
                    return Err(bad(format!(
                        "projection: {path:?} takes 1 or 0 (expressions and operators are not supported), not {flag}"
                    )))
                }
            };
            if path == "_id" {
                id = on;
                continue;
            }
            match include {
                None => include = Some(on),
                Some(mode) if mode != on => {
                    return Err(bad(format!(
                        "projection: {path:?} mixes inclusion and exclusion"
                    )))
                }
                Some(_) => {}
            }
            paths
                .insert(&split_path("projection", path, false)?)
                .map_err(|_| bad(format!("projection: {path:?} collides with another path")))?;
        }
        Ok(Some(match include {
            Some(true) => Projection::Include { paths, id },
            Some(false) => {
                if id {
                    Projection::Exclude { paths }
                } else {
                    paths.children.push((
                        "_id".into(),
                        PathTree {
                            children: Vec::new(),
                            leaf: true,
                        },
                    ));
                    Projection::Exclude { paths }
                }
            }
            // Only _id was named.
            None if id => Projection::Include { paths, id: true },
            None => Projection::Exclude {
                paths: PathTree {
                    children: vec![(
                        "_id".into(),
                        PathTree {
                            children: Vec::new(),
                            leaf: true,
                        },
                    )],
                    leaf: false,
                },
            },
        }))
    }

    /// An inclusion projection of `paths` (and of `_id` if `id`).
    pub fn including(paths: &[String], id: bool) -> Result<Projection, QueryError> {
        let mut tree = PathTree::default();
        for path in paths {
            tree.insert(&split_path("projection", path, false)?)
                .map_err(|_| bad(format!("projection: {path:?} collides with another path")))?;
        }
        Ok(Projection::Include { paths: tree, id })
    }

    /// The projected document.
    pub fn apply(&self, doc: &Value) -> Value {
        match self {
            Projection::Include { paths, id } => {
                let mut out = include(doc, paths).unwrap_or(Value::Object(Vec::new()));
                if let Value::Object(fields) = &mut out {
                    fields.retain(|(k, _)| k != "_id");
                    if *id {
                        if let Some(value) = doc.get("_id") {
                            fields.insert(0, ("_id".into(), value.clone()));
                        }
                    }
                }
                out
            }
            Projection::Exclude { paths } => exclude(doc, paths),
        }
    }
}

/// The parts of `value` the tree names, in document order; None when nothing is left.
fn include(value: &Value, tree: &PathTree) -> Option<Value> {
    if tree.leaf {
        return Some(value.clone());
    }
    match value {
        Value::Object(fields) => Some(Value::Object(
            fields
                .iter()
                .filter_map(|(k, v)| {
                    let sub = tree.child(k)?;
                    include(v, sub).map(|v| (k.clone(), v))
                })
                .collect(),
        )),
        // Into arrays: each document element projected; other elements dropped.
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter(|i| matches!(i, Value::Object(_) | Value::Array(_)))
                .filter_map(|i| include(i, tree))
                .collect(),
        )),
        _ => None,
    }
}

fn exclude(value: &Value, tree: &PathTree) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter_map(|(k, v)| match tree.child(k) {
                    Some(sub) if sub.leaf => None,
                    Some(sub) => Some((k.clone(), exclude(v, sub))),
                    None => Some((k.clone(), v.clone())),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|i| exclude(i, tree)).collect()),
        other => other.clone(),
    }
}

/// A whole find: filter, sort, skip, limit, projection.
#[derive(Debug, Clone)]
pub struct Find {
    pub filter: Filter,
    pub sort: Sort,
    pub skip: usize,
    pub limit: Option<usize>,
    pub projection: Option<Projection>,
}

impl Find {
    /// Runs the find over `docs` in memory (what each shard does with its documents, and
    /// what a merge does again with the shards' results).
    pub fn run<'a>(&self, docs: impl IntoIterator<Item = &'a Value>) -> Vec<Value> {
        let mut matched: Vec<Value> = docs
            .into_iter()
            .filter(|d| self.filter.matches(d))
            .cloned()
            .collect();
        self.sort.sort(&mut matched);
        let end = self.limit.map_or(matched.len(), |l| {
            self.skip.saturating_add(l).min(matched.len())
        });
        let page = matched.into_iter().take(end).skip(self.skip);
        match &self.projection {
            Some(p) => page.map(|d| p.apply(&d)).collect(),
            None => page.collect(),
        }
    }
}

#[cfg(test)]
mod tests;
