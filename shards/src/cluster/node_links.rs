//! A node's side of its cluster, as the node's cores run it: what each core gets at start
//! (its links' setup), what it holds while serving (links, forwarded requests), the watch
//! that says `ready` once every local shard knows its leader, and the loop that accepts
//! other nodes' links and hands each to the core it is for (ADR 0016).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::codec::PeerFrame;
use super::forwarding::Forwarding;
use super::peer_security::PeerSecurity;
use super::peer_stream::PeerStream;
use super::snapshot_send::SnapshotTransfers;
use super::transport::{answer_hello, Links, LocalNode};
use crate::route::CoreContext;
use crate::runtime::{spawn_local, wait, Receiver, Sender, TcpListener};

/// A core's part of the cluster: who this node is, the members, the peer listener, and the
/// links other cores accepted for this one.
pub struct CoreCluster {
    pub local: LocalNode,
    pub members: Vec<(u64, SocketAddr)>,
    /// What links must prove (ADR 0027).
    pub security: Arc<PeerSecurity>,
    pub peer_listener: TcpListener,
    pub handoff_senders: Vec<Option<Sender<PeerHandoff>>>,
    pub handoff_receivers: Vec<Receiver<PeerHandoff>>,
    pub leaders: Arc<LeaderWatch>,
    /// `--snapshot-rate`.
    pub snapshot_rate: u64,
}

/// A core's side of the cluster while it serves: its links, its forwarded requests, and the
/// node's watch of which shards know their leader.
pub struct CoreLinks {
    pub links: Rc<Links>,
    pub forwarding: Forwarding,
    pub leaders: Arc<LeaderWatch>,
    pub snapshots: Rc<SnapshotTransfers>,
}

/// A peer link accepted and greeted by one core, on its way to the core it is for.
pub struct PeerHandoff {
    pub stream: PeerStream,
    pub hello: PeerFrame,
    pub buffer: Vec<u8>,
    pub filled: usize,
}

/// Which local shards know their group's leader; says `ready` once all do.
pub struct LeaderWatch {
    pub known: Vec<std::sync::atomic::AtomicBool>,
    pub announced: AtomicBool,
}

impl LeaderWatch {
    pub fn set(&self, core: usize, knows: bool) {
        self.known[core].store(knows, Ordering::SeqCst);
        if knows
            && self.known.iter().all(|k| k.load(Ordering::SeqCst))
            && !self.announced.swap(true, Ordering::SeqCst)
        {
            tracing::info!(
                shards = self.known.len(),
                "ready: every local shard knows its leader"
            );
        }
    }
}

/// Accepts links from other nodes on this core's handle of the peer listener, greets them,
/// and hands each to the core it is for.
pub async fn peer_accept_loop(
    ctx: Rc<CoreContext>,
    links: Rc<Links>,
    listener: TcpListener,
    senders: Rc<Vec<Option<Sender<PeerHandoff>>>>,
) {
    loop {
        let stream = match ctx.accept_unless_stopping(&listener).await {
            None => break,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                tracing::warn!(%error, "peer accept failed");
                wait(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (links, senders) = (Rc::clone(&links), Rc::clone(&senders));
        spawn_local(async move {
            let _ = stream.set_nodelay(true);
            let Some((stream, hello, core, buffer, filled)) = answer_hello(&links, stream).await
            else {
                return;
            };
            match senders.get(core as usize).and_then(Option::as_ref) {
                None => spawn_local(links.serve_incoming(stream, hello, buffer, filled)).detach(),
                Some(sender) => {
                    let link = PeerHandoff {
                        stream,
                        hello,
                        buffer,
                        filled,
                    };
                    // A core that has stopped drops the link; its caller dials again.
                    let _ = sender.send(link).await;
                }
            }
        })
        .detach();
    }
}
