//! MongoDB query filters: parsed from a [`Value`] into a [`Filter`], then matched against
//! documents with MongoDB's semantics.
//!
//! The rules that make a filter on a path match (MongoDB's, as documented):
//! - A dotted path walks into nested documents; through an array it walks into each element
//!   that is a document, and a numeric component also indexes the array.
//! - A condition matches when **any** value the path reaches satisfies it, and a value that
//!   is an array offers its elements as well as itself (`{tags: "a"}` matches
//!   `{tags: ["a", "b"]}`, `{tags: ["a", "b"]}` matches it too).
//! - `null` equality matches a missing field as well as a null one.
//! - Range operators (`$gt`, `$gte`, `$lt`, `$lte`) compare only values of the operand's
//!   type bracket (numbers with numbers, strings with strings, ...), in MongoDB's order.
//! - `$ne`, `$nin` and `$not` are the negations of `$eq`, `$in` and their operand: they
//!   match documents where the field is missing.
//!
//! Errors name the offending part of the query; parsing never panics on any input.

use std::cmp::Ordering;

use regex::Regex;

use super::value::{compare, Value};

/// A query that cannot be run, with the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad query: {0}")]
pub struct QueryError(pub String);

pub(crate) fn bad(message: impl Into<String>) -> QueryError {
    QueryError(message.into())
}

/// The components of dotted field path `path`, for `what` (named in errors). An empty
/// component is an error; so is one starting with '$' unless `dollar_ok` (a filter may name
/// such a field; updates, sorts and projections may not).
pub(crate) fn split_path(
    what: &str,
    path: &str,
    dollar_ok: bool,
) -> Result<Vec<String>, QueryError> {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(bad(format!(
            "{what}: bad field path {path:?}: an empty component"
        )));
    }
    if !dollar_ok && parts.iter().any(|p| p.starts_with('$')) {
        return Err(bad(format!(
            "{what}: bad field path {path:?}: a component starts with '$'"
        )));
    }
    Ok(parts)
}

/// A parsed filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Every part must match (a filter document's fields, or `$and`).
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Nor(Vec<Filter>),
    /// A condition on the values at a dotted path.
    Field {
        path: Vec<String>,
        cond: Cond,
    },
}

/// A condition on the values a path reaches.
#[derive(Debug, Clone)]
pub enum Cond {
    Eq(Value),
    Ne(Value),
    Cmp(Ordering, bool, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exists(bool),
    Type(Vec<TypeSet>),
    Size(usize),
    All(Vec<Value>),
    /// Some element of an array satisfies every condition (operators given directly).
    ElemMatchValue(Vec<Cond>),
    /// Some element of an array is a document the filter matches.
    ElemMatchDoc(Box<Filter>),
    Regex(Regex),
    Not(Box<Cond>),
    /// Several operators on one field: all must hold.
    Every(Vec<Cond>),
}

/// What a `$type` operand names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeSet {
    Named(&'static str),
    /// `"number"`: int, long or double.
    Number,
}

impl TypeSet {
    fn parse(operand: &Value) -> Result<TypeSet, QueryError> {
        const NAMES: [(&str, i64); 8] = [
            ("double", 1),
            ("string", 2),
            ("object", 3),
            ("array", 4),
            ("bool", 8),
            ("null", 10),
            ("int", 16),
            ("long", 18),
        ];
        match operand {
            Value::String(s) if s == "number" => Ok(TypeSet::Number),
            Value::String(s) => NAMES
                .iter()
                .find(|(name, _)| name == s)
                .map(|(name, _)| TypeSet::Named(name))
                .ok_or_else(|| bad(format!("$type: unknown type name {s:?}"))),
            Value::Int(code) => NAMES
                .iter()
                .find(|(_, c)| c == code)
                .map(|(name, _)| TypeSet::Named(name))
                .ok_or_else(|| bad(format!("$type: unknown or unsupported type code {code}"))),
            other => Err(bad(format!("$type takes a type name or code, not {other}"))),
        }
    }

