//! What one command did ([`CommandResult`]), and its byte encoding: how a forwarded write's
//! answer crosses the peer link, and how a session keeps the results of its writes (ADR
//! 0018). Integers are little-endian; `bytes` is a u32 length and the bytes.
//!
//! ```text
//! result := 1 version:u64                 WRITTEN
//!         | 2 existed:u8                  DELETED
//!         | 3 current:u64                 VERSION_MISMATCH
//!         | 4 reason:bytes                REFUSED
//!         | 5 value:i64                   INTEGER
//!         | 6 0 | 6 1 previous:bytes      REPLACED
//!         | 7                             SKIPPED
//!         | 8 count:u32 version:u64{count} WRITTEN_MANY
//!         | 9 reply:bytes                 DOCUMENT
//!         | 10 kind:u8 message:bytes      DOCUMENT_REFUSED
//!         | 11 reason:bytes               OUTCOME_UNKNOWN
//!         | 12 0 | 12 1 version:u64 value:bytes   VALUE (a transaction's read)
//!         | 13 count:u32 result{count}    MANY (a transaction's results, one level deep)
//!         | 14 commit:u8                  DECIDED (a transaction's decision)
//! ```

use crate::doc::command::DocErrorKind;

/// What one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    Written {
        version: u64,
    },
    Deleted {
        existed: bool,
    },
    /// A CAS whose expected version did not match; nothing was written.
    VersionMismatch {
        current: u64,
    },
    /// The command was refused by the state (an increment of a non-integer, say); nothing
    /// changed.
    Refused {
        reason: String,
    },
    /// INCREMENT and APPEND: the new integer value, or the new length.
    Integer {
        value: i64,
    },
    /// GET_AND_PUT: the value that was replaced.
    Replaced {
        previous: Option<Vec<u8>>,
    },
    /// PUT_IF_EXISTS of a missing key: nothing was written.
    Skipped,
    WrittenMany {
        versions: Vec<u64>,
    },
    /// A document command's reply: a document in the `doc::binary` encoding.
    Document {
        reply: Vec<u8>,
    },
    /// A document command that was refused; nothing changed.
    DocumentRefused {
        kind: DocErrorKind,
        message: String,
    },
    /// A retried write (a `Once`) older than what its session's record keeps: it may or may
    /// not have been applied.
    OutcomeUnknown {
        reason: String,
    },
    /// A read inside a transaction: the key's version and value, if it exists.
    Value {
        found: Option<(u64, Vec<u8>)>,
    },
    /// A transaction's part on one shard: one result per command, in order (a transaction
    /// refused as a whole answers `Refused` instead).
    /// `version`: the one version all of the part's writes took (ADR 0023).
    Many {
        version: u64,
        results: Vec<CommandResult>,
    },
    /// A transaction's decision, as the primary shard recorded it; `version` is the commit
    /// version (a prepare's answer: the prepare's own version; an abort: 0).
    Decided {
        commit: bool,
        version: u64,
    },
}

