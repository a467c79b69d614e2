//! Document collections and their secondary indexes, in the shard's one B+tree.
//!
//! ```text
//! space 2  documents      2 · collection id (u32 BE) · index key of _id   -> document (binary)
//! space 3  index entries  3 · index id (u32 BE) · index key · key of _id  -> key of _id
//! space 4  catalogue      4 · collection name                            -> definition
//!                         4                                              -> {"next": id}
//! ```
//!
//! Documents sit in `_id` order (the [`crate::doc::index_key`] encoding orders bytes as MongoDB orders
//! values), so the collection itself is the `_id` index. An index entry's value repeats the
//! `_id` key, so a scan of index entries finds its documents without parsing its keys.
//!
//! Every write is one [`DocCommand`] applied inside one log entry's apply: the document and
//! all its index entries change together or not at all (no checkpoint can fall inside a
//! command, and recovery replays whole commands). A command checks everything first
//! (duplicate `_id`, unique indexes, sizes, a bad filter or update) and only then changes
//! the tree; a refused command changes nothing.
//!
//! Reads ([`PagedStore::doc_find`]) plan per shard: an `_id` range, a ready secondary index
//! whose leading field the filter bounds (or whose order is the requested sort), or a scan
//! of the collection. The filter is always applied again to each document read, so an
//! index's bounds only need to be loose enough.
//!
//! The layers, lowest first: `keys` (the layout), `catalog` (definitions), `plan` (the
//! access a query takes), `read`, `write` (document commands) and `build` (an index's
//! life), with `verify` beside them. This file turns a logged command into a call to
//! `write` or `build`, so the store's apply has one entry into documents.

mod build;
mod catalog;
mod keys;
mod plan;
mod read;
mod verify;
mod write;

pub use catalog::{
    default_index_name, parse_index_key, Catalog, Collection, IndexDef, INDEX_FIELDS_MAX,
};
pub use keys::{doc_prefix, index_prefix};
pub use plan::{Access, FindStats};
pub use read::{order, After, FindQuery};
pub(super) use verify::check_documents;
pub use write::{check_document, upsert_document, DOCUMENT_SIZE_MAX, ID_KEY_SIZE_MAX};

use write::Outcome;

use crate::doc::binary;
use crate::doc::command::{check_name, DocCommand, DocError, DocErrorKind};
use crate::doc::query::Filter;
use crate::doc::update::Update;
use crate::log::LogFile;
use crate::state::CommandResult;
use crate::store::{PagedStore, StoreError};

impl<F: LogFile> PagedStore<F> {
    /// Applies one logged document command.
    pub(super) async fn apply_document(
        &self,
        index: u64,
        body: &[u8],
    ) -> Result<CommandResult, StoreError> {
        let outcome = match DocCommand::decode(body) {
            Err(e) => Err(DocError::bad(e.0)),
            Ok(command) => {
                self.load_catalog().await?;
                match check_name("collection", command.coll()) {
                    Err(e) => Err(e),
                    Ok(()) => self.apply_doc_command(index, command).await?,
                }
            }
        };
        Ok(match outcome {
            Ok(reply) => CommandResult::Document {
                reply: binary::to_bytes(&reply),
            },
            Err(e) => CommandResult::DocumentRefused {
                kind: e.kind,
                message: e.message,
            },
        })
    }

    async fn apply_doc_command(
        &self,
        index: u64,
        command: DocCommand,
    ) -> Result<Outcome, StoreError> {
        let command = match command {
            DocCommand::Checked {
                coll,
                unique,
                command,
            } => {
                if let Some(c) = self.doc_collection(&coll).await? {
                    if let Some(def) = c
                        .indexes
                        .iter()
                        .find(|d| d.unique && !unique.contains(&d.name))
                    {
                        return Ok(Err(DocError {
                            kind: DocErrorKind::Retry,
                            message: format!(
                                "unique index {} of {coll} was not checked on the other shards",
                                def.name
                            ),
                        }));
                    }
                }
                *command
            }
            other => other,
        };
        match command {
            DocCommand::Checked { .. } => Ok(Err(DocError::bad("a checked command in another"))),
            DocCommand::Insert { coll, docs } => self.doc_insert(index, &coll, docs).await,
            DocCommand::Update {
                coll,
                filter,
                update,
                multi,
                upsert,
            } => {
                let parsed = Filter::parse(&filter)
                    .map_err(DocError::from)
                    .and_then(|f| Ok((f, Update::parse(&update)?)));
                match parsed {
                    Err(e) => Ok(Err(e)),
                    Ok((filter, update)) => {
                        self.doc_update(index, &coll, &filter, &update, multi, upsert)
                            .await
                    }
                }
            }
            DocCommand::Delete {
                coll,
                filter,
                multi,
            } => match Filter::parse(&filter) {
                Err(e) => Ok(Err(e.into())),
                Ok(filter) => self.doc_delete(index, &coll, &filter, multi).await,
            },
            DocCommand::CreateIndex {
                coll,
                name,
                key,
                unique,
            } => {
                self.doc_create_index(index, &coll, &name, key, unique)
                    .await
            }
            DocCommand::BuildIndex { coll, name, batch } => {
                self.doc_build_index(index, &coll, &name, batch).await
            }
            DocCommand::DropIndex { coll, name } => self.doc_drop_index(index, &coll, &name).await,
            DocCommand::Drop { coll } => self.doc_drop(index, &coll).await,
        }
    }
}

#[cfg(test)]
mod read_at_tests;
#[cfg(test)]
mod tests;
