//! Aggregation expressions: what `$project`, `$group`'s `_id` and its accumulators compute
//! with. An expression is a field path (`"$addr.city"`; through an array it gives the array
//! of the elements' values), a literal, `{"$literal": v}`, an array or a document of
//! expressions, or an operator: `{"$add": ["$price", "$tax"]}`.
//!
//! The operators follow MongoDB's semantics, including for missing fields: a missing value
//! is not null (it sorts below null, and `{"$eq": ["$gone", null]}` is false), most
//! arithmetic and string operators give null when an argument is null or missing, and a
//! wrong type (`{"$add": ["a", 1]}`) or a division by zero fails the whole command.

use std::cmp::Ordering;

use crate::doc::query::{bad, split_path, QueryError};
use crate::doc::value::{compare, Value};

/// An expression.
#[derive(Debug, Clone)]
pub enum Expr {
    Path(Vec<String>),
    Literal(Value),
    Array(Vec<Expr>),
    Object(Vec<(String, Expr)>),
    Op(Op, Vec<Expr>),
}

/// The expression operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Subtract,
    Multiply,
    Divide,
    Mod,
    Abs,
    Ceil,
    Floor,
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Cmp,
    And,
    Or,
    Not,
    Cond,
    IfNull,
    Concat,
    ToLower,
    ToUpper,
    StrLenCP,
    SubstrCP,
    Size,
    ArrayElemAt,
    In,
    Type,
}

/// How many arguments an operator takes: exactly `n`, or at least `n`.
enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

const OPS: [(&str, Op, Arity); 29] = [
    ("$add", Op::Add, Arity::AtLeast(0)),
    ("$subtract", Op::Subtract, Arity::Exactly(2)),
    ("$multiply", Op::Multiply, Arity::AtLeast(0)),
    ("$divide", Op::Divide, Arity::Exactly(2)),
    ("$mod", Op::Mod, Arity::Exactly(2)),
    ("$abs", Op::Abs, Arity::Exactly(1)),
    ("$ceil", Op::Ceil, Arity::Exactly(1)),
    ("$floor", Op::Floor, Arity::Exactly(1)),
    ("$eq", Op::Eq, Arity::Exactly(2)),
    ("$ne", Op::Ne, Arity::Exactly(2)),
    ("$gt", Op::Gt, Arity::Exactly(2)),
    ("$gte", Op::Gte, Arity::Exactly(2)),
    ("$lt", Op::Lt, Arity::Exactly(2)),
    ("$lte", Op::Lte, Arity::Exactly(2)),
    ("$cmp", Op::Cmp, Arity::Exactly(2)),
    ("$and", Op::And, Arity::AtLeast(0)),
    ("$or", Op::Or, Arity::AtLeast(0)),
    ("$not", Op::Not, Arity::Exactly(1)),
    ("$cond", Op::Cond, Arity::Exactly(3)),
    ("$ifNull", Op::IfNull, Arity::AtLeast(2)),
    ("$concat", Op::Concat, Arity::AtLeast(0)),
    ("$toLower", Op::ToLower, Arity::Exactly(1)),
    ("$toUpper", Op::ToUpper, Arity::Exactly(1)),
    ("$strLenCP", Op::StrLenCP, Arity::Exactly(1)),
    ("$substrCP", Op::SubstrCP, Arity::Exactly(3)),
    ("$size", Op::Size, Arity::Exactly(1)),
    ("$arrayElemAt", Op::ArrayElemAt, Arity::Exactly(2)),
    ("$in", Op::In, Arity::Exactly(2)),
    ("$type", Op::Type, Arity::Exactly(1)),
];

impl Op {
    /// The operator's name, for messages (looked up only when one is made).
    fn name(self) -> &'static str {
        OPS.iter()
            .find(|(_, o, _)| *o == self)
            .map_or("?", |(n, _, _)| *n)
    }
}

