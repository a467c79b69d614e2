//! [`Value`]: a JSON document as kvs holds it — fields in their order, integers apart from
//! doubles — and MongoDB's comparison order over values.
//!
//! Why not `serde_json::Value`: its objects are sorted maps (field order is lost, and
//! MongoDB's order of documents depends on it), and it cannot tell `1` from `1.0` once parsed
//! into a float, which `$type` must.

use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// How deeply documents and queries may nest (MongoDB's limit is 100 levels too).
pub const DEPTH_MAX: usize = 100;

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
    Array(Vec<Value>),
    /// Fields in document order.
    Object(Vec<(String, Value)>),
}

/// Why a JSON text is not a document or a query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

impl Value {
    /// Parses JSON text; nesting deeper than [`DEPTH_MAX`] is an error.
    pub fn from_json(text: &str) -> Result<Value, JsonError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| JsonError(format!("malformed JSON: {e}")))?;
        if value.depth() > DEPTH_MAX {
            return Err(JsonError(format!("nesting deeper than {DEPTH_MAX} levels")));
        }
        Ok(value)
    }

    /// Nesting depth: 0 for a scalar.
    pub fn depth(&self) -> usize {
        match self {
            Value::Array(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Object(fields) => 1 + fields.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// The field `name` of an object.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(n) => Some(*n as f64),
            Value::Double(d) => Some(*d),
            _ => None,
        }
    }

    /// MongoDB's rank of this value's type in its comparison order (null before numbers
    /// before strings before objects before arrays before booleans).
    pub fn type_rank(&self) -> u8 {
        match self {
            Value::Null => 2,
            Value::Int(_) | Value::Double(_) => 3,
            Value::String(_) => 4,
            Value::Object(_) => 5,
            Value::Array(_) => 6,
            Value::Bool(_) => 8,
        }
    }

    /// MongoDB's `$type` name for this value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(n) if i32::try_from(*n).is_ok() => "int",
            Value::Int(_) => "long",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
}

/// Numbers compare by value whatever their type (an integer beyond 2^53 still compares
/// exactly against another integer).
fn compare_numbers(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Int(x), Value::Double(y)) => compare_int_double(*x, *y),
        (Value::Double(x), Value::Int(y)) => compare_int_double(*y, *x).reverse(),
        (Value::Double(x), Value::Double(y)) => compare_doubles(*x, *y),
        _ => unreachable!("numbers only"),
    }
}

/// NaN sorts below every other number, as in MongoDB.
fn compare_doubles(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => x.partial_cmp(&y).expect("no NaN"),
    }
}

fn compare_int_double(x: i64, y: f64) -> Ordering {
    if y.is_nan() {
        return Ordering::Greater;
    }
    // Beyond ±2^63 the double decides; otherwise compare the integer parts exactly, then
    // the fraction.
    if y >= i64::MAX as f64 {
        return Ordering::Less;
    }
    if y < i64::MIN as f64 {
        return Ordering::Greater;
    }
    let whole = y.trunc() as i64;
    match x.cmp(&whole) {
        Ordering::Equal => 0.0f64.partial_cmp(&y.fract()).expect("no NaN"),
        other => other,
    }
}

/// MongoDB's total order over values: first by type rank, then within the type. Objects
/// compare field by field (type of the value, then name, then value); arrays element by
/// element; a prefix sorts first.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    match a.type_rank().cmp(&b.type_rank()) {
        Ordering::Equal => {}
        other => return other,
    }
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                match compare(p, q) {
                    Ordering::Equal => {}
                    other => return other,
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Object(x), Value::Object(y)) => {
            for ((kp, vp), (kq, vq)) in x.iter().zip(y) {
                let step = vp
                    .type_rank()
                    .cmp(&vq.type_rank())
                    .then_with(|| kp.as_bytes().cmp(kq.as_bytes()))
                    .then_with(|| compare(vp, vq));
                if step != Ordering::Equal {
                    return step;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => compare_numbers(a, b),
    }
}

impl PartialEq for Value {
    /// Equality in MongoDB's sense: `1 == 1.0`, field order matters.
    fn eq(&self, other: &Value) -> bool {
        compare(self, other) == Ordering::Equal
    }
}

impl fmt::Display for Value {
    /// Compact JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(n) => write!(f, "{n}"),
            Value::Double(d) if d.is_finite() => {
                if d.fract() == 0.0 && d.abs() < 1e16 {
                    write!(f, "{d:.1}")
                } else {
                    write!(f, "{d}")
                }
            }
            // JSON has no NaN or infinity.
            Value::Double(_) => f.write_str("null"),
            Value::String(s) => f.write_str(&serde_json::to_string(s).map_err(|_| fmt::Error)?),
            Value::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Object(fields) => {
                f.write_str("{")?;
                for (i, (name, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    let name = serde_json::to_string(name).map_err(|_| fmt::Error)?;
                    write!(f, "{name}:{value}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Int(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(i64::try_from(n).map_or(Value::Double(n as f64), Value::Int))
    }

    fn visit_f64<E>(self, d: f64) -> Result<Value, E> {
        Ok(Value::Double(d))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields: Vec<(String, Value)> = Vec::new();
        while let Some((name, value)) = map.next_entry::<String, Value>()? {
            if fields.iter().any(|(k, _)| *k == name) {
                return Err(de::Error::custom(format!("duplicate field {name:?}")));
            }
            fields.push((name, value));
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Value {
        Value::from_json(text).unwrap()
    }

    #[test]
    fn parsing_keeps_field_order_and_integer_types() {
        let doc = v(r#"{"b": 1, "a": 1.0, "c": [true, null, "x"], "d": 3000000000}"#);
        assert_eq!(
            doc.to_string(),
            r#"{"b":1,"a":1.0,"c":[true,null,"x"],"d":3000000000}"#
        );
        assert_eq!(doc.get("b").unwrap().type_name(), "int");
        assert_eq!(doc.get("a").unwrap().type_name(), "double");
        assert_eq!(doc.get("d").unwrap().type_name(), "long");
        assert!(
            Value::from_json(r#"{"a": 1, "a": 2}"#).is_err(),
            "duplicate fields"
        );
        assert!(Value::from_json("{").is_err());
        let deep = "[".repeat(DEPTH_MAX + 1) + &"]".repeat(DEPTH_MAX + 1);
        assert!(Value::from_json(&deep).is_err(), "too deep");
    }

    #[test]
    fn comparison_follows_mongodb_type_order() {
        // null < numbers < strings < objects < arrays < booleans
        let ordered = [
            "null",
            "-5",
            "1",
            "1.5",
            "2",
            "\"\"",
            "\"a\"",
            "\"b\"",
            "{}",
            "{\"a\": 1}",
            "[]",
            "[1]",
            "[1, 2]",
            "[2]",
            "false",
            "true",
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(compare(&v(a), &v(b)), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(v("1"), v("1.0"));
        assert_eq!(
            compare(&v("9007199254740993"), &v("9007199254740992.0")),
            Ordering::Greater
        );
        assert_eq!(compare(&v("-1"), &v("-0.5")), Ordering::Less);
        // Objects: field value type first, then name, then value.
        assert_eq!(
            compare(&v(r#"{"a": "x"}"#), &v(r#"{"b": 1}"#)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&v(r#"{"a": 1}"#), &v(r#"{"b": 1}"#)),
            Ordering::Less
        );
        assert_ne!(
            v(r#"{"a": 1, "b": 2}"#),
            v(r#"{"b": 2, "a": 1}"#),
            "field order matters"
        );
    }
}
