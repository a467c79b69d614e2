//! What makes a node one of a cluster (issue 13; ADR 0015): the peer protocol's frames and
//! the encoding of Raft messages in them (`codec`), and the links between nodes that carry
//! them (`transport`, over `peer_stream`, authenticated as `peer_security` says, ADR 0027),
//! forwarding requests to leaders (`forward`, `forwarding`), and sending snapshots to
//! followers (`snapshot_send`).

pub mod codec;
pub mod forward;
pub mod forwarding;
pub mod node_links;
pub mod peer_security;
pub mod peer_stream;
pub mod snapshot_send;
pub mod transport;
