//! The background checkpoint task of a shard's core: when the driver's policy says one is
//! due, it seals the store and writes the checkpoint's pages at the policy's rate (at full
//! speed when writers wait for cache room), and records the figures.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvs_core::store::page::PAGE_SIZE;

use crate::driver::{CheckpointPolicy, REOPEN_INTERVAL};
use crate::log_io::DmaLogFile;
use crate::metrics;
use crate::route::CoreContext;
use crate::runtime::wait;

type Store = kvs_core::store::PagedStore<DmaLogFile>;

/// How often the task looks whether a checkpoint is due.
const CHECKPOINT_POLL: Duration = Duration::from_millis(50);

/// Checkpoints the shard's store in the background: when dirty pages fill half the cache,
/// when the log grew by the policy's size, or after the policy's interval with changes.
/// Pages are written at the policy's rate unless writers are waiting for cache room.
pub async fn checkpoint_loop(
    ctx: Rc<CoreContext>,
    current_store: Rc<RefCell<Rc<Store>>>,
    failed: Rc<Cell<bool>>,
    policy: CheckpointPolicy,
) {
    let mut last = Instant::now();
    while !ctx.stopping.get() {
        wait(CHECKPOINT_POLL).await;
        if failed.get() {
            continue;
        }
        let store = Rc::clone(&current_store.borrow());
        store.expire_backups(kvs_core::sessions::wall_clock_ms());
        if !policy.due(&store, last.elapsed()) {
            continue;
        }
        let Some(plan) = store.seal() else {
            continue;
        };
        let pages = plan.pages();
        let started = Instant::now();
        let paced = Rc::clone(&store);
        let pace = move |written: usize| {
            let target =
                Duration::from_secs_f64(written as f64 * PAGE_SIZE as f64 / policy.rate as f64);
            let behind = target.saturating_sub(started.elapsed());
            let hurry = paced.dirty_pressure();
            async move {
                if !hurry && !behind.is_zero() {
                    wait(behind).await;
                }
            }
        };
        match store.write_checkpoint(plan, Some(pace)).await {
            Ok(done) => {
                last = Instant::now();
                metrics::with_current(|m| {
                    m.checkpoint_micros
                        .add(started.elapsed().as_micros() as u64);
                    m.checkpoint_bytes.add((pages * PAGE_SIZE) as u64);
                    m.page_writes.add(pages as u64);
                });
                tracing::debug!(
                    core = ctx.core,
                    index = done.applied_index,
                    pages,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "checkpoint written"
                );
            }
            Err(error) => {
                tracing::error!(core = ctx.core, %error, "checkpoint failed; retrying later");
                wait(REOPEN_INTERVAL).await;
            }
        }
    }
}