impl Expr {
    pub fn parse(value: &Value) -> Result<Expr, QueryError> {
        Ok(match value {
            Value::String(s) if s.starts_with("$$") => {
                return Err(bad(format!("variables ({s}) are not supported")))
            }
            Value::String(s) if s.starts_with('$') => {
                Expr::Path(split_path("expression", &s[1..], true)?)
            }
            Value::Object(fields) if fields.len() == 1 && fields[0].0 == "$literal" => {
                Expr::Literal(fields[0].1.clone())
            }
            Value::Object(fields) if fields.len() == 1 && fields[0].0.starts_with('$') => {
                let (name, arg) = &fields[0];
                parse_op(name, arg)?
            }
            Value::Object(fields) => {
                if let Some((op, _)) = fields.iter().find(|(k, _)| k.starts_with('$')) {
                    return Err(bad(format!(
                        "an expression operator ({op}) must be the only field of its document"
                    )));
                }
                Expr::Object(
                    fields
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), Expr::parse(v)?)))
                        .collect::<Result<_, QueryError>>()?,
                )
            }
            Value::Array(items) => {
                let items = items
                    .iter()
                    .map(Expr::parse)
                    .collect::<Result<Vec<_>, QueryError>>()?;
                if items.iter().all(|i| matches!(i, Expr::Literal(_))) {
                    Expr::Literal(Value::Array(
                        items
                            .into_iter()
                            .map(|i| match i {
                                Expr::Literal(v) => v,
                                _ => unreachable!("all literals"),
                            })
                            .collect(),
                    ))
                } else {
                    Expr::Array(items)
                }
            }
            other => Expr::Literal(other.clone()),
        })
    }

    /// The expression's value for `doc`; None when it is missing (a path that is not
    /// there). Fails on operands of the wrong type.
    pub fn eval(&self, doc: &Value) -> Result<Option<Value>, QueryError> {
        Ok(match self {
            Expr::Path(parts) => path_value(doc, parts),
            Expr::Literal(v) => Some(v.clone()),
            Expr::Array(items) => Some(Value::Array(
                items
                    .iter()
                    .map(|i| Ok(i.eval(doc)?.unwrap_or(Value::Null)))
                    .collect::<Result<_, QueryError>>()?,
            )),
            Expr::Object(fields) => {
                let mut out = Vec::with_capacity(fields.len());
                for (k, e) in fields {
                    if let Some(v) = e.eval(doc)? {
                        out.push((k.clone(), v));
                    }
                }
                Some(Value::Object(out))
            }
            Expr::Op(op, args) => eval_op(*op, args, doc)?,
        })
    }
}

fn parse_op(name: &str, arg: &Value) -> Result<Expr, QueryError> {
    let Some((_, op, arity)) = OPS.iter().find(|(n, _, _)| *n == name) else {
        return Err(bad(format!("unknown expression operator {name}")));
    };
    // `{"$cond": {"if": .., "then": .., "else": ..}}` names its arguments.
    if let (Op::Cond, Value::Object(fields)) = (op, arg) {
        let mut args = Vec::with_capacity(3);
        for part in ["if", "then", "else"] {
            let found = fields.iter().find(|(k, _)| k == part);
            let Some((_, v)) = found else {
                return Err(bad(format!("$cond needs {part:?}")));
            };
            args.push(Expr::parse(v)?);
        }
        if let Some((k, _)) = fields
            .iter()
            .find(|(k, _)| !["if", "then", "else"].contains(&k.as_str()))
        {
            return Err(bad(format!("$cond: unknown argument {k:?}")));
        }
        return Ok(Expr::Op(Op::Cond, args));
    }
    // An operator's arguments are an array; a single argument may stand alone.
    let args: Vec<Expr> = match arg {
        Value::Array(items) => items
            .iter()
            .map(Expr::parse)
            .collect::<Result<_, QueryError>>()?,
        single => vec![Expr::parse(single)?],
    };
    let fits = match arity {
        Arity::Exactly(n) => args.len() == *n,
        Arity::AtLeast(n) => args.len() >= *n,
    };
    if !fits {
        let wanted = match arity {
            Arity::Exactly(1) => "exactly 1 argument".to_string(),
            Arity::Exactly(n) => format!("exactly {n} arguments"),
            Arity::AtLeast(n) => format!("at least {n} arguments"),
        };
        return Err(bad(format!("{name} takes {wanted}, not {}", args.len())));
    }
    Ok(Expr::Op(*op, args))
}

