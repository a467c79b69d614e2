//! Updates: a replacement document, or update operators (`$set`, `$unset`, `$inc`, `$mul`,
//! `$min`, `$max`, `$push`, `$pull`, `$addToSet`, `$rename`) applied to a document with
//! MongoDB's rules.
//!
//! An update is parsed once ([`Update::parse`]) and applied to each matching document
//! ([`Update::apply`]). Applying works on a copy: an update that fails part-way (`$inc` of a
//! string, a path through a number) leaves the document as it was, and the error names the
//! operator and the field.

use std::cmp::Ordering;

use super::query::{bad, split_path, Cond, Filter, QueryError};
use super::value::{compare, Value};

/// A parsed update.
#[derive(Debug, Clone)]
pub enum Update {
    /// The document's new content (its `_id` is kept).
    Replace(Value),
    Operators(Vec<(Op, Vec<String>, Value)>),
}

/// An update operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Set,
    Unset,
    Inc,
    Mul,
    Min,
    Max,
    Push,
    Pull,
    AddToSet,
    Rename,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "$set" => Op::Set,
            "$unset" => Op::Unset,
            "$inc" => Op::Inc,
            "$mul" => Op::Mul,
            "$min" => Op::Min,
            "$max" => Op::Max,
            "$push" => Op::Push,
            "$pull" => Op::Pull,
            "$addToSet" => Op::AddToSet,
            "$rename" => Op::Rename,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Op::Set => "$set",
            Op::Unset => "$unset",
            Op::Inc => "$inc",
            Op::Mul => "$mul",
            Op::Min => "$min",
            Op::Max => "$max",
            Op::Push => "$push",
            Op::Pull => "$pull",
            Op::AddToSet => "$addToSet",
            Op::Rename => "$rename",
        }
    }
}

/// Whether one path is a prefix of the other (the same field, or one inside the other).
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

impl Update {
    pub fn parse(update: &Value) -> Result<Update, QueryError> {
        let Value::Object(fields) = update else {
            return Err(bad(format!("an update is a document, not {update}")));
        };
        let operators = fields.iter().filter(|(k, _)| k.starts_with('$')).count();
        if operators == 0 {
            if let Some((name, _)) = fields.iter().find(|(k, _)| k.contains('.')) {
                return Err(bad(format!(
                    "a replacement document cannot have dotted field {name:?}"
                )));
            }
            return Ok(Update::Replace(update.clone()));
        }
        if operators != fields.len() {
            return Err(bad("an update mixes operators and fields"));
        }
        let mut ops: Vec<(Op, Vec<String>, Value)> = Vec::new();
        // Every path the update touches ($rename touches two): no two may overlap.
        let mut touched: Vec<Vec<String>> = Vec::new();
        for (name, operand) in fields {
            let op =
                Op::parse(name).ok_or_else(|| bad(format!("unknown update operator {name}")))?;
            let Value::Object(targets) = operand else {
                return Err(bad(format!("{name} takes a document")));
            };
            if targets.is_empty() {
                return Err(bad(format!("{name} takes a non-empty document")));
            }
            for (path, arg) in targets {
                let parsed = split_path(name, path, false)?;
                check_operand(op, path, arg)?;
                let mut paths = vec![parsed.clone()];
                if op == Op::Rename {
                    let Value::String(to) = arg else {
                        return Err(bad(format!(
                            "$rename: the new name of {path:?} is a string"
                        )));
                    };
                    let to = split_path(name, to, false)?;
                    if overlaps(&parsed, &to) {
                        return Err(bad(format!("$rename: {path:?} and its new name overlap")));
                    }
                    paths.push(to);
                }
                for p in paths {
                    if touched.iter().any(|q| overlaps(q, &p)) {
                        return Err(bad(format!(
                            "{name}: updating {:?} conflicts with another part of the update",
                            p.join(".")
                        )));
                    }
                    touched.push(p);
                }
                if parsed.first().is_some_and(|f| f == "_id") && op != Op::Set {
                    return Err(bad(format!("{name}: the _id field cannot be changed")));
                }
                ops.push((op, parsed, arg.clone()));
            }
        }
        Ok(Update::Operators(ops))
    }