    fn contains(self, value: &Value) -> bool {
        match self {
            TypeSet::Number => matches!(value, Value::Int(_) | Value::Double(_)),
            TypeSet::Named(name) => value.type_name() == name,
        }
    }
}

impl Filter {
    /// Parses a filter document (`{}` matches everything).
    pub fn parse(query: &Value) -> Result<Filter, QueryError> {
        let Value::Object(fields) = query else {
            return Err(bad(format!("a filter is a document, not {query}")));
        };
        let mut parts = Vec::with_capacity(fields.len());
        for (name, operand) in fields {
            parts.push(match name.as_str() {
                "$and" | "$or" | "$nor" => {
                    let Value::Array(items) = operand else {
                        return Err(bad(format!("{name} takes an array of filters")));
                    };
                    if items.is_empty() {
                        return Err(bad(format!("{name} takes a non-empty array")));
                    }
                    let filters = items
                        .iter()
                        .map(Filter::parse)
                        .collect::<Result<Vec<_>, _>>()?;
                    match name.as_str() {
                        "$and" => Filter::And(filters),
                        "$or" => Filter::Or(filters),
                        _ => Filter::Nor(filters),
                    }
                }
                other if other.starts_with('$') => {
                    return Err(bad(format!("unknown top-level operator {other}")))
                }
                "" => return Err(bad("an empty field name")),
                path => Filter::Field {
                    path: split_path("filter", path, true)?,
                    cond: Cond::parse(path, operand)?,
                },
            });
        }
        Ok(if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Filter::And(parts)
        })
    }

    /// Whether `doc` matches.
    pub fn matches(&self, doc: &Value) -> bool {
        match self {
            Filter::And(parts) => parts.iter().all(|p| p.matches(doc)),
            Filter::Or(parts) => parts.iter().any(|p| p.matches(doc)),
            Filter::Nor(parts) => !parts.iter().any(|p| p.matches(doc)),
            Filter::Field { path, cond } => {
                let reached = reach(doc, path);
                cond.holds(&reached)
            }
        }
    }
}

/// Whether `operand` is an operator document (`{"$gt": 1}`), a plain value, or a mix.
fn is_operator_document(field: &str, operand: &Value) -> Result<bool, QueryError> {
    let Value::Object(fields) = operand else {
        return Ok(false);
    };
    let operators = fields.iter().filter(|(k, _)| k.starts_with('$')).count();
    match operators {
        0 => Ok(false),
        n if n == fields.len() => Ok(true),
        _ => Err(bad(format!(
            "{field}: a condition mixes operators and field names"
        ))),
    }
}

impl Cond {
    fn parse(field: &str, operand: &Value) -> Result<Cond, QueryError> {
        if !is_operator_document(field, operand)? {
            return Ok(Cond::Eq(operand.clone()));
        }
        let Value::Object(ops) = operand else {
            unreachable!("an operator document is an object")
        };
        let mut conds = Vec::with_capacity(ops.len());
        for (op, arg) in ops {
            conds.push(Cond::parse_operator(field, op, arg, ops)?);
        }
        Ok(if conds.len() == 1 {
            conds.pop().expect("one")
        } else {
            Cond::Every(conds)
        })
    }

