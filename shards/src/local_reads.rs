//! Point reads a connection answers from its own core's shard, without the shard's queue
//! (ADR 0029): the store side of `route::LocalReads`.

use std::cell::RefCell;
use std::rc::Rc;

use kvs_core::state::Versioned;
use kvs_core::store::PagedStore;

use crate::log_io::DmaLogFile;
use crate::route::{CoreContext, LocalReads};

type Store = PagedStore<DmaLogFile>;

/// This core's shard's store as the connections read it: whichever store the shard has open
/// now (the shard loop replaces it when it reopens one).
struct StoreReads(Rc<RefCell<Rc<Store>>>);

impl LocalReads for StoreReads {
    fn read_with(&self, key: &[u8], answer: &mut dyn FnMut(Option<&Versioned>)) -> bool {
        let store = self.0.borrow();
        if store.is_applying_command() {
            return false;
        }
        store.try_get_with(key, answer).is_some()
    }
}

/// Lets `ctx`'s connections read `current_store` directly from now on. Called by the shard
/// loop of a node outside a cluster once its shard has recovered: its applied state holds
/// only durable entries, and no read needs the leader's lease or ReadIndex. In a cluster
/// every read goes through the shard's queue.
pub fn serve(ctx: &CoreContext, current_store: &Rc<RefCell<Rc<Store>>>, replicated: bool) {
    assert!(!replicated, "a node outside a cluster has one voter");
    let reads: Rc<dyn LocalReads> = Rc::new(StoreReads(Rc::clone(current_store)));
    assert!(
        ctx.local_reads.set(reads).is_ok(),
        "one shard loop per core"
    );
}