/// Bytes that are not a result: what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed command result: {0}")]
pub struct ResultDecodeError(pub String);

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl CommandResult {
    /// Appends this result's encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            CommandResult::Written { version } => {
                out.push(1);
                out.extend_from_slice(&version.to_le_bytes());
            }
            CommandResult::Deleted { existed } => {
                out.push(2);
                out.push(u8::from(*existed));
            }
            CommandResult::VersionMismatch { current } => {
                out.push(3);
                out.extend_from_slice(&current.to_le_bytes());
            }
            CommandResult::Refused { reason } => {
                out.push(4);
                put_bytes(out, reason.as_bytes());
            }
            CommandResult::Integer { value } => {
                out.push(5);
                out.extend_from_slice(&value.to_le_bytes());
            }
            CommandResult::Replaced { previous } => {
                out.push(6);
                match previous {
                    None => out.push(0),
                    Some(previous) => {
                        out.push(1);
                        put_bytes(out, previous);
                    }
                }
            }
            CommandResult::Skipped => out.push(7),
            CommandResult::WrittenMany { versions } => {
                out.push(8);
                out.extend_from_slice(&(versions.len() as u32).to_le_bytes());
                for version in versions {
                    out.extend_from_slice(&version.to_le_bytes());
                }
            }
            CommandResult::Document { reply } => {
                out.push(9);
                put_bytes(out, reply);
            }
            CommandResult::DocumentRefused { kind, message } => {
                out.push(10);
                out.push(match kind {
                    DocErrorKind::BadRequest => 0,
                    DocErrorKind::DuplicateKey => 1,
                    DocErrorKind::TooLarge => 2,
                    DocErrorKind::NotFound => 3,
                    DocErrorKind::Retry => 4,
                });
                put_bytes(out, message.as_bytes());
            }
            CommandResult::OutcomeUnknown { reason } => {
                out.push(11);
                put_bytes(out, reason.as_bytes());
            }
            CommandResult::Value { found } => {
                out.push(12);
                match found {
                    None => out.push(0),
                    Some((version, value)) => {
                        out.push(1);
                        out.extend_from_slice(&version.to_le_bytes());
                        put_bytes(out, value);
                    }
                }
            }
            CommandResult::Many { version, results } => {
                out.push(13);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&(results.len() as u32).to_le_bytes());
                for result in results {
                    assert!(
                        !matches!(result, CommandResult::Many { .. }),
                        "results nest one level only"
                    );
                    result.encode_into(out);
                }
            }
            CommandResult::Decided { commit, version } => {
                out.push(14);
                out.push(u8::from(*commit));
                out.extend_from_slice(&version.to_le_bytes());
            }
        }
    }

    /// Decodes a result at the start of `bytes`; returns it and the bytes it took.
    pub fn decode_from(bytes: &[u8]) -> Result<(CommandResult, usize), ResultDecodeError> {
        let mut r = Reader { bytes, at: 0 };
        let result = match r.u8()? {
            1 => CommandResult::Written { version: r.u64()? },
            2 => CommandResult::Deleted { existed: r.flag()? },
            3 => CommandResult::VersionMismatch { current: r.u64()? },
            4 => CommandResult::Refused { reason: r.text()? },
            5 => CommandResult::Integer {
                value: r.u64()? as i64,
            },
            6 => CommandResult::Replaced {
                previous: if r.flag()? {
                    Some(r.bytes()?.to_vec())
                } else {
                    None
                },
            },
            7 => CommandResult::Skipped,
            8 => {
                let count = r.u32()? as usize;
                if count.saturating_mul(8) > bytes.len() - r.at {
                    return Err(ResultDecodeError(format!(
                        "{count} versions that the bytes cannot hold"
                    )));
                }
                let versions = (0..count).map(|_| r.u64()).collect::<Result<_, _>>()?;
                CommandResult::WrittenMany { versions }
            }
            9 => CommandResult::Document {
                reply: r.bytes()?.to_vec(),
            },
            10 => CommandResult::DocumentRefused {
                kind: match r.u8()? {
                    0 => DocErrorKind::BadRequest,
                    1 => DocErrorKind::DuplicateKey,
                    2 => DocErrorKind::TooLarge,
                    3 => DocErrorKind::NotFound,
                    4 => DocErrorKind::Retry,
                    kind => return Err(ResultDecodeError(format!("document error kind {kind}"))),
                },
                message: r.text()?,
            },
            11 => CommandResult::OutcomeUnknown { reason: r.text()? },
            12 => CommandResult::Value {
                found: if r.flag()? {
                    Some((r.u64()?, r.bytes()?.to_vec()))
                } else {
                    None
                },
            },
            13 => {
                let version = r.u64()?;
                let count = r.u32()? as usize;
                if count > bytes.len() - r.at {
                    return Err(ResultDecodeError(format!(
                        "{count} results that the bytes cannot hold"
                    )));
                }
                let mut results = Vec::with_capacity(count);
                for _ in 0..count {
                    if r.bytes.get(r.at) == Some(&13) {
                        return Err(ResultDecodeError("results nest one level only".into()));
                    }
                    let (result, took) = CommandResult::decode_from(&bytes[r.at..])?;
                    r.at += took;
                    results.push(result);
                }
                CommandResult::Many { version, results }
            }
            14 => CommandResult::Decided {
                commit: r.flag()?,
                version: r.u64()?,
            },
            tag => return Err(ResultDecodeError(format!("unknown result tag {tag}"))),
        };
        Ok((result, r.at))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ResultDecodeError> {
        let slice = self
            .at
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or_else(|| ResultDecodeError(format!("ends early at byte {}", self.at)))?;
        self.at += n;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, ResultDecodeError> {
        Ok(self.take(1)?[0])
    }
    fn flag(&mut self) -> Result<bool, ResultDecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(ResultDecodeError(format!("flag {other}"))),
        }
    }
    fn u32(&mut self) -> Result<u32, ResultDecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, ResultDecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], ResultDecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn text(&mut self) -> Result<String, ResultDecodeError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| ResultDecodeError("text is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<CommandResult> {
        vec![
            CommandResult::Written { version: 1 },
            CommandResult::Deleted { existed: true },
            CommandResult::VersionMismatch { current: 2 },
            CommandResult::Refused {
                reason: "no".into(),
            },
            CommandResult::Integer { value: -5 },
            CommandResult::Replaced { previous: None },
            CommandResult::Replaced {
                previous: Some(b"old".to_vec()),
            },
            CommandResult::Skipped,
            CommandResult::WrittenMany {
                versions: vec![3, 4],
            },
            CommandResult::Value { found: None },
            CommandResult::Value {
                found: Some((7, b"v".to_vec())),
            },
            CommandResult::Many {
                version: 11,
                results: vec![
                    CommandResult::Integer { value: 1 },
                    CommandResult::Value { found: None },
                ],
            },
            CommandResult::Decided {
                commit: true,
                version: 12,
            },
            CommandResult::Document {
                reply: b"{}".to_vec(),
            },
            CommandResult::DocumentRefused {
                kind: DocErrorKind::DuplicateKey,
                message: "dup".into(),
            },
            CommandResult::OutcomeUnknown {
                reason: "old".into(),
            },
        ]
    }

    #[test]
    fn every_result_round_trips_and_a_cut_one_is_refused() {
        for result in every_kind() {
            let mut bytes = Vec::new();
            result.encode_into(&mut bytes);
            assert_eq!(
                CommandResult::decode_from(&bytes).unwrap(),
                (result.clone(), bytes.len())
            );
            for cut in 0..bytes.len() {
                assert!(
                    CommandResult::decode_from(&bytes[..cut]).is_err(),
                    "{result:?}"
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = CommandResult::decode_from(&bytes);
        }
    }
}
