//! The background index builds of one core's shard, spawned by `node.rs` on every core
//! (`createIndex` only waits for them). Each step is an ordinary write through the shard's
//! log, a batch of documents at a time, so writes go on while an index builds.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use kvs_core::doc::command::DocCommand;
use kvs_core::log::LogFile;
use kvs_core::store::PagedStore;

use crate::ask::ask;
use crate::documents::common::{doc_reply, write};
use crate::route::CoreContext;

/// Documents one index build step indexes.
const BUILD_BATCH: u32 = 512;

/// Builds this core's shard's building indexes, a batch of documents per log entry, while
/// writes go on: each step is an ordinary write through the shard's log.
pub async fn build_indexes<F: LogFile>(
    ctx: Rc<CoreContext>,
    store: Rc<RefCell<Rc<PagedStore<F>>>>,
) {
    let shard = ctx.core as u32;
    while !ctx.stopping.get() {
        let current = Rc::clone(&store.borrow());
        let building: Vec<(String, String)> = match current.doc_collections().await {
            Ok(collections) => collections
                .iter()
                .flat_map(|c| {
                    c.indexes
                        .iter()
                        .filter(|i| !i.ready)
                        .map(|i| (c.name.clone(), i.name.clone()))
                        .collect::<Vec<_>>()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        drop(current);
        if building.is_empty() {
            crate::runtime::wait(Duration::from_millis(20)).await;
            continue;
        }
        for (coll, name) in building {
            let step = DocCommand::BuildIndex {
                coll,
                name,
                batch: BUILD_BATCH,
            };
            if let Err(fail) = doc_reply(ask(&ctx, shard, write(&step)).await) {
                tracing::debug!(shard, error = %fail.message, "index build step not applied");
                crate::runtime::wait(Duration::from_millis(200)).await;
            }
        }
    }
}
