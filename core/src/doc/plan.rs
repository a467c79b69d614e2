//! Index bounds: which byte ranges of a secondary index can hold the documents a filter
//! matches. The planner uses them to scan part of an index instead of the whole
//! collection; the filter is always applied again to what the ranges yield, so bounds may
//! be loose but never too tight.
//!
//! An index on fields (f1, f2, ...) holds, per document, one key per combination of values
//! ([`keys_of`]); an array gives one key per element (a *multikey* index), and a field the
//! path does not reach everywhere gives null, as in MongoDB. Bounds come from the leading
//! field's conditions: equality, `$in`, and range operators with a scalar operand. Two
//! ranges on one field are intersected only when the index is not multikey (on arrays,
//! different elements may satisfy each).

use std::cmp::Ordering;

use super::index_key::encode_component;
use super::query::{reach, Cond, Filter};
use super::value::Value;

/// The fields of an index, each ascending or descending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub fields: Vec<(Vec<String>, bool)>,
}

/// A half-open byte range `[start, end)` of index keys; `end` None: to the end.
pub type KeyRange = (Vec<u8>, Option<Vec<u8>>);

/// The values a document offers for one indexed path.
fn values_for(doc: &Value, path: &[String]) -> Vec<Value> {
    let reached = reach(doc, path);
    let mut out: Vec<Value> = Vec::new();
    for value in reached.values_and_elements() {
        if matches!(value, Value::Array(_)) {
            continue;
        }
        if !out.iter().any(|o| o == value) {
            out.push(value.clone());
        }
    }
    if reached.is_missing() && !out.iter().any(|o| matches!(o, Value::Null)) {
        out.push(Value::Null);
    }
    if out.is_empty() {
        // Only empty arrays: one key still (MongoDB indexes `undefined`), so the document
        // is in the index; no scalar bound reaches it.
        out.push(Value::Array(Vec::new()));
    }
    out
}

/// The index keys of `doc` (several for a multikey index), and whether it made the index
/// multikey (some field gave more than one value).
pub fn keys_of(doc: &Value, index: &IndexSpec) -> (Vec<Vec<u8>>, bool) {
    let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
    let mut multikey = false;
    for (path, descending) in &index.fields {
        let values = values_for(doc, path);
        // An empty array counts too: its placeholder key does not sort where a sort puts
        // the document (first), so the index cannot give that order.
        multikey |= values.len() > 1 || matches!(values.as_slice(), [Value::Array(_)]);
        let mut next = Vec::with_capacity(keys.len() * values.len().max(1));
        for key in &keys {
            for value in &values {
                let mut k = key.clone();
                encode_component(value, *descending, &mut k);
                next.push(k);
            }
        }
        keys = next;
    }
    keys.sort();
    keys.dedup();
    (keys, multikey)
}

/// The smallest byte string above every string that starts with `prefix`; None when there
/// is none (all 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A position between index keys: before every key that starts with a prefix, or after
/// all of them. Ranges are built from these so that a descending field (inverted bytes)
/// can turn them around exactly: inverting bytes reverses the order of whole components
/// (they are prefix-free) but not of arbitrary byte strings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edge {
    Before(Vec<u8>),
    After(Vec<u8>),
}

impl Edge {
    /// The position as ascending bytes; None: past everything.
    fn position(&self) -> Option<Vec<u8>> {
        match self {
            Edge::Before(p) => Some(p.clone()),
            Edge::After(p) => prefix_end(p),
        }
    }

    /// The same position once every component byte is inverted (order reversed).
    fn inverted(&self) -> Edge {
        let invert = |b: &[u8]| b.iter().map(|x| !x).collect::<Vec<u8>>();
        match self {
            Edge::Before(p) => Edge::After(invert(p)),
            Edge::After(p) => Edge::Before(invert(p)),
        }
    }
}

/// Compares positions, None being past everything.
fn compare_positions(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(y),
    }
}

/// A range `[start, end)` of the leading field's keys, in ascending order.
#[derive(Debug, Clone)]
struct ValueRange {
    start: Edge,
    end: Edge,
}

impl ValueRange {
    fn is_empty(&self) -> bool {
        compare_positions(&self.start.position(), &self.end.position()) != Ordering::Less
    }
}

fn key(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_component(v, false, &mut out);
    out
}

fn equal_range(v: &Value) -> ValueRange {
    let k = key(v);
    ValueRange {
        start: Edge::Before(k.clone()),
        end: Edge::After(k),
    }
}

