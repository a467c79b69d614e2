//! Document writes as they travel in the shard's log, and what applying one returns.
//!
//! A [`DocCommand`] is carried by one [`crate::command::Command::Document`]: its body is the
//! command written as a document ([`DocCommand::to_value`]) in the [`super::binary`]
//! encoding. Everything a command needs to apply deterministically is in it: the
//! coordinator has already given every new document its `_id`, so replaying the log gives
//! every replica (and every restart) the same documents.
//!
//! A command applies wholly or not at all on its shard: checks (duplicate `_id`, unique
//! indexes, sizes, a bad filter) come before the first change.

use super::binary;
use super::query::{bad, QueryError};
use super::value::Value;

/// A document write on one shard.
#[derive(Debug, Clone)]
pub enum DocCommand {
    /// New documents, each with its `_id` (first field).
    Insert {
        coll: String,
        docs: Vec<Value>,
    },
    /// Updates the first (or, with `multi`, every) document the filter matches. When none
    /// matches and `upsert` is given, inserts a document with that `_id` built from the
    /// filter's equality fields and the update.
    Update {
        coll: String,
        filter: Value,
        update: Value,
        multi: bool,
        upsert: Option<Value>,
    },
    /// Deletes the first (or, with `multi`, every) document the filter matches.
    Delete {
        coll: String,
        filter: Value,
        multi: bool,
    },
    /// Defines an index (`key`: `{"field": 1 | -1, ...}`). On an empty collection it is
    /// ready at once; otherwise it is built by [`DocCommand::BuildIndex`] steps.
    CreateIndex {
        coll: String,
        name: String,
        key: Value,
        unique: bool,
    },
    /// Indexes the next `batch` documents of a building index (in `_id` order).
    BuildIndex {
        coll: String,
        name: String,
        batch: u32,
    },
    DropIndex {
        coll: String,
        name: String,
    },
    /// Removes the collection, its documents and its indexes.
    Drop {
        coll: String,
    },
    /// An insert or update whose coordinator checked the other shards for the keys of the
    /// unique indexes named in `unique`: refused (to be retried) when the collection has
    /// another unique index, which that check did not cover.
    Checked {
        coll: String,
        unique: Vec<String>,
        command: Box<DocCommand>,
    },
}

/// The kind of a refused document command. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocErrorKind {
    BadRequest,
    DuplicateKey,
    TooLarge,
    NotFound,
    /// The coordinator's view of the unique indexes was out of date: check again, retry.
    Retry,
}

/// A refused document command, with a message that names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DocError {
    pub kind: DocErrorKind,
    pub message: String,
}