/// The value at a path; through an array, the array of the elements' values.
pub(super) fn path_value(value: &Value, parts: &[String]) -> Option<Value> {
    let Some((first, rest)) = parts.split_first() else {
        return Some(value.clone());
    };
    match value {
        Value::Object(_) => path_value(value.get(first)?, rest),
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter(|i| matches!(i, Value::Object(_) | Value::Array(_)))
                .filter_map(|i| path_value(i, parts))
                .collect(),
        )),
        _ => None,
    }
}

/// MongoDB's truth: false, null, missing and zero are false; everything else is true.
fn truthy(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Int(n)) => *n != 0,
        Some(Value::Double(d)) => *d != 0.0,
        Some(_) => true,
    }
}

/// Compares two values as aggregation does: a missing value sorts below everything,
/// null included.
fn compare_present(a: &Option<Value>, b: &Option<Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => compare(a, b),
    }
}

fn is_nullish(value: &Option<Value>) -> bool {
    matches!(value, None | Some(Value::Null))
}

/// The operand that does not fit, shown up to this many characters.
const SHOWN_OPERAND_MAX: usize = 100;

fn type_error(op: &str, what: &str, value: &Value) -> QueryError {
    let mut shown = value.to_string();
    if shown.len() > SHOWN_OPERAND_MAX {
        let cut = (0..=SHOWN_OPERAND_MAX)
            .rev()
            .find(|i| shown.is_char_boundary(*i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push_str("...");
    }
    bad(format!(
        "{op} only supports {what}, not {} ({shown})",
        value.type_name()
    ))
}

/// A number as an integer or a double, for arithmetic.
#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Double(f64),
}

impl Num {
    fn of(op: Op, value: &Value) -> Result<Num, QueryError> {
        match value {
            Value::Int(n) => Ok(Num::Int(*n)),
            Value::Double(d) => Ok(Num::Double(*d)),
            other => Err(type_error(op.name(), "numbers", other)),
        }
    }

    fn f64(self) -> f64 {
        match self {
            Num::Int(n) => n as f64,
            Num::Double(d) => d,
        }
    }

    fn value(self) -> Value {
        match self {
            Num::Int(n) => Value::Int(n),
            Num::Double(d) => Value::Double(d),
        }
    }

    /// Integers stay integers while they fit; past that (or with any double) the result is
    /// a double, as MongoDB's longs overflow into doubles.
    fn combine(
        self,
        other: Num,
        int: fn(i64, i64) -> Option<i64>,
        double: fn(f64, f64) -> f64,
    ) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => match int(a, b) {
                Some(n) => Num::Int(n),
                None => Num::Double(double(a as f64, b as f64)),
            },
            (a, b) => Num::Double(double(a.f64(), b.f64())),
        }
    }
}

