//! The planner: how a query reads its candidates (an `_id` range, a ready secondary index, or
//! a scan of the collection), and what the read did, for `explain`. It is kept apart from
//! the reads so that the rules of the choice can be read, and changed, in one place.

use super::catalog::{s, Collection, IndexDef};
use crate::doc::cursor::Sort;
use crate::doc::index_key;
use crate::doc::plan::{index_bounds, IndexSpec, KeyRange};
use crate::doc::query::Filter;
use crate::doc::value::Value;
use crate::log::LogFile;
use crate::store::PagedStore;

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
    pub(super) fn new() -> FindStats {
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

impl<F: LogFile> PagedStore<F> {
    /// Chooses how to read the candidates of a query.
    pub(super) fn plan(coll: &Collection, filter: &Filter, sort: &Sort) -> (Access, bool) {
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
