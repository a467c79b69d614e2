//! The aggregation pipeline, run in memory over documents: `$match`, `$group` (with `$sum`,
//! `$avg`, `$min`, `$max`, `$count`, `$first`, `$last`, `$push`), `$sort`, `$skip`,
//! `$limit`, `$project`, `$unwind` and `$count`, with MongoDB's semantics.
//!
//! Expressions are what these stages compute with (see [`expr`]): field paths, literals,
//! arrays and documents of expressions, and operators such as `$add`, `$cond` or `$concat`.

use std::cmp::Ordering;

use super::cursor::{Projection, Sort};
use super::query::{bad, Filter, QueryError};
use super::value::{compare, Value};

pub mod expr;

use expr::path_value;
pub use expr::Expr;

/// A `$group` accumulator.
#[derive(Debug, Clone)]
pub enum Accumulator {
    Sum(Expr),
    Avg(Expr),
    Min(Expr),
    Max(Expr),
    First(Expr),
    Last(Expr),
    Push(Expr),
    Count,
}

impl Accumulator {
    fn parse(field: &str, spec: &Value) -> Result<Accumulator, QueryError> {
        let Value::Object(fields) = spec else {
            return Err(bad(format!(
                "$group: {field:?} takes an accumulator document"
            )));
        };
        let [(op, arg)] = fields.as_slice() else {
            return Err(bad(format!(
                "$group: {field:?} takes exactly one accumulator"
            )));
        };
        let expr = || Expr::parse(arg);
        Ok(match op.as_str() {
            "$sum" => Accumulator::Sum(expr()?),
            "$avg" => Accumulator::Avg(expr()?),
            "$min" => Accumulator::Min(expr()?),
            "$max" => Accumulator::Max(expr()?),
            "$first" => Accumulator::First(expr()?),
            "$last" => Accumulator::Last(expr()?),
            "$push" => Accumulator::Push(expr()?),
            "$count" => Accumulator::Count,
            other => return Err(bad(format!("$group: unknown accumulator {other}"))),
        })
    }
}

/// One pipeline stage.
#[derive(Debug, Clone)]
pub enum Stage {
    Match(Filter),
    Group {
        id: Expr,
        fields: Vec<(String, Accumulator)>,
    },
    Sort(Sort),
    Skip(usize),
    Limit(usize),
    Project(Projection, Vec<(String, Expr)>),
    Unwind {
        path: Vec<String>,
        keep_empty: bool,
        index_field: Option<String>,
    },
    Count(String),
}

/// Lists a `$project` document's fields with nested specifications spelled as dotted
/// paths; a document that is an expression (an operator, `$literal`) stays whole.
fn flatten_projection(
    prefix: &str,
    spec: &Value,
    out: &mut Vec<(String, Value)>,
) -> Result<(), QueryError> {
    let Value::Object(fields) = spec else {
        unreachable!("called on documents")
    };
    for (k, v) in fields {
        let path = format!("{prefix}{k}");
        match v {
            Value::Object(inner) if inner.is_empty() => {
                return Err(bad(format!(
                    "$project: an empty document is not a valid value for {path:?}"
                )))
            }
            Value::Object(inner) if !inner[0].0.starts_with('$') => {
                flatten_projection(&format!("{path}."), v, out)?
            }
            _ => out.push((path, v.clone())),
        }
    }
    Ok(())
}

fn count_arg(stage: &str, v: &Value) -> Result<usize, QueryError> {
    match v {
        Value::Int(n) if *n >= 0 => Ok(*n as usize),
        Value::Double(d) if *d >= 0.0 && d.fract() == 0.0 => Ok(*d as usize),
        _ => Err(bad(format!(
            "{stage} takes a non-negative integer, not {v}"
        ))),
    }
}