    fn parse_operator(
        field: &str,
        op: &str,
        arg: &Value,
        siblings: &[(String, Value)],
    ) -> Result<Cond, QueryError> {
        let list = |arg: &Value| match arg {
            Value::Array(items) => Ok(items.clone()),
            _ => Err(bad(format!("{field}: {op} takes an array"))),
        };
        Ok(match op {
            "$eq" => Cond::Eq(arg.clone()),
            "$ne" => Cond::Ne(arg.clone()),
            "$gt" => Cond::Cmp(Ordering::Greater, false, arg.clone()),
            "$gte" => Cond::Cmp(Ordering::Greater, true, arg.clone()),
            "$lt" => Cond::Cmp(Ordering::Less, false, arg.clone()),
            "$lte" => Cond::Cmp(Ordering::Less, true, arg.clone()),
            "$in" => Cond::In(list(arg)?),
            "$nin" => Cond::Nin(list(arg)?),
            "$all" => Cond::All(list(arg)?),
            "$exists" => Cond::Exists(match arg {
                Value::Bool(b) => *b,
                Value::Int(n) => *n != 0,
                Value::Double(d) => *d != 0.0,
                Value::Null => false,
                _ => return Err(bad(format!("{field}: $exists takes a boolean"))),
            }),
            "$type" => Cond::Type(match arg {
                Value::Array(items) => items
                    .iter()
                    .map(TypeSet::parse)
                    .collect::<Result<Vec<_>, _>>()?,
                single => vec![TypeSet::parse(single)?],
            }),
            "$size" => Cond::Size(match arg {
                Value::Int(n) if *n >= 0 => *n as usize,
                Value::Double(d) if *d >= 0.0 && d.fract() == 0.0 => *d as usize,
                _ => return Err(bad(format!("{field}: $size takes a non-negative integer"))),
            }),
            "$elemMatch" => {
                let Value::Object(_) = arg else {
                    return Err(bad(format!("{field}: $elemMatch takes a document")));
                };
                if is_operator_document(field, arg)? && !has_logical(arg) {
                    match Cond::parse(field, arg)? {
                        Cond::Every(conds) => Cond::ElemMatchValue(conds),
                        one => Cond::ElemMatchValue(vec![one]),
                    }
                } else {
                    Cond::ElemMatchDoc(Box::new(Filter::parse(arg)?))
                }
            }
            "$regex" => {
                let Value::String(pattern) = arg else {
                    return Err(bad(format!("{field}: $regex takes a string")));
                };
                let options = match siblings.iter().find(|(k, _)| k == "$options") {
                    Some((_, Value::String(o))) => o.as_str(),
                    Some(_) => return Err(bad(format!("{field}: $options takes a string"))),
                    None => "",
                };
                Cond::Regex(compile_regex(field, pattern, options)?)
            }
            "$options" => {
                if !siblings.iter().any(|(k, _)| k == "$regex") {
                    return Err(bad(format!("{field}: $options without $regex")));
                }
                // Read with $regex; matches everything on its own.
                Cond::Every(Vec::new())
            }
            "$not" => match arg {
                Value::Object(_) if is_operator_document(field, arg)? => {
                    Cond::Not(Box::new(Cond::parse(field, arg)?))
                }
                _ => return Err(bad(format!("{field}: $not takes an operator document"))),
            },
            other => return Err(bad(format!("{field}: unknown operator {other}"))),
        })
    }

    /// Whether the condition holds for what a path reached.
    fn holds(&self, reached: &Reached) -> bool {
        match self {
            Cond::Eq(want) => reached.any(|v| v == want) || want_null(want) && reached.missing,
            Cond::Ne(want) => !Cond::Eq(want.clone()).holds(reached),
            Cond::Cmp(side, or_equal, want) => {
                if matches!(want, Value::Null) && *or_equal {
                    // $gte/$lte null: equality with null (missing included).
                    return Cond::Eq(Value::Null).holds(reached);
                }
                reached.any(|v| {
                    same_bracket(v, want) && {
                        let order = compare(v, want);
                        order == *side || *or_equal && order == Ordering::Equal
                    }
                })
            }
            Cond::In(wanted) => wanted.iter().any(|w| Cond::Eq(w.clone()).holds(reached)),
            Cond::Nin(wanted) => !Cond::In(wanted.clone()).holds(reached),
            Cond::Exists(want) => reached.exists() == *want,
            Cond::Type(types) => reached.any(|v| types.iter().any(|t| t.contains(v))),
            Cond::Size(n) => reached
                .values
                .iter()
                .any(|v| matches!(v, Value::Array(items) if items.len() == *n)),
            Cond::All(wanted) => {
                !wanted.is_empty() && wanted.iter().all(|w| Cond::Eq(w.clone()).holds(reached))
            }
            Cond::ElemMatchValue(conds) => reached.arrays().any(|items| {
                items.iter().any(|item| {
                    let one = Reached::single(item);
                    conds.iter().all(|c| c.holds(&one))
                })
            }),
            Cond::ElemMatchDoc(filter) => reached.arrays().any(|items| {
                items
                    .iter()
                    .any(|item| matches!(item, Value::Object(_)) && filter.matches(item))
            }),
            Cond::Regex(regex) => {
                reached.any(|v| matches!(v, Value::String(s) if regex.is_match(s)))
            }
            Cond::Not(inner) => !inner.holds(reached),
            Cond::Every(conds) => conds.iter().all(|c| c.holds(reached)),
        }
    }
}

