//! What every document command's coordinator shares: its failure ([`Fail`]), its checked
//! arguments ([`Args`]), the shard ops it sends and the replies it reads back. It sits below
//! the commands, so that none of them imports another or the dispatcher.

use kvs_core::command::Command;
use kvs_core::doc::binary;
use kvs_core::doc::command::{check_name, DocCommand, DocErrorKind};
use kvs_core::doc::value::Value;
use kvs_core::state::CommandResult;
use kvs_wire::ErrorCode;

use crate::doc_reads::{DocRead, FindMode};
use crate::shard::{ShardOp, ShardReply};

/// Why a document command failed.
#[derive(Debug)]
pub(super) struct Fail {
    pub(super) code: ErrorCode,
    pub(super) message: String,
}

pub(super) fn bad(message: impl Into<String>) -> Fail {
    Fail {
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

pub(super) type Out<T> = Result<T, Fail>;

/// The reply document of a shard, or its error.
pub(super) fn doc_reply(reply: ShardReply) -> Out<Value> {
    match reply {
        ShardReply::Doc(bytes) => binary::from_bytes(&bytes).map_err(|e| Fail {
            code: ErrorCode::Internal,
            message: e.0,
        }),
        ShardReply::Written(CommandResult::Document { reply }) => binary::from_bytes(&reply)
            .map_err(|e| Fail {
                code: ErrorCode::Internal,
                message: e.0,
            }),
        ShardReply::Written(CommandResult::DocumentRefused { kind, message }) => Err(Fail {
            code: match kind {
                DocErrorKind::BadRequest => ErrorCode::BadRequest,
                DocErrorKind::DuplicateKey => ErrorCode::DuplicateKey,
                DocErrorKind::TooLarge => ErrorCode::TooLarge,
                DocErrorKind::NotFound => ErrorCode::NotFound,
                // Handled by the writers (`asks_retry`); seen here only if one did not.
                DocErrorKind::Retry => ErrorCode::Internal,
            },
            message,
        }),
        ShardReply::Error(code, message) => Err(Fail { code, message }),
        other => Err(Fail {
            code: ErrorCode::Internal,
            message: format!("unexpected shard reply {other:?}"),
        }),
    }
}

pub(super) fn int_of(v: &Value, name: &str) -> i64 {
    match v.get(name) {
        Some(Value::Int(n)) => *n,
        _ => 0,
    }
}

pub(super) fn docs_of(mut v: Value) -> Vec<Value> {
    match &mut v {
        Value::Object(fields) => match fields.iter_mut().find(|(k, _)| k == "documents") {
            Some((_, Value::Array(docs))) => std::mem::take(docs),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The command's fields, checked against the ones it accepts.
pub(super) struct Args<'a> {
    name: &'a str,
    fields: &'a [(String, Value)],
}

impl<'a> Args<'a> {
    pub(super) fn new(command: &'a Value, allowed: &[&str]) -> Out<Args<'a>> {
        let Value::Object(fields) = command else {
            return Err(bad("a command is a document"));
        };
        let name = fields[0].0.as_str();
        for (k, _) in &fields[1..] {
            if !allowed.contains(&k.as_str()) {
                return Err(bad(format!("{name}: unknown field {k:?}")));
            }
        }
        Ok(Args { name, fields })
    }

    pub(super) fn get(&self, name: &str) -> Option<&'a Value> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    pub(super) fn doc(&self, name: &str) -> Out<Value> {
        match self.get(name) {
            None => Ok(Value::Object(Vec::new())),
            Some(v @ Value::Object(_)) => Ok(v.clone()),
            Some(other) => Err(bad(format!(
                "{}: {name} must be a document, not {other}",
                self.name
            ))),
        }
    }

    pub(super) fn flag(&self, name: &str) -> Out<bool> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(bad(format!(
                "{}: {name} must be true or false, not {other}",
                self.name
            ))),
        }
    }

    pub(super) fn count(&self, name: &str) -> Out<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Int(n)) if *n >= 0 => Ok(Some(*n as usize)),
            Some(Value::Double(d)) if *d >= 0.0 && d.fract() == 0.0 => Ok(Some(*d as usize)),
            Some(other) => Err(bad(format!(
                "{}: {name} must be a non-negative integer, not {other}",
                self.name
            ))),
        }
    }

    /// The collection the command names.
    pub(super) fn coll(&self) -> Out<String> {
        match &self.fields[0].1 {
            Value::String(name) => {
                check_name("collection", name).map_err(|e| bad(e.message))?;
                Ok(name.clone())
            }
            other => Err(bad(format!(
                "{} takes a collection name, not {other}",
                self.name
            ))),
        }
    }
}

pub(super) fn write(command: &DocCommand) -> ShardOp {
    ShardOp::Write(Command::Document {
        body: command.encode(),
    })
}

/// A read of `coll`'s index definitions for each of `shards`.
pub(super) fn index_reads(
    coll: &str,
    shards: impl IntoIterator<Item = u32>,
) -> Vec<(u32, ShardOp)> {
    shards
        .into_iter()
        .map(|shard| {
            let read = DocRead::Indexes {
                coll: coll.to_string(),
            };
            (shard, ShardOp::DocRead(read))
        })
        .collect()
}

/// The same find read for each of `shards`.
pub(super) fn find_reads(
    coll: &str,
    shards: &[u32],
    query: &[u8],
    mode: FindMode,
) -> Vec<(u32, ShardOp)> {
    shards
        .iter()
        .map(|&shard| {
            let read = DocRead::Find {
                coll: coll.to_string(),
                query: query.to_vec(),
                mode,
            };
            (shard, ShardOp::DocRead(read))
        })
        .collect()
}