/// The ranges (ascending key order) a condition allows, or None if it cannot bound them.
fn ranges_of(cond: &Cond, multikey: bool) -> Option<Vec<ValueRange>> {
    let scalar = |v: &Value| !matches!(v, Value::Array(_));
    match cond {
        Cond::Eq(v) if scalar(v) => Some(vec![equal_range(v)]),
        Cond::In(values) if !values.is_empty() && values.iter().all(scalar) => {
            Some(values.iter().map(equal_range).collect())
        }
        Cond::Cmp(side, or_equal, v) if scalar(v) && !matches!(v, Value::Null) => {
            let k = key(v);
            // Range operators stay within the operand's type bracket.
            let bracket = vec![v.type_rank()];
            Some(vec![match (side, or_equal) {
                (Ordering::Greater, true) => ValueRange {
                    start: Edge::Before(k),
                    end: Edge::After(bracket),
                },
                (Ordering::Greater, false) => ValueRange {
                    start: Edge::After(k),
                    end: Edge::After(bracket),
                },
                (Ordering::Less, true) => ValueRange {
                    start: Edge::Before(bracket),
                    end: Edge::After(k),
                },
                _ => ValueRange {
                    start: Edge::Before(bracket),
                    end: Edge::Before(k),
                },
            }])
        }
        Cond::Every(conds) => {
            let mut bounded: Vec<Vec<ValueRange>> = conds
                .iter()
                .filter_map(|c| ranges_of(c, multikey))
                .collect();
            if bounded.is_empty() {
                return None;
            }
            if multikey {
                // Different elements may satisfy each condition: use one of them.
                return bounded.pop();
            }
            let mut acc = bounded.pop().expect("one");
            for other in bounded {
                acc = intersect(&acc, &other);
            }
            Some(acc)
        }
        _ => None,
    }
}

fn intersect(a: &[ValueRange], b: &[ValueRange]) -> Vec<ValueRange> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let start =
                if compare_positions(&x.start.position(), &y.start.position()) == Ordering::Less {
                    y.start.clone()
                } else {
                    x.start.clone()
                };
            let end = if compare_positions(&x.end.position(), &y.end.position()) == Ordering::Less {
                x.end.clone()
            } else {
                y.end.clone()
            };
            let range = ValueRange { start, end };
            if !range.is_empty() {
                out.push(range);
            }
        }
    }
    out
}

/// The conditions a filter puts on `path` that every matching document must meet.
fn conditions_on<'a>(filter: &'a Filter, path: &[String], out: &mut Vec<&'a Cond>) {
    match filter {
        Filter::Field { path: p, cond } if p.as_slice() == path => out.push(cond),
        Filter::And(parts) => {
            for part in parts {
                conditions_on(part, path, out);
            }
        }
        _ => {}
    }
}

/// The key ranges of `index` that hold every document `filter` matches, sorted and
/// disjoint; None when the filter does not bound the leading field (scan everything).
pub fn index_bounds(filter: &Filter, index: &IndexSpec, multikey: bool) -> Option<Vec<KeyRange>> {
    let (path, descending) = index.fields.first()?;
    let mut conds = Vec::new();
    conditions_on(filter, path, &mut conds);
    let mut ranges: Option<Vec<ValueRange>> = None;
    for cond in conds {
        let Some(found) = ranges_of(cond, multikey) else {
            continue;
        };
        ranges = Some(match ranges {
            None => found,
            Some(_) if multikey => found,
            Some(current) => intersect(&current, &found),
        });
    }
    let mut ranges = ranges?;
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by(|a, b| compare_positions(&a.start.position(), &b.start.position()));
    // Merge overlapping ranges.
    let mut merged: Vec<ValueRange> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last)
                if compare_positions(&r.start.position(), &last.end.position())
                    != Ordering::Greater =>
            {
                if compare_positions(&r.end.position(), &last.end.position()) == Ordering::Greater {
                    last.end = r.end;
                }
            }
            _ => merged.push(r),
        }
    }
    let to_bytes = |r: ValueRange| -> KeyRange {
        (
            r.start.position().unwrap_or_else(|| vec![0xff; 1]),
            r.end.position(),
        )
    };
    Some(if *descending {
        merged
            .into_iter()
            .rev()
            .map(|r| {
                to_bytes(ValueRange {
                    start: r.end.inverted(),
                    end: r.start.inverted(),
                })
            })
            .collect()
    } else {
        merged.into_iter().map(to_bytes).collect()
    })
}

#[cfg(test)]
mod tests;
