//! The compact binary form documents are stored in: JSON's structure with a one-byte tag per
//! value, variable-length integers for lengths and counts, and no text to parse on a read.
//!
//! ```text
//! value  = tag payload
//! 0x00   null
//! 0x01   false            0x02  true
//! 0x03   int              zigzag varint (an i64)
//! 0x04   double           8 bytes, little-endian IEEE 754
//! 0x05   string           varint length, UTF-8 bytes
//! 0x06   array            varint count, values
//! 0x07   object           varint count, then per field: varint length, name bytes, value
//! ```
//!
//! Decoding checks everything (tags, lengths against the bytes left, UTF-8, depth), so a
//! damaged record is an error, never a panic or a wrong document.

use super::value::{Value, DEPTH_MAX};

/// Why bytes are not an encoded document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad encoded document: {0}")]
pub struct DecodeError(pub String);

fn err(message: impl Into<String>) -> DecodeError {
    DecodeError(message.into())
}

const NULL: u8 = 0x00;
const FALSE: u8 = 0x01;
const TRUE: u8 = 0x02;
const INT: u8 = 0x03;
const DOUBLE: u8 = 0x04;
const STRING: u8 = 0x05;
const ARRAY: u8 = 0x06;
const OBJECT: u8 = 0x07;

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends the encoding of `value` to `out`.
pub fn encode(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Int(n) => {
            out.push(INT);
            put_varint(out, ((n << 1) ^ (n >> 63)) as u64);
        }
        Value::Double(d) => {
            out.push(DOUBLE);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::String(s) => {
            out.push(STRING);
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => {
            out.push(ARRAY);
            put_varint(out, items.len() as u64);
            for item in items {
                encode(item, out);
            }
        }
        Value::Object(fields) => {
            out.push(OBJECT);
            put_varint(out, fields.len() as u64);
            for (name, value) in fields {
                put_varint(out, name.len() as u64);
                out.extend_from_slice(name.as_bytes());
                encode(value, out);
            }
        }
    }
}

/// The encoding of `value`.
pub fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode(value, &mut out);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| err(format!("truncated at byte {}", self.at)))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(err(format!("varint too long at byte {}", self.at)))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        let left = (self.bytes.len() - self.at) as u64;
        if len > left {
            return Err(err(format!(
                "length {len} at byte {} runs past the end ({left} left)",
                self.at
            )));
        }
        let slice = &self.bytes[self.at..self.at + len as usize];
        self.at += len as usize;
        Ok(slice)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.varint()?;
        let at = self.at;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| err(format!("invalid UTF-8 at byte {at}")))
    }

    /// A count of items, each at least one byte: more than the bytes left is damage.
    fn count(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(err(format!(
                "count {n} at byte {} exceeds the bytes left",
                self.at
            )));
        }
        Ok(n as usize)
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let at = self.at;
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            INT => {
                let z = self.varint()?;
                Value::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            DOUBLE => {
                let bytes = self.take(8)?;
                Value::Double(f64::from_le_bytes(bytes.try_into().expect("8 bytes")))
            }
            STRING => Value::String(self.string()?),
            tag @ (ARRAY | OBJECT) => {
                if depth >= DEPTH_MAX {
                    return Err(err(format!("nesting deeper than {DEPTH_MAX} at byte {at}")));
                }
                let n = self.count()?;
                if tag == ARRAY {
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.value(depth + 1)?);
                    }
                    Value::Array(items)
                } else {
                    let mut fields: Vec<(String, Value)> = Vec::with_capacity(n);
                    for _ in 0..n {
                        let name = self.string()?;
                        let value = self.value(depth + 1)?;
                        fields.push((name, value));
                    }
                    Value::Object(fields)
                }
            }
            other => return Err(err(format!("unknown tag {other:#04x} at byte {at}"))),
        })
    }
}

/// Decodes one value that must fill `bytes` exactly.
pub fn from_bytes(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = Reader { bytes, at: 0 };
    let value = reader.value(0)?;
    if reader.at != bytes.len() {
        return Err(err(format!(
            "{} bytes left after the document",
            bytes.len() - reader.at
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Double),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{0,6}", inner), 0..6).prop_map(Value::Object),
            ]
        })
    }

    /// Bitwise equality (NaN included), which `PartialEq` does not give.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Double(x), Value::Double(y)) => x.to_bits() == y.to_bits(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((kp, vp), (kq, vq))| kp == kq && same(vp, vq))
            }
            (Value::Int(x), Value::Int(y)) => x == y,
            _ => a.type_name() == b.type_name() && a == b,
        }
    }

    proptest! {
        #[test]
        fn round_trips(v in value()) {
            let bytes = to_bytes(&v);
            let back = from_bytes(&bytes).unwrap();
            prop_assert!(same(&v, &back), "{v:?} came back as {back:?}");
        }

        #[test]
        fn damaged_bytes_are_errors_never_panics(v in value(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
            let mut bytes = to_bytes(&v);
            let at = cut.index(bytes.len());
            let _ = from_bytes(&bytes[..at]);
            bytes[at] ^= flip;
            let _ = from_bytes(&bytes);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = from_bytes(&bytes);
        }
    }

    #[test]
    fn the_encoding_is_compact_and_checked() {
        let doc = Value::from_json(r#"{"_id": "p1", "age": 31, "tags": ["a", "b"]}"#).unwrap();
        let bytes = to_bytes(&doc);
        assert_eq!(
            bytes.len(),
            29,
            "vs {} bytes of compact JSON",
            doc.to_string().len()
        );
        assert!(from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(
            from_bytes(&[bytes.as_slice(), &[0]].concat()).is_err(),
            "trailing bytes"
        );
        assert!(from_bytes(&[0x09])
            .unwrap_err()
            .to_string()
            .contains("unknown tag"));
        assert!(from_bytes(&[STRING, 2, 0xff, 0xfe])
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
        let deep: Vec<u8> = std::iter::repeat_n([ARRAY, 1], DEPTH_MAX + 1)
            .flatten()
            .chain([NULL])
            .collect();
        assert!(from_bytes(&deep)
            .unwrap_err()
            .to_string()
            .contains("nesting"));
    }
}
