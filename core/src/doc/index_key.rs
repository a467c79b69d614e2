//! Index keys: values encoded so that comparing the bytes (memcmp) orders them exactly as
//! MongoDB orders the values ([`super::value::compare`]). A secondary index is then an
//! ordinary range of the shard's B+tree, and an index bound is a byte range.
//!
//! ```text
//! key      = rank payload            rank: the type's place in MongoDB's order (1 byte, >= 1)
//! null     = (nothing)
//! number   = 8 bytes: the value as a double, sign-flipped so bytes order like numbers
//!            (-0 as 0, every NaN as the smallest), then 2 bytes: how far an integer is
//!            from that double (non-zero only for integers beyond 2^53), offset by 2^15
//! string   = bytes with 0x00 written 0x00 0xFF, then 0x00 0x00 (a prefix sorts first)
//! object   = per field: the value's rank, the name as a string, the value's payload; 0x00
//! array    = per element: its key; then 0x00
//! bool     = 0x00 or 0x01
//! ```
//!
//! Equal values have equal keys (`1` and `1.0`), so an equality bound finds both. A
//! descending field of a compound index has all its bytes inverted; every key is self-
//! delimiting, so the components of a compound key never run into each other.

use super::value::Value;

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

fn put_number(out: &mut Vec<u8>, value: &Value) {
    let (double, offset) = match value {
        Value::Int(n) => {
            let d = *n as f64;
            // The distance to the nearest double is below 2^11 for any i64.
            let offset = i128::from(*n) - d as i128;
            (d, offset as i16)
        }
        Value::Double(d) => (*d, 0),
        _ => unreachable!("numbers only"),
    };
    let bits = if double.is_nan() {
        0
    } else {
        let d = if double == 0.0 { 0.0 } else { double };
        let bits = d.to_bits();
        if bits >> 63 == 1 {
            !bits
        } else {
            bits | 1 << 63
        }
    };
    out.extend_from_slice(&bits.to_be_bytes());
    out.extend_from_slice(&((offset as u16) ^ 0x8000).to_be_bytes());
}

fn put_payload(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => {}
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::Int(_) | Value::Double(_) => put_number(out, value),
        Value::String(s) => put_string(out, s.as_bytes()),
        Value::Array(items) => {
            for item in items {
                encode(item, out);
            }
            out.push(0);
        }
        Value::Object(fields) => {
            for (name, value) in fields {
                out.push(value.type_rank());
                put_string(out, name.as_bytes());
                put_payload(out, value);
            }
            out.push(0);
        }
    }
}

/// Appends the key of `value`.
pub fn encode(value: &Value, out: &mut Vec<u8>) {
    out.push(value.type_rank());
    put_payload(out, value);
}

/// Appends the key of one component of a compound key, descending if asked.
pub fn encode_component(value: &Value, descending: bool, out: &mut Vec<u8>) {
    let from = out.len();
    encode(value, out);
    if descending {
        for b in &mut out[from..] {
            *b = !*b;
        }
    }
}

/// The key of `value`.
pub fn key(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode(value, &mut out);
    out
}

/// Reads one value's key from the front of `bytes`; returns it and the bytes it took.
/// Integers and doubles share keys, so a whole double comes back as an integer.
fn decode_one(bytes: &[u8]) -> Option<(Value, usize)> {
    let (&rank, rest) = bytes.split_first()?;
    let (value, used) = decode_payload(rank, rest)?;
    Some((value, used + 1))
}

