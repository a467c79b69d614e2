//! [`Key`]: a key as the tree holds it — short keys inline, longer ones on the heap.
//!
//! Why: a node's binary search compared keys that each lived in an allocation of their own,
//! and on SETs the comparisons were a sixth of kvsd's CPU, nearly all of it waiting for those
//! allocations to come in from memory (perf, docs/benchmarks.md). A key of up to
//! [`INLINE_KEY_MAX`] bytes now sits inside the entry (or the inner node's key array), so a
//! search reads one contiguous array. The type is as large as a `Vec<u8>`.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Keys up to this many bytes are stored inline.
pub const INLINE_KEY_MAX: usize = 22;

#[derive(Clone)]
pub enum Key {
    Inline(u8, [u8; INLINE_KEY_MAX]),
    Heap(Box<[u8]>),
}

impl Key {
    /// Bytes the key holds on the heap (a long key's allocation, rounded to the
    /// allocator's 16-byte classes); 0 for a key held inline.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Key::Inline(..) => 0,
            Key::Heap(bytes) => bytes.len().div_ceil(16) * 16,
        }
    }

    pub fn new(bytes: &[u8]) -> Key {
        if bytes.len() <= INLINE_KEY_MAX {
            let mut inline = [0; INLINE_KEY_MAX];
            inline[..bytes.len()].copy_from_slice(bytes);
            Key::Inline(bytes.len() as u8, inline)
        } else {
            Key::Heap(bytes.into())
        }
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline(len, bytes) => &bytes[..*len as usize],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl Deref for Key {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Key {
        Key::new(bytes)
    }
}

impl From<Vec<u8>> for Key {
    fn from(bytes: Vec<u8>) -> Key {
        if bytes.len() <= INLINE_KEY_MAX {
            Key::new(&bytes)
        } else {
            Key::Heap(bytes.into_boxed_slice())
        }
    }
}

impl From<Key> for Vec<u8> {
    fn from(key: Key) -> Vec<u8> {
        match key {
            Key::Inline(..) => key.as_slice().to_vec(),
            Key::Heap(bytes) => bytes.into_vec(),
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialEq<[u8]> for Key {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<u8>> for Key {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    #[inline]
    fn cmp(&self, other: &Key) -> Ordering {
        match (self, other) {
            // Inline bytes past the length are zero, so comparing the padded arrays and then
            // the lengths orders like the slices do (a prefix pads with zeros, sorts equal
            // that far, and is shorter). Three word compares instead of a call to memcmp:
            // this comparison runs a dozen times per tree operation.
            (Key::Inline(a_len, a), Key::Inline(b_len, b)) => {
                words(a).cmp(&words(b)).then(a_len.cmp(b_len))
            }
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

/// The inline bytes as big-endian words (the last one zero-padded), which order like the
/// bytes.
#[inline]
fn words(bytes: &[u8; INLINE_KEY_MAX]) -> [u64; 3] {
    let mut padded = [0u8; 24];
    padded[..INLINE_KEY_MAX].copy_from_slice(bytes);
    [
        u64::from_be_bytes(padded[0..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(padded[8..16].try_into().expect("8 bytes")),
        u64::from_be_bytes(padded[16..24].try_into().expect("8 bytes")),
    ]
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_slice(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_heap_keys_compare_as_their_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), std::mem::size_of::<Vec<u8>>());
        let short = Key::new(b"abc");
        let edge = Key::new(&[7; INLINE_KEY_MAX]);
        let long = Key::from(vec![7; INLINE_KEY_MAX + 1]);
        assert!(matches!(short, Key::Inline(..)));
        assert!(matches!(edge, Key::Inline(..)));
        assert!(matches!(long, Key::Heap(_)));
        assert_eq!(&*short, b"abc");
        assert!(edge < long, "a prefix sorts first, whatever the storage");
        assert!(Key::new(b"") < short);
        assert_eq!(Vec::from(long.clone()), vec![7; INLINE_KEY_MAX + 1]);
        assert_eq!(Key::from(b"abc".to_vec()), short);
    }

    #[test]
    fn key_order_is_byte_order() {
        let samples: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![0, 1],
            vec![1],
            b"ab".to_vec(),
            b"ab\0".to_vec(),
            b"ab\0\x01".to_vec(),
            b"key:000000012345".to_vec(),
            b"key:000000012346".to_vec(),
            vec![0xff; INLINE_KEY_MAX],
            vec![0xff; INLINE_KEY_MAX + 1],
            vec![0; INLINE_KEY_MAX],
            vec![0; INLINE_KEY_MAX + 1],
        ];
        for a in &samples {
            for b in &samples {
                assert_eq!(
                    Key::from(a.clone()).cmp(&Key::from(b.clone())),
                    a.cmp(b),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }
}
