//! What makes a node one of a cluster (issue 13; ADR 0015): so far the peer protocol's
//! frames and the encoding of Raft messages in them.

pub mod codec;