    /// Applies the update to `doc`; on error `doc` is unchanged.
    pub fn apply(&self, doc: &mut Value) -> Result<(), QueryError> {
        let mut next = match self {
            Update::Replace(replacement) => {
                let mut fields = Vec::new();
                if let Some(id) = doc.get("_id") {
                    if let Some(new_id) = replacement.get("_id") {
                        if compare(id, new_id) != Ordering::Equal {
                            return Err(bad("a replacement cannot change _id"));
                        }
                    }
                    fields.push(("_id".to_string(), id.clone()));
                }
                if let Value::Object(rest) = replacement {
                    fields.extend(rest.iter().filter(|(k, _)| k != "_id").cloned());
                }
                Value::Object(fields)
            }
            Update::Operators(ops) => {
                let mut next = doc.clone();
                let id_before = doc.get("_id").cloned();
                for (op, path, arg) in ops {
                    apply_one(&mut next, *op, path, arg)
                        .map_err(|e| bad(format!("{} {:?}: {}", op.name(), path.join("."), e.0)))?;
                }
                let id_after = next.get("_id");
                match (&id_before, id_after) {
                    (Some(a), Some(b)) if compare(a, b) != Ordering::Equal => {
                        return Err(bad("the _id field cannot be changed"))
                    }
                    (Some(_), None) => return Err(bad("the _id field cannot be removed")),
                    _ => {}
                }
                next
            }
        };
        std::mem::swap(doc, &mut next);
        Ok(())
    }
}

fn is_number(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::Double(_))
}