fn decode_string(bytes: &[u8]) -> Option<(String, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match (bytes.get(i)?, bytes.get(i + 1)) {
            (0, Some(0)) => return Some((String::from_utf8(out).ok()?, i + 2)),
            (0, Some(0xff)) => {
                out.push(0);
                i += 2;
            }
            (0, _) => return None,
            (&b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
}

fn decode_payload(rank: u8, bytes: &[u8]) -> Option<(Value, usize)> {
    Some(match rank {
        2 => (Value::Null, 0),
        3 => {
            let bits = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
            let offset = (u16::from_be_bytes(bytes.get(8..10)?.try_into().ok()?) ^ 0x8000) as i16;
            let bits = if bits >> 63 == 1 {
                bits & !(1 << 63)
            } else {
                !bits
            };
            let d = f64::from_bits(bits);
            let whole = d.fract() == 0.0 && (-9.223_372_036_854_776e18..9.3e18).contains(&d);
            let int = whole
                .then(|| i64::try_from(d as i128 + i128::from(offset)).ok())
                .flatten();
            let value = match int {
                Some(n) => Value::Int(n),
                None => Value::Double(d),
            };
            (value, 10)
        }
        4 => {
            let (s, used) = decode_string(bytes)?;
            (Value::String(s), used)
        }
        5 => {
            let mut fields = Vec::new();
            let mut at = 0;
            loop {
                let rank = *bytes.get(at)?;
                at += 1;
                if rank == 0 {
                    break;
                }
                let (name, used) = decode_string(bytes.get(at..)?)?;
                at += used;
                let (value, used) = decode_payload(rank, bytes.get(at..)?)?;
                at += used;
                fields.push((name, value));
            }
            (Value::Object(fields), at)
        }
        6 => {
            let mut items = Vec::new();
            let mut at = 0;
            loop {
                if *bytes.get(at)? == 0 {
                    at += 1;
                    break;
                }
                let (value, used) = decode_one(bytes.get(at..)?)?;
                at += used;
                items.push(value);
            }
            (Value::Array(items), at)
        }
        8 => (Value::Bool(*bytes.first()? != 0), 1),
        _ => return None,
    })
}

/// The value whose key is exactly `bytes`, if it is one (for messages and `explain`).
/// Bytes that decode but are not the key a value encodes to (such as a range's end just
/// past a key) are not one.
pub fn decode(bytes: &[u8]) -> Option<Value> {
    match decode_one(bytes)? {
        (value, used) if used == bytes.len() && key(&value) == bytes => Some(value),
        _ => None,
    }
}

/// Describes an index bound for `explain`: the value it starts at, or where in the type
/// order it lies; a descending component is shown as its value too.
pub fn describe_bound(bytes: &[u8]) -> String {
    let inverted: Vec<u8> = bytes.iter().map(|b| !b).collect();
    for (bytes, suffix) in [(bytes, ""), (inverted.as_slice(), " (descending)")] {
        if let Some(value) = decode(bytes) {
            return format!("{value}{suffix}");
        }
        // The end of a range that includes a value: the first key past all its keys.
        if let Some((&last, head)) = bytes.split_last() {
            let mut before = head.to_vec();
            before.push(last.wrapping_sub(1));
            if last > 0 {
                if let Some(value) = decode(&before) {
                    return format!("after {value}{suffix}");
                }
            }
        }
        if let [rank] = bytes {
            if let Some(name) = rank_name(*rank) {
                return format!("first {name}{suffix}");
            }
        }
    }
    format!(
        "0x{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn rank_name(rank: u8) -> Option<&'static str> {
    Some(match rank {
        2 => "null",
        3 => "number",
        4 => "string",
        5 => "object",
        6 => "array",
        7 => "binary",
        8 => "bool",
        9 => "date",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::value::compare;
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            prop_oneof![any::<i64>(), -3i64..3, (1i64 << 53) - 3..(1i64 << 53) + 3]
                .prop_map(Value::Int),
            prop_oneof![
                any::<f64>(),
                Just(0.0),
                Just(-0.0),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                -3.0f64..3.0,
                Just(9007199254740992.0)
            ]
            .prop_map(Value::Double),
            prop_oneof!["[ab\\x00]{0,3}", ".{0,4}"].prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::vec(("[ab\\x00]{0,2}", inner), 0..3).prop_map(Value::Object),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn key_order_is_mongodb_order(a in value(), b in value()) {
            prop_assert_eq!(key(&a).cmp(&key(&b)), compare(&a, &b), "{} vs {}", a, b);
        }

        /// Decoding gives back a value equal to the original (1.0 may come back as 1).
        #[test]
        fn keys_decode_to_equal_values(a in value()) {
            let back = decode(&key(&a));
            prop_assert!(back.is_some(), "{} does not decode", a);
            prop_assert_eq!(compare(&back.unwrap(), &a), std::cmp::Ordering::Equal);
        }

        #[test]
        fn compound_keys_order_component_by_component(
            a in (value(), value()), b in (value(), value()), descending in any::<bool>()
        ) {
            let compound = |(x, y): &(Value, Value)| {
                let mut out = Vec::new();
                encode_component(x, false, &mut out);
                encode_component(y, descending, &mut out);
                out
            };
            let second = compare(&a.1, &b.1);
            let expected = compare(&a.0, &b.0)
                .then(if descending { second.reverse() } else { second });
            prop_assert_eq!(compound(&a).cmp(&compound(&b)), expected);
        }
    }

    #[test]
    fn equal_numbers_have_equal_keys() {
        assert_eq!(key(&Value::Int(1)), key(&Value::Double(1.0)));
        assert_eq!(key(&Value::Double(-0.0)), key(&Value::Double(0.0)));
        assert!(key(&Value::Int((1 << 53) + 1)) > key(&Value::Double(9007199254740992.0)));
        assert!(key(&Value::Double(f64::NAN)) < key(&Value::Double(f64::NEG_INFINITY)));
        assert!(key(&Value::Int(i64::MIN)) < key(&Value::Int(i64::MIN + 1)));
        assert!(key(&Value::Int(i64::MAX - 1)) < key(&Value::Int(i64::MAX)));
    }
}