fn eval_op(op: Op, args: &[Expr], doc: &Value) -> Result<Option<Value>, QueryError> {
    // Operators that do not evaluate every argument up front.
    match op {
        Op::And => {
            for a in args {
                if !truthy(&a.eval(doc)?) {
                    return Ok(Some(Value::Bool(false)));
                }
            }
            return Ok(Some(Value::Bool(true)));
        }
        Op::Or => {
            for a in args {
                if truthy(&a.eval(doc)?) {
                    return Ok(Some(Value::Bool(true)));
                }
            }
            return Ok(Some(Value::Bool(false)));
        }
        Op::Cond => {
            let branch = if truthy(&args[0].eval(doc)?) { 1 } else { 2 };
            return args[branch].eval(doc);
        }
        Op::IfNull => {
            let (replacement, tried) = args.split_last().expect("at least two");
            for a in tried {
                let v = a.eval(doc)?;
                if !is_nullish(&v) {
                    return Ok(v);
                }
            }
            return replacement.eval(doc);
        }
        _ => {}
    }
    let values = args
        .iter()
        .map(|a| a.eval(doc))
        .collect::<Result<Vec<Option<Value>>, QueryError>>()?;
    let ordered = |want: fn(Ordering) -> bool| {
        Ok(Some(Value::Bool(want(compare_present(
            &values[0], &values[1],
        )))))
    };
    match op {
        Op::Eq => return ordered(|o| o == Ordering::Equal),
        Op::Ne => return ordered(|o| o != Ordering::Equal),
        Op::Gt => return ordered(|o| o == Ordering::Greater),
        Op::Gte => return ordered(|o| o != Ordering::Less),
        Op::Lt => return ordered(|o| o == Ordering::Less),
        Op::Lte => return ordered(|o| o != Ordering::Greater),
        Op::Cmp => {
            let n = match compare_present(&values[0], &values[1]) {
                Ordering::Less => -1,
                Ordering::Equal => 0,
                Ordering::Greater => 1,
            };
            return Ok(Some(Value::Int(n)));
        }
        Op::Not => return Ok(Some(Value::Bool(!truthy(&values[0])))),
        Op::Type => {
            let type_name = values[0].as_ref().map_or("missing", Value::type_name);
            return Ok(Some(Value::String(type_name.to_string())));
        }
        Op::Size => {
            return match &values[0] {
                Some(Value::Array(items)) => Ok(Some(Value::Int(items.len() as i64))),
                Some(other) => Err(type_error(op.name(), "an array", other)),
                None => Err(bad(format!(
                    "{} needs an array, and the value is missing",
                    op.name()
                ))),
            }
        }
        Op::In => {
            return match &values[1] {
                Some(Value::Array(items)) => {
                    let needle = values[0].clone().unwrap_or(Value::Null);
                    let found = values[0].is_some()
                        && items.iter().any(|i| compare(i, &needle) == Ordering::Equal);
                    Ok(Some(Value::Bool(found)))
                }
                Some(other) => Err(type_error("$in's second argument", "an array", other)),
                None => Err(bad("$in needs an array, and the value is missing")),
            }
        }
        Op::ToLower | Op::ToUpper => {
            return match &values[0] {
                None | Some(Value::Null) => Ok(Some(Value::String(String::new()))),
                // ASCII letters only, as MongoDB's (its case mapping is defined for ASCII).
                Some(Value::String(s)) => Ok(Some(Value::String(if op == Op::ToLower {
                    s.to_ascii_lowercase()
                } else {
                    s.to_ascii_uppercase()
                }))),
                Some(other) => Err(type_error(op.name(), "strings", other)),
            };
        }
        Op::StrLenCP => {
            return match &values[0] {
                Some(Value::String(s)) => Ok(Some(Value::Int(s.chars().count() as i64))),
                Some(other) => Err(type_error(op.name(), "strings", other)),
                None => Err(bad(format!(
                    "{} needs a string, and the value is missing",
                    op.name()
                ))),
            }
        }
        Op::SubstrCP => {
            let Some(Value::String(s)) = &values[0] else {
                return match &values[0] {
                    None | Some(Value::Null) => Ok(Some(Value::String(String::new()))),
                    Some(other) => Err(type_error(op.name(), "strings", other)),
                };
            };
            let index = |v: &Option<Value>, what: &str| match v {
                Some(Value::Int(n)) if *n >= 0 => Ok(*n as usize),
                Some(Value::Double(d)) if *d >= 0.0 && d.fract() == 0.0 => Ok(*d as usize),
                _ => Err(bad(format!(
                    "{}: the {what} must be a non-negative integer",
                    op.name()
                ))),
            };
            let (start, count) = (index(&values[1], "start")?, index(&values[2], "count")?);
            let out: String = s.chars().skip(start).take(count).collect();
            return Ok(Some(Value::String(out)));
        }
        Op::ArrayElemAt => {
            let (Some(array), Some(index)) = (&values[0], &values[1]) else {
                return Ok(Some(Value::Null));
            };
            if matches!(array, Value::Null) || matches!(index, Value::Null) {
                return Ok(Some(Value::Null));
            }
            let Value::Array(items) = array else {
                return Err(type_error(op.name(), "an array first", array));
            };
            let at = match index {
                Value::Int(n) => *n,
                Value::Double(d) if d.fract() == 0.0 => *d as i64,
                other => return Err(type_error(op.name(), "an integer index", other)),
            };
            let at = if at < 0 { items.len() as i64 + at } else { at };
            return Ok(usize::try_from(at).ok().and_then(|i| items.get(i)).cloned());
        }
        _ => {}
    }
    // Arithmetic and $concat: null or missing gives null. The operators of any number of
    // arguments take them in order (`{"$add": ["a", null]}` fails on "a", `[null, "a"]` is
    // null); the others look for null first.
    for v in &values {
        match v {
            None | Some(Value::Null) => return Ok(Some(Value::Null)),
            Some(Value::String(_)) if op == Op::Concat => {}
            Some(Value::Int(_) | Value::Double(_)) if op != Op::Concat => {}
            Some(other) if matches!(op, Op::Add | Op::Multiply) => {
                return Err(type_error(op.name(), "numbers", other))
            }
            Some(other) if op == Op::Concat => return Err(type_error(op.name(), "strings", other)),
            Some(_) => {}
        }
    }
    let values: Vec<Value> = values.into_iter().map(|v| v.expect("present")).collect();
    let nums = || {
        values
            .iter()
            .map(|v| Num::of(op, v))
            .collect::<Result<Vec<Num>, QueryError>>()
    };
    let result = match op {
        Op::Add => nums()?
            .into_iter()
            .fold(Num::Int(0), |a, b| {
                a.combine(b, i64::checked_add, |x, y| x + y)
            })
            .value(),
        Op::Multiply => nums()?
            .into_iter()
            .fold(Num::Int(1), |a, b| {
                a.combine(b, i64::checked_mul, |x, y| x * y)
            })
            .value(),
        Op::Subtract => {
            let n = nums()?;
            n[0].combine(n[1], i64::checked_sub, |x, y| x - y).value()
        }
        Op::Divide => {
            let n = nums()?;
            if n[1].f64() == 0.0 {
                return Err(bad("$divide by zero"));
            }
            Value::Double(n[0].f64() / n[1].f64())
        }
        Op::Mod => {
            let n = nums()?;
            if n[1].f64() == 0.0 {
                return Err(bad("$mod by zero"));
            }
            // As MongoDB's: a double result when the dividend is a double or the divisor a
            // fractional one; an integer otherwise (a whole double divisor counts as one).
            match (n[0], n[1]) {
                (Num::Int(a), Num::Int(b)) => Value::Int(a.checked_rem(b).unwrap_or(0)),
                (Num::Int(a), Num::Double(b)) if b.fract() == 0.0 && b.abs() < 9.2e18 => {
                    Value::Int(a.checked_rem(b as i64).unwrap_or(0))
                }
                (a, b) => Value::Double(a.f64() % b.f64()),
            }
        }
        Op::Abs => match Num::of(op, &values[0])? {
            Num::Int(n) => Value::Int(
                n.checked_abs()
                    .ok_or_else(|| bad(format!("$abs of {n} does not fit a long")))?,
            ),
            Num::Double(d) => Value::Double(d.abs()),
        },
        Op::Ceil | Op::Floor => match Num::of(op, &values[0])? {
            Num::Int(n) => Value::Int(n),
            Num::Double(d) => Value::Double(if op == Op::Ceil { d.ceil() } else { d.floor() }),
        },
        Op::Concat => {
            let mut out = String::new();
            for v in &values {
                match v {
                    Value::String(s) => out.push_str(s),
                    other => return Err(type_error(op.name(), "strings", other)),
                }
            }
            Value::String(out)
        }
        _ => unreachable!("every operator is handled above"),
    };
    Ok(Some(result))
}