fn check_operand(op: Op, path: &str, arg: &Value) -> Result<(), QueryError> {
    match op {
        Op::Inc | Op::Mul if !is_number(arg) => Err(bad(format!(
            "{}: the value for {path:?} must be a number, not {arg}",
            op.name()
        ))),
        Op::Push | Op::AddToSet => {
            if let Value::Object(fields) = arg {
                for (k, v) in fields {
                    match k.as_str() {
                        "$each" if matches!(v, Value::Array(_)) => {}
                        "$each" => return Err(bad(format!("{}: $each takes an array", op.name()))),
                        k if k.starts_with('$') => {
                            return Err(bad(format!(
                                "{}: unsupported modifier {k} (only $each)",
                                op.name()
                            )))
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        }
        Op::Pull => {
            if let Value::Object(_) = arg {
                // Refuse now what would fail on every document.
                pull_matcher(arg).map(|_| ())
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// The elements `$each` lists, or the operand itself.
fn each(arg: &Value) -> Vec<Value> {
    match arg {
        Value::Object(fields) if fields.iter().any(|(k, _)| k == "$each") => match arg.get("$each")
        {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        },
        other => vec![other.clone()],
    }
}

/// How `$pull` recognises the elements to remove.
enum PullMatcher {
    Equal(Value),
    Cond(Cond),
    Doc(Filter),
}

fn pull_matcher(arg: &Value) -> Result<PullMatcher, QueryError> {
    match arg {
        Value::Object(fields)
            if fields.iter().all(|(k, _)| k.starts_with('$')) && !fields.is_empty() =>
        {
            // Conditions on the elements themselves: {$gte: 6}. Parsed as a filter on a
            // placeholder field, then used on each element.
            let filter = Filter::parse(&Value::Object(vec![("v".into(), arg.clone())]))?;
            match filter {
                Filter::Field { cond, .. } => Ok(PullMatcher::Cond(cond)),
                _ => Err(bad("$pull: bad condition")),
            }
        }
        Value::Object(_) => Ok(PullMatcher::Doc(Filter::parse(arg)?)),
        other => Ok(PullMatcher::Equal(other.clone())),
    }
}

impl PullMatcher {
    fn removes(&self, element: &Value) -> bool {
        match self {
            PullMatcher::Equal(v) => compare(v, element) == Ordering::Equal,
            PullMatcher::Cond(cond) => {
                let wrapped = Value::Object(vec![("v".into(), element.clone())]);
                Filter::Field {
                    path: vec!["v".into()],
                    cond: cond.clone(),
                }
                .matches(&wrapped)
            }
            PullMatcher::Doc(filter) => {
                matches!(element, Value::Object(_)) && filter.matches(element)
            }
        }
    }
}

fn apply_one(doc: &mut Value, op: Op, path: &[String], arg: &Value) -> Result<(), QueryError> {
    match op {
        Op::Unset => {
            remove(doc, path);
            Ok(())
        }
        Op::Rename => {
            let Value::String(to) = arg else {
                unreachable!("checked at parse")
            };
            let to: Vec<String> = to.split('.').map(str::to_string).collect();
            if through_array(doc, path) || through_array(doc, &to) {
                return Err(bad("$rename does not work through arrays"));
            }
            match remove(doc, path) {
                Some(value) => {
                    *slot(doc, &to)? = value;
                    Ok(())
                }
                None => Ok(()),
            }
        }
        _ => {
            let existed = exists(doc, path);
            if !existed && op == Op::Pull {
                return Ok(()); // nothing to pull from
            }
            let place = slot(doc, path)?;
            let current = existed.then(|| std::mem::replace(place, Value::Null));
            // On an error the placeholder stays, in the copy `apply` then drops.
            *place = combine(op, current, arg)?;
            Ok(())
        }
    }
}

/// What a field becomes under `op`, given what it was (None: missing).
fn combine(op: Op, current: Option<Value>, arg: &Value) -> Result<Value, QueryError> {
    Ok(match (op, current) {
        (Op::Set, _) => arg.clone(),
        (Op::Inc, None) => arg.clone(),
        (Op::Inc, Some(v)) => arithmetic(&v, arg, i64::checked_add, |a, b| a + b)?,
        (Op::Mul, None) => match arg {
            Value::Double(_) => Value::Double(0.0),
            _ => Value::Int(0),
        },
        (Op::Mul, Some(v)) => arithmetic(&v, arg, i64::checked_mul, |a, b| a * b)?,
        (Op::Min, Some(v)) if compare(&v, arg) != Ordering::Greater => v,
        (Op::Max, Some(v)) if compare(&v, arg) != Ordering::Less => v,
        (Op::Min | Op::Max, _) => arg.clone(),
        (Op::Push, None) => Value::Array(each(arg)),
        (Op::Push, Some(Value::Array(mut items))) => {
            items.extend(each(arg));
            Value::Array(items)
        }
        (Op::AddToSet, current) => {
            let mut items = match current {
                None => Vec::new(),
                Some(Value::Array(items)) => items,
                Some(other) => return Err(bad(format!("the field is not an array but {other}"))),
            };
            for v in each(arg) {
                if !items.iter().any(|i| compare(i, &v) == Ordering::Equal) {
                    items.push(v);
                }
            }
            Value::Array(items)
        }
        (Op::Pull, None) => Value::Array(Vec::new()),
        (Op::Pull, Some(Value::Array(items))) => {
            let matcher = pull_matcher(arg)?;
            Value::Array(items.into_iter().filter(|i| !matcher.removes(i)).collect())
        }
        (Op::Push | Op::Pull, Some(other)) => {
            return Err(bad(format!("the field is not an array but {other}")))
        }
        (Op::Unset | Op::Rename, _) => unreachable!("handled by apply_one"),
    })
}

fn arithmetic(
    current: &Value,
    arg: &Value,
    ints: fn(i64, i64) -> Option<i64>,
    doubles: fn(f64, f64) -> f64,
) -> Result<Value, QueryError> {
    match (current, arg) {
        (Value::Int(a), Value::Int(b)) => ints(*a, *b)
            .map(Value::Int)
            .ok_or_else(|| bad("integer overflow")),
        (a, b) if is_number(a) => Ok(Value::Double(doubles(
            a.as_f64().expect("a number"),
            b.as_f64().expect("a number"),
        ))),
        (other, _) => Err(bad(format!("the field is not a number but {other}"))),
    }
}

fn through_array(doc: &Value, path: &[String]) -> bool {
    let mut at = doc;
    for part in path {
        match at {
            Value::Array(_) => return true,
            Value::Object(_) => match at.get(part) {
                Some(next) => at = next,
                None => return false,
            },
            _ => return false,
        }
    }
    false
}

/// Removes the field at `path` (an array element becomes null); returns what was there.
fn remove(doc: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut at = doc;
    for part in parents {
        at = match at {
            Value::Object(fields) => &mut fields.iter_mut().find(|(k, _)| k == part)?.1,
            Value::Array(items) => items.get_mut(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match at {
        Value::Object(fields) => {
            let i = fields.iter().position(|(k, _)| k == last)?;
            Some(fields.remove(i).1)
        }
        Value::Array(items) => {
            let item = items.get_mut(last.parse::<usize>().ok()?)?;
            Some(std::mem::replace(item, Value::Null))
        }
        _ => None,
    }
}

/// The place at `path`, created (with documents on the way, arrays padded with nulls) if
/// missing. A path through a scalar is an error.
fn slot<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, QueryError> {
    let mut at = doc;
    for part in path {
        at = match at {
            Value::Object(fields) => {
                let i = match fields.iter().position(|(k, _)| k == part) {
                    Some(i) => i,
                    None => {
                        fields.push((part.clone(), Value::Object(Vec::new())));
                        fields.len() - 1
                    }
                };
                &mut fields[i].1
            }
            Value::Array(items) => {
                let index: usize = part.parse().map_err(|_| {
                    bad(format!("cannot use the part {part:?} to traverse an array"))
                })?;
                if index > 1_000_000 {
                    return Err(bad(format!("array index {index} is too large")));
                }
                while items.len() <= index {
                    items.push(Value::Null);
                }
                &mut items[index]
            }
            other => {
                return Err(bad(format!(
                    "cannot create field {part:?} in element {other}"
                )))
            }
        };
    }
    Ok(at)
}

fn exists(doc: &Value, path: &[String]) -> bool {
    let mut at = doc;
    for part in path {
        at = match at {
            Value::Object(_) => match at.get(part) {
                Some(next) => next,
                None => return false,
            },
            Value::Array(items) => match part.parse::<usize>().ok().and_then(|i| items.get(i)) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    true
}

#[cfg(test)]
mod tests;