impl Stage {
    fn parse(stage: &Value) -> Result<Stage, QueryError> {
        let Value::Object(fields) = stage else {
            return Err(bad(format!("a pipeline stage is a document, not {stage}")));
        };
        let [(name, arg)] = fields.as_slice() else {
            return Err(bad("a pipeline stage has exactly one field"));
        };
        Ok(match name.as_str() {
            "$match" => Stage::Match(Filter::parse(arg)?),
            "$group" => {
                let Value::Object(spec) = arg else {
                    return Err(bad("$group takes a document"));
                };
                let id = spec
                    .iter()
                    .find(|(k, _)| k == "_id")
                    .ok_or_else(|| bad("$group needs an _id"))?;
                let id = Expr::parse(&id.1)?;
                let fields = spec
                    .iter()
                    .filter(|(k, _)| k != "_id")
                    .map(|(k, v)| {
                        if k.contains('.') {
                            return Err(bad(format!("$group: field {k:?} cannot contain '.'")));
                        }
                        Ok((k.clone(), Accumulator::parse(k, v)?))
                    })
                    .collect::<Result<_, QueryError>>()?;
                Stage::Group { id, fields }
            }
            "$sort" => {
                let sort = Sort::parse(arg)?;
                if sort.is_empty() {
                    return Err(bad("$sort takes at least one field"));
                }
                Stage::Sort(sort)
            }
            "$skip" => Stage::Skip(count_arg("$skip", arg)?),
            "$limit" => match count_arg("$limit", arg)? {
                0 => return Err(bad("$limit must be positive")),
                n => Stage::Limit(n),
            },
            "$project" => {
                let Value::Object(_) = arg else {
                    return Err(bad("$project takes a document"));
                };
                // `{"a": {"b": 1, "c": "$x"}}` is `{"a.b": 1, "a.c": "$x"}`, as in MongoDB.
                let mut spec = Vec::new();
                flatten_projection("", arg, &mut spec)?;
                // Flags (1/0/true/false) project; anything else computes a field.
                let is_flag =
                    |v: &Value| matches!(v, Value::Bool(_) | Value::Int(_) | Value::Double(_));
                let computed = spec
                    .iter()
                    .filter(|(_, v)| !is_flag(v))
                    .map(|(k, v)| Ok((k.clone(), Expr::parse(v)?)))
                    .collect::<Result<Vec<_>, QueryError>>()?;
                let projection = if computed.is_empty() {
                    Projection::parse(&Value::Object(spec))?
                        .ok_or_else(|| bad("$project takes at least one field"))?
                } else {
                    // Computing fields means inclusion: flags may only include (or drop _id).
                    let mut id = true;
                    let mut paths = Vec::new();
                    for (k, v) in spec.iter().filter(|(_, v)| is_flag(v)) {
                        let on = !matches!(v, Value::Bool(false)) && v.as_f64() != Some(0.0);
                        if k == "_id" {
                            id = on;
                        } else if on {
                            paths.push(k.clone());
                        } else {
                            return Err(bad(format!(
                                "$project cannot exclude {k:?} while computing fields"
                            )));
                        }
                    }
                    Projection::including(&paths, id)?
                };
                Stage::Project(projection, computed)
            }
            "$unwind" => {
                let (path, keep_empty, index_field) = match arg {
                    Value::String(_) => (arg.clone(), false, None),
                    Value::Object(_) => (
                        arg.get("path")
                            .cloned()
                            .ok_or_else(|| bad("$unwind needs a path"))?,
                        matches!(
                            arg.get("preserveNullAndEmptyArrays"),
                            Some(Value::Bool(true))
                        ),
                        match arg.get("includeArrayIndex") {
                            Some(Value::String(s)) => Some(s.clone()),
                            None => None,
                            Some(_) => {
                                return Err(bad("$unwind: includeArrayIndex takes a string"))
                            }
                        },
                    ),
                    _ => return Err(bad("$unwind takes a field path or a document")),
                };
                let Expr::Path(path) = Expr::parse(&path)? else {
                    return Err(bad("$unwind takes a field path starting with '$'"));
                };
                Stage::Unwind {
                    path,
                    keep_empty,
                    index_field,
                }
            }
            "$count" => match arg {
                Value::String(s) if !s.is_empty() && !s.starts_with('$') && !s.contains('.') => {
                    Stage::Count(s.clone())
                }
                _ => return Err(bad("$count takes a field name")),
            },
            other => return Err(bad(format!("unknown pipeline stage {other}"))),
        })
    }
}