impl DocError {
    pub fn bad(message: impl Into<String>) -> DocError {
        DocError {
            kind: DocErrorKind::BadRequest,
            message: message.into(),
        }
    }
    pub fn duplicate(message: impl Into<String>) -> DocError {
        DocError {
            kind: DocErrorKind::DuplicateKey,
            message: message.into(),
        }
    }
    pub fn too_large(message: impl Into<String>) -> DocError {
        DocError {
            kind: DocErrorKind::TooLarge,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> DocError {
        DocError {
            kind: DocErrorKind::NotFound,
            message: message.into(),
        }
    }
}

impl From<QueryError> for DocError {
    fn from(e: QueryError) -> DocError {
        DocError::bad(e.0)
    }
}

/// Longest collection and index name, in bytes.
pub const NAME_SIZE_MAX: usize = 120;

/// Checks a collection or index name: 1 to [`NAME_SIZE_MAX`] bytes, no control characters
/// (a name is printed on one line), no leading `$`.
pub fn check_name(what: &str, name: &str) -> Result<(), DocError> {
    if name.is_empty() || name.len() > NAME_SIZE_MAX {
        return Err(DocError::bad(format!(
            "{what} name must be 1 to {NAME_SIZE_MAX} bytes, not {}",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) || name.starts_with('$') {
        return Err(DocError::bad(format!(
            "{what} name {name:?} must not contain control characters or start with '$'"
        )));
    }
    Ok(())
}

fn string(s: &str) -> Value {
    Value::String(s.to_string())
}

fn field<'a>(doc: &'a Value, name: &str) -> Result<&'a Value, QueryError> {
    doc.get(name)
        .ok_or_else(|| bad(format!("document command without {name:?}")))
}

fn text(doc: &Value, name: &str) -> Result<String, QueryError> {
    match field(doc, name)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(bad(format!("{name} must be a string, not {other}"))),
    }
}

fn flag(doc: &Value, name: &str) -> Result<bool, QueryError> {
    match field(doc, name)? {
        Value::Bool(b) => Ok(*b),
        other => Err(bad(format!("{name} must be a boolean, not {other}"))),
    }
}

impl DocCommand {
    /// The collection the command writes to.
    pub fn coll(&self) -> &str {
        match self {
            DocCommand::Insert { coll, .. }
            | DocCommand::Update { coll, .. }
            | DocCommand::Delete { coll, .. }
            | DocCommand::CreateIndex { coll, .. }
            | DocCommand::BuildIndex { coll, .. }
            | DocCommand::DropIndex { coll, .. }
            | DocCommand::Drop { coll }
            | DocCommand::Checked { coll, .. } => coll,
        }
    }

    /// The command as a document (the form it is logged in).
    pub fn to_value(&self) -> Value {
        let mut f: Vec<(String, Value)> = Vec::new();
        let mut put = |name: &str, value: Value| f.push((name.to_string(), value));
        match self {
            DocCommand::Insert { coll, docs } => {
                put("op", string("insert"));
                put("coll", string(coll));
                put("docs", Value::Array(docs.clone()));
            }
            DocCommand::Update {
                coll,
                filter,
                update,
                multi,
                upsert,
            } => {
                put("op", string("update"));
                put("coll", string(coll));
                put("filter", filter.clone());
                put("update", update.clone());
                put("multi", Value::Bool(*multi));
                if let Some(id) = upsert {
                    put("upsert", id.clone());
                }
            }
            DocCommand::Delete {
                coll,
                filter,
                multi,
            } => {
                put("op", string("delete"));
                put("coll", string(coll));
                put("filter", filter.clone());
                put("multi", Value::Bool(*multi));
            }
            DocCommand::CreateIndex {
                coll,
                name,
                key,
                unique,
            } => {
                put("op", string("createIndex"));
                put("coll", string(coll));
                put("name", string(name));
                put("key", key.clone());
                put("unique", Value::Bool(*unique));
            }
            DocCommand::BuildIndex { coll, name, batch } => {
                put("op", string("buildIndex"));
                put("coll", string(coll));
                put("name", string(name));
                put("batch", Value::Int(i64::from(*batch)));
            }
            DocCommand::DropIndex { coll, name } => {
                put("op", string("dropIndex"));
                put("coll", string(coll));
                put("name", string(name));
            }
            DocCommand::Drop { coll } => {
                put("op", string("drop"));
                put("coll", string(coll));
            }
            DocCommand::Checked {
                coll,
                unique,
                command,
            } => {
                put("op", string("checked"));
                put("coll", string(coll));
                put(
                    "unique",
                    Value::Array(unique.iter().map(|n| string(n)).collect()),
                );
                put("command", command.to_value());
            }
        }
        Value::Object(f)
    }

    /// Reads a command back from its document form.
    pub fn from_value(doc: &Value) -> Result<DocCommand, QueryError> {
        let coll = text(doc, "coll")?;
        Ok(match text(doc, "op")?.as_str() {
            "insert" => match field(doc, "docs")? {
                Value::Array(docs) => DocCommand::Insert {
                    coll,
                    docs: docs.clone(),
                },
                other => return Err(bad(format!("docs must be an array, not {other}"))),
            },
            "update" => DocCommand::Update {
                coll,
                filter: field(doc, "filter")?.clone(),
                update: field(doc, "update")?.clone(),
                multi: flag(doc, "multi")?,
                upsert: doc.get("upsert").cloned(),
            },
            "delete" => DocCommand::Delete {
                coll,
                filter: field(doc, "filter")?.clone(),
                multi: flag(doc, "multi")?,
            },
            "createIndex" => DocCommand::CreateIndex {
                coll,
                name: text(doc, "name")?,
                key: field(doc, "key")?.clone(),
                unique: flag(doc, "unique")?,
            },
            "buildIndex" => DocCommand::BuildIndex {
                coll,
                name: text(doc, "name")?,
                batch: match field(doc, "batch")? {
                    Value::Int(n) if (1..=u32::MAX as i64).contains(n) => *n as u32,
                    other => return Err(bad(format!("batch must be a count, not {other}"))),
                },
            },
            "dropIndex" => DocCommand::DropIndex {
                coll,
                name: text(doc, "name")?,
            },
            "drop" => DocCommand::Drop { coll },
            "checked" => {
                let Value::Array(names) = field(doc, "unique")? else {
                    return Err(bad("unique must be an array of index names"));
                };
                let unique = names
                    .iter()
                    .map(|n| match n {
                        Value::String(s) => Ok(s.clone()),
                        other => Err(bad(format!("an index name, not {other}"))),
                    })
                    .collect::<Result<_, _>>()?;
                let command = DocCommand::from_value(field(doc, "command")?)?;
                if !matches!(
                    command,
                    DocCommand::Insert { .. } | DocCommand::Update { .. }
                ) || command.coll() != coll
                {
                    return Err(bad(
                        "a checked command is an insert or update of its collection",
                    ));
                }
                DocCommand::Checked {
                    coll,
                    unique,
                    command: Box::new(command),
                }
            }
            other => return Err(bad(format!("unknown document command {other:?}"))),
        })
    }

    /// The logged bytes of the command.
    pub fn encode(&self) -> Vec<u8> {
        binary::to_bytes(&self.to_value())
    }

    /// Decodes logged bytes.
    pub fn decode(bytes: &[u8]) -> Result<DocCommand, QueryError> {
        let value = binary::from_bytes(bytes).map_err(|e| bad(e.to_string()))?;
        DocCommand::from_value(&value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        Value::from_json(text).unwrap()
    }

    #[test]
    fn every_command_round_trips_through_its_logged_bytes() {
        let commands = vec![
            DocCommand::Insert {
                coll: "people".into(),
                docs: vec![json(r#"{"_id": 1, "a": [1, {"b": null}]}"#)],
            },
            DocCommand::Update {
                coll: "people".into(),
                filter: json(r#"{"a": {"$gt": 1}}"#),
                update: json(r#"{"$set": {"b": 2}}"#),
                multi: true,
                upsert: Some(json(r#""abc""#)),
            },
            DocCommand::Update {
                coll: "p".into(),
                filter: json("{}"),
                update: json(r#"{"x": 1}"#),
                multi: false,
                upsert: None,
            },
            DocCommand::Delete {
                coll: "p".into(),
                filter: json("{}"),
                multi: false,
            },
            DocCommand::CreateIndex {
                coll: "p".into(),
                name: "a_1".into(),
                key: json(r#"{"a": 1}"#),
                unique: true,
            },
            DocCommand::BuildIndex {
                coll: "p".into(),
                name: "a_1".into(),
                batch: 500,
            },
            DocCommand::DropIndex {
                coll: "p".into(),
                name: "a_1".into(),
            },
            DocCommand::Drop { coll: "p".into() },
            DocCommand::Checked {
                coll: "p".into(),
                unique: vec!["a_1".into()],
                command: Box::new(DocCommand::Insert {
                    coll: "p".into(),
                    docs: vec![json(r#"{"_id": 2}"#)],
                }),
            },
        ];
        for command in commands {
            let back = DocCommand::decode(&command.encode()).unwrap();
            assert_eq!(back.to_value(), command.to_value());
        }
        assert!(DocCommand::decode(b"\x07\x00").is_err());
        assert!(DocCommand::decode(&[0xff, 1, 2]).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("collection", "people").is_ok());
        for bad in ["", "$x", "a\0b", "a\nb"] {
            assert_eq!(
                check_name("collection", bad).unwrap_err().kind,
                DocErrorKind::BadRequest
            );
        }
        assert!(check_name("collection", &"x".repeat(NAME_SIZE_MAX + 1)).is_err());
    }
}