fn has_logical(arg: &Value) -> bool {
    matches!(arg, Value::Object(fields) if fields.iter().any(|(k, _)| matches!(k.as_str(), "$and" | "$or" | "$nor")))
}

fn want_null(v: &Value) -> bool {
    matches!(v, Value::Null)
}

/// Range comparisons only look at values of the operand's type bracket.
fn same_bracket(a: &Value, b: &Value) -> bool {
    a.type_rank() == b.type_rank()
}

fn compile_regex(field: &str, pattern: &str, options: &str) -> Result<Regex, QueryError> {
    let mut flags = String::new();
    for option in options.chars() {
        match option {
            'i' | 'm' | 's' | 'x' => flags.push(option),
            other => return Err(bad(format!("{field}: unknown $regex option {other:?}"))),
        }
    }
    let full = if flags.is_empty() {
        pattern.to_string()
    } else {
        format!("(?{flags}){pattern}")
    };
    regex::RegexBuilder::new(&full)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| bad(format!("{field}: $regex {pattern:?} does not compile: {e}")))
}

/// What a path reaches in a document: the values (arrays at the end offer their elements as
/// well), and whether it found no value somewhere along the way.
pub struct Reached<'a> {
    /// Values at the end of the path.
    values: Vec<&'a Value>,
    /// Elements of arrays at the end of the path.
    elements: Vec<&'a Value>,
    /// A document on the way lacked the next field.
    missing: bool,
}

impl<'a> Reached<'a> {
    fn single(value: &'a Value) -> Reached<'a> {
        let elements = match value {
            Value::Array(items) => items.iter().collect(),
            _ => Vec::new(),
        };
        Reached {
            values: vec![value],
            elements,
            missing: false,
        }
    }

    fn any(&self, mut test: impl FnMut(&Value) -> bool) -> bool {
        self.values.iter().any(|v| test(v)) || self.elements.iter().any(|v| test(v))
    }

    /// Every value reached, then every element of the arrays among them.
    pub fn values_and_elements(&self) -> impl Iterator<Item = &'a Value> + '_ {
        self.values.iter().chain(self.elements.iter()).copied()
    }

    /// Whether a document on the way lacked the next field, or a scalar stood where the
    /// path needed a document. An array on the way whose elements hold no documents does
    /// not make the field missing (MongoDB: `{"a.b": null}` does not match `{a: [1, 2]}`).
    pub fn is_missing(&self) -> bool {
        self.missing
    }

    /// The values at the end of the path.
    pub fn values(&self) -> &[&'a Value] {
        &self.values
    }

    /// The elements of the arrays among the values.
    pub fn elements(&self) -> &[&'a Value] {
        &self.elements
    }

    fn exists(&self) -> bool {
        !self.values.is_empty()
    }

    fn arrays(&self) -> impl Iterator<Item = &'a Vec<Value>> + '_ {
        self.values.iter().filter_map(|v| match v {
            Value::Array(items) => Some(items),
            _ => None,
        })
    }
}

/// Walks `path` from `doc`.
pub fn reach<'a>(doc: &'a Value, path: &[String]) -> Reached<'a> {
    let mut reached = Reached {
        values: Vec::new(),
        elements: Vec::new(),
        missing: false,
    };
    walk(doc, path, &mut reached);
    reached
}

fn walk<'a>(value: &'a Value, path: &[String], out: &mut Reached<'a>) {
    let Some((first, rest)) = path.split_first() else {
        out.values.push(value);
        if let Value::Array(items) = value {
            out.elements.extend(items.iter());
        }
        return;
    };
    match value {
        Value::Object(_) => match value.get(first) {
            Some(next) => walk(next, rest, out),
            None => out.missing = true,
        },
        Value::Array(items) => {
            if let Ok(index) = first.parse::<usize>() {
                if let Some(item) = items.get(index) {
                    walk(item, rest, out);
                }
            }
            for item in items {
                if let Value::Object(_) = item {
                    walk(item, path, out);
                }
            }
        }
        _ => out.missing = true,
    }
}

#[cfg(test)]
mod tests;