/// A parsed pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub stages: Vec<Stage>,
}

impl Pipeline {
    pub fn parse(pipeline: &Value) -> Result<Pipeline, QueryError> {
        let Value::Array(stages) = pipeline else {
            return Err(bad("a pipeline is an array of stages"));
        };
        Ok(Pipeline {
            stages: stages
                .iter()
                .enumerate()
                .map(|(i, s)| Stage::parse(s).map_err(|e| bad(format!("stage {i}: {}", e.0))))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Runs the pipeline over `docs`. Fails when an expression meets a value it cannot take
    /// (`{"$add": ["a", 1]}`, a division by zero).
    pub fn run(&self, docs: Vec<Value>) -> Result<Vec<Value>, QueryError> {
        self.stages
            .iter()
            .try_fold(docs, |docs, stage| run_stage(stage, docs))
    }
}

fn set_field(doc: &mut Value, path: &str, value: Value) {
    let mut at = doc;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Value::Object(fields) = at else { return };
        let idx = match fields.iter().position(|(k, _)| k == part) {
            Some(idx) => idx,
            None => {
                fields.push((part.to_string(), Value::Object(Vec::new())));
                fields.len() - 1
            }
        };
        if i == parts.len() - 1 {
            fields[idx].1 = value;
            return;
        }
        at = &mut fields[idx].1;
    }
}

fn run_stage(stage: &Stage, docs: Vec<Value>) -> Result<Vec<Value>, QueryError> {
    Ok(match stage {
        Stage::Match(filter) => docs.into_iter().filter(|d| filter.matches(d)).collect(),
        Stage::Sort(sort) => {
            let mut docs = docs;
            sort.sort(&mut docs);
            docs
        }
        Stage::Skip(n) => docs.into_iter().skip(*n).collect(),
        Stage::Limit(n) => docs.into_iter().take(*n).collect(),
        Stage::Count(name) => vec![Value::Object(vec![(
            name.clone(),
            Value::Int(docs.len() as i64),
        )])],
        Stage::Project(projection, computed) => docs
            .iter()
            .map(|d| {
                let mut out = projection.apply(d);
                for (name, expr) in computed {
                    if let Some(v) = expr.eval(d)? {
                        set_field(&mut out, name, v);
                    }
                }
                Ok(out)
            })
            .collect::<Result<_, QueryError>>()?,
        Stage::Unwind {
            path,
            keep_empty,
            index_field,
        } => {
            let mut out = Vec::new();
            let dotted = path.join(".");
            for doc in docs {
                match path_value(&doc, path) {
                    Some(Value::Array(items)) if !items.is_empty() => {
                        for (i, item) in items.into_iter().enumerate() {
                            let mut one = doc.clone();
                            set_field(&mut one, &dotted, item);
                            if let Some(name) = index_field {
                                set_field(&mut one, name, Value::Int(i as i64));
                            }
                            out.push(one);
                        }
                    }
                    Some(Value::Array(_)) | Some(Value::Null) | None => {
                        if *keep_empty {
                            let mut one = doc;
                            if let Some(name) = index_field {
                                set_field(&mut one, name, Value::Null);
                            }
                            out.push(one);
                        }
                    }
                    // A non-array value is treated as a one-element array.
                    Some(_) => {
                        let mut one = doc;
                        if let Some(name) = index_field {
                            set_field(&mut one, name, Value::Null);
                        }
                        out.push(one);
                    }
                }
            }
            out
        }
        Stage::Group { id, fields } => group_documents(group(&docs, id, fields)?, fields),
    })
}

/// The running state of one accumulator.
#[derive(Debug, Clone)]
enum Acc {
    Sum(Option<i64>, f64, bool),
    Avg(f64, u64),
    Best(Option<Value>),
    First(Option<Value>),
    Last(Value),
    Push(Vec<Value>),
    Count(i64),
}

fn start(accumulator: &Accumulator) -> Acc {
    match accumulator {
        Accumulator::Sum(_) => Acc::Sum(Some(0), 0.0, false),
        Accumulator::Avg(_) => Acc::Avg(0.0, 0),
        Accumulator::Min(_) | Accumulator::Max(_) => Acc::Best(None),
        Accumulator::First(_) => Acc::First(None),
        Accumulator::Last(_) => Acc::Last(Value::Null),
        Accumulator::Push(_) => Acc::Push(Vec::new()),
        Accumulator::Count => Acc::Count(0),
    }
}

fn add(acc: &mut Acc, accumulator: &Accumulator, doc: &Value) -> Result<(), QueryError> {
    match (acc, accumulator) {
        (Acc::Sum(int, double, any_double), Accumulator::Sum(e)) => match e.eval(doc)? {
            Some(Value::Int(n)) => match int.and_then(|i| i.checked_add(n)) {
                Some(sum) => *int = Some(sum),
                None => {
                    // Overflow: go on in doubles.
                    *double += int.take().map_or(0.0, |i| i as f64) + n as f64;
                    *any_double = true;
                }
            },
            Some(Value::Double(d)) => {
                *double += d;
                *any_double = true;
            }
            _ => {}
        },
        (Acc::Avg(total, n), Accumulator::Avg(e)) => {
            if let Some(x) = e.eval(doc)?.as_ref().and_then(Value::as_f64) {
                *total += x;
                *n += 1;
            }
        }
        (Acc::Best(best), Accumulator::Min(e) | Accumulator::Max(e)) => {
            let want = if matches!(accumulator, Accumulator::Min(_)) {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            match e.eval(doc)? {
                None | Some(Value::Null) => {}
                Some(v) => {
                    if best.as_ref().is_none_or(|b| compare(&v, b) == want) {
                        *best = Some(v);
                    }
                }
            }
        }
        (Acc::First(first), Accumulator::First(e)) => {
            if first.is_none() {
                *first = Some(e.eval(doc)?.unwrap_or(Value::Null));
            }
        }
        (Acc::Last(last), Accumulator::Last(e)) => *last = e.eval(doc)?.unwrap_or(Value::Null),
        (Acc::Push(items), Accumulator::Push(e)) => {
            if let Some(v) = e.eval(doc)? {
                items.push(v);
            }
        }
        (Acc::Count(n), Accumulator::Count) => *n += 1,
        _ => unreachable!("each accumulator keeps its own state"),
    }
    Ok(())
}

fn finish(acc: Acc) -> Value {
    match acc {
        Acc::Sum(Some(i), _, false) => Value::Int(i),
        Acc::Sum(int, d, _) => Value::Double(d + int.map_or(0.0, |i| i as f64)),
        Acc::Avg(_, 0) => Value::Null,
        Acc::Avg(total, n) => Value::Double(total / n as f64),
        Acc::Best(best) => best.unwrap_or(Value::Null),
        Acc::First(first) => first.unwrap_or(Value::Null),
        Acc::Last(last) => last,
        Acc::Push(items) => Value::Array(items),
        Acc::Count(n) => Value::Int(n),
    }
}

/// Groups `docs` by `id`, in the order each group's first document came: each group's key
/// and its accumulators' states.
fn group(
    docs: &[Value],
    id: &Expr,
    fields: &[(String, Accumulator)],
) -> Result<Vec<(Value, Vec<Acc>)>, QueryError> {
    let mut groups: Vec<(Value, Vec<Acc>)> = Vec::new();
    // Found by the key's bytes.
    let mut index: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    for doc in docs {
        let key = id.eval(doc)?.unwrap_or(Value::Null);
        let bytes = super::index_key::key(&key);
        let at = *index.entry(bytes).or_insert_with(|| {
            groups.push((key, fields.iter().map(|(_, a)| start(a)).collect()));
            groups.len() - 1
        });
        for (acc, (_, accumulator)) in groups[at].1.iter_mut().zip(fields) {
            add(acc, accumulator, doc)?;
        }
    }
    Ok(groups)
}

/// The documents `$group` emits: each group's key as `_id`, then its accumulators' results.
fn group_documents(groups: Vec<(Value, Vec<Acc>)>, fields: &[(String, Accumulator)]) -> Vec<Value> {
    groups
        .into_iter()
        .map(|(key, accs)| {
            let mut out = vec![("_id".to_string(), key)];
            out.extend(
                fields
                    .iter()
                    .zip(accs)
                    .map(|((name, _), acc)| (name.clone(), finish(acc))),
            );
            Value::Object(out)
        })
        .collect()
}

/// A `$group` stage, for running it in two steps across shards: each shard groups its own
/// documents into partial states ([`GroupStage::partial`]), and the coordinator combines
/// the shards' partials ([`GroupStage::combine`]) into what one `$group` over all the
/// documents gives (for `$first`, `$last` and `$push`, shards come in shard order, as
/// documents without a `$sort` come in no particular order).
#[derive(Debug, Clone)]
pub struct GroupStage {
    id: Expr,
    fields: Vec<(String, Accumulator)>,
}

impl GroupStage {
    /// The stage, when `stage` is a `$group`.
    pub fn parse(stage: &Value) -> Result<Option<GroupStage>, QueryError> {
        Ok(match Stage::parse(stage)? {
            Stage::Group { id, fields } => Some(GroupStage { id, fields }),
            _ => None,
        })
    }

    /// Whether an accumulator depends on the order documents come in (`$first`, `$last`,
    /// `$push`): then grouping in parts gives shard order, not the order of one scan.
    pub fn order_sensitive(&self) -> bool {
        self.fields.iter().any(|(_, a)| {
            matches!(
                a,
                Accumulator::First(_) | Accumulator::Last(_) | Accumulator::Push(_)
            )
        })
    }

    /// Groups `docs`; each group comes out as `{"_id": key, "p": [state, ...]}`.
    pub fn partial(&self, docs: &[Value]) -> Result<Vec<Value>, QueryError> {
        let groups = group(docs, &self.id, &self.fields)?;
        Ok(groups
            .into_iter()
            .map(|(key, accs)| {
                Value::Object(vec![
                    ("_id".to_string(), key),
                    (
                        "p".to_string(),
                        Value::Array(accs.into_iter().map(acc_to_value).collect()),
                    ),
                ])
            })
            .collect())
    }

    /// Combines the partial groups of every shard into the stage's output.
    pub fn combine(&self, partials: &[Value]) -> Result<Vec<Value>, QueryError> {
        let mut groups: Vec<(Value, Vec<Acc>)> = Vec::new();
        let mut index: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
        for partial in partials {
            let key = partial.get("_id").cloned().unwrap_or(Value::Null);
            let Some(Value::Array(states)) = partial.get("p") else {
                return Err(bad("a partial group without its states"));
            };
            if states.len() != self.fields.len() {
                return Err(bad("a partial group of another stage"));
            }
            let states = states
                .iter()
                .zip(&self.fields)
                .map(|(v, (_, a))| acc_from_value(v, a))
                .collect::<Option<Vec<Acc>>>()
                .ok_or_else(|| bad("a malformed partial group"))?;
            let bytes = super::index_key::key(&key);
            match index.get(&bytes) {
                Some(&at) => {
                    for ((acc, state), (_, accumulator)) in
                        groups[at].1.iter_mut().zip(states).zip(&self.fields)
                    {
                        merge(acc, state, accumulator);
                    }
                }
                None => {
                    index.insert(bytes, groups.len());
                    groups.push((key, states));
                }
            }
        }
        Ok(group_documents(groups, &self.fields))
    }
}

fn acc_to_value(acc: Acc) -> Value {
    let some = |v: Option<Value>| Value::Array(v.into_iter().collect());
    match acc {
        Acc::Sum(int, double, any_double) => Value::Array(vec![
            int.map_or(Value::Null, Value::Int),
            Value::Double(double),
            Value::Bool(any_double),
        ]),
        Acc::Avg(total, n) => Value::Array(vec![Value::Double(total), Value::Int(n as i64)]),
        Acc::Best(best) => some(best),
        Acc::First(first) => some(first),
        Acc::Last(last) => some(Some(last)),
        Acc::Push(items) => Value::Array(items),
        Acc::Count(n) => Value::Int(n),
    }
}

fn acc_from_value(v: &Value, accumulator: &Accumulator) -> Option<Acc> {
    let one = |v: &Value| match v {
        Value::Array(items) if items.len() <= 1 => Some(items.first().cloned()),
        _ => None,
    };
    Some(match (accumulator, v) {
        (Accumulator::Sum(_), Value::Array(p)) => match p.as_slice() {
            [int, Value::Double(d), Value::Bool(b)] => {
                let int = match int {
                    Value::Null => None,
                    Value::Int(n) => Some(*n),
                    _ => return None,
                };
                Acc::Sum(int, *d, *b)
            }
            _ => return None,
        },
        (Accumulator::Avg(_), Value::Array(p)) => match p.as_slice() {
            [Value::Double(t), Value::Int(n)] => Acc::Avg(*t, *n as u64),
            _ => return None,
        },
        (Accumulator::Min(_) | Accumulator::Max(_), v) => Acc::Best(one(v)?),
        (Accumulator::First(_), v) => Acc::First(one(v)?),
        (Accumulator::Last(_), v) => Acc::Last(one(v)?.unwrap_or(Value::Null)),
        (Accumulator::Push(_), Value::Array(items)) => Acc::Push(items.clone()),
        (Accumulator::Count, Value::Int(n)) => Acc::Count(*n),
        _ => return None,
    })
}

/// Folds `other` (a later shard's state) into `acc`.
fn merge(acc: &mut Acc, other: Acc, accumulator: &Accumulator) {
    match (acc, other) {
        (Acc::Sum(int, double, any_double), Acc::Sum(i2, d2, a2)) => {
            *double += d2;
            *any_double |= a2;
            match (*int, i2) {
                (Some(a), Some(b)) => match a.checked_add(b) {
                    Some(sum) => *int = Some(sum),
                    None => {
                        *double += a as f64 + b as f64;
                        *int = None;
                        *any_double = true;
                    }
                },
                (Some(a), None) => {
                    *double += a as f64;
                    *int = None;
                }
                (None, Some(b)) => *double += b as f64,
                (None, None) => {}
            }
        }
        (Acc::Avg(total, n), Acc::Avg(t2, n2)) => {
            *total += t2;
            *n += n2;
        }
        (Acc::Best(best), Acc::Best(Some(b2))) => {
            let want = if matches!(accumulator, Accumulator::Min(_)) {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            if best.as_ref().is_none_or(|b| compare(&b2, b) == want) {
                *best = Some(b2);
            }
        }
        (Acc::Best(_), Acc::Best(None)) => {}
        (Acc::First(first), Acc::First(f2)) => {
            if first.is_none() {
                *first = f2;
            }
        }
        (Acc::Last(last), Acc::Last(l2)) => *last = l2,
        (Acc::Push(items), Acc::Push(more)) => items.extend(more),
        (Acc::Count(n), Acc::Count(m)) => *n += m,
        _ => unreachable!("states of one accumulator"),
    }
}

#[cfg(test)]
mod tests;
