//! The peer protocol's bytes: frames between nodes and our own encoding of raft-rs's
//! messages inside them (ADR 0015). Protobuf bytes from the network are never decoded:
//! raft 0.7's protobuf 2.x has a known advisory (uncontrolled recursion on crafted input),
//! and a codec of our own is also one whose every length is checked against what is left.
//!
//! Frame (integers little-endian):
//!
//! | bytes  | field                                              |
//! |--------|----------------------------------------------------|
//! | 0..4   | magic `KVSP`                                       |
//! | 4      | protocol version (1)                               |
//! | 5      | kind: 1 hello, 2 welcome, 3 refused, 4 raft batch, |
//! |        | 5 forwarded requests, 6 their answers, 7 snapshot  |
//! |        | chunks, 8 transactions' lock waits                 |
//! | 6..8   | zero                                               |
//! | 8..12  | body length (at most [`PEER_BODY_SIZE_MAX`])       |
//! | 12..16 | CRC32C of the body                                 |
//! | 16..   | body                                               |
//!
//! A raft batch body is a count and, per message, the group it is for (a shard id, which is
//! not a core index: ADR 0015) and the message. Decoding is total: any bytes give a message
//! or an error, never a panic (property-tested).

use bytes::Bytes;

use super::forward::{decode_answer, decode_forwarded, encode_answer, encode_forwarded, Forwarded};
use crate::shard::ShardReply;
use crate::snapshot::SnapshotChunk;
use protobuf::{RepeatedField, SingularPtrField};
use raft::eraftpb::{
    ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};

/// Frame header size.
pub const PEER_HEADER_SIZE: usize = 16;
/// Largest frame body: a batch of appends, or a snapshot chunk, with room to spare.
pub const PEER_BODY_SIZE_MAX: usize = 64 * 1024 * 1024;
const MAGIC: &[u8; 4] = b"KVSP";
const VERSION: u8 = 1;

/// What a frame carries.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerFrame {
    /// The first frame on a link: who is calling, and for which cluster.
    Hello {
        cluster_id: u64,
        node_id: u64,
        shard_count: u32,
        /// The calling core: the link carries the messages of the groups that core hosts,
        /// and the answering node hands it to its own core of that index.
        core: u32,
        /// Where the caller serves clients, for leader hints: its native address and its
        /// RESP address (empty when it has none).
        client_addr: String,
        resp_addr: String,
        /// Random bytes the answering node's proof of the cluster secret covers (ADR 0027).
        nonce: Vec<u8>,
    },
    /// The answer to a hello that was accepted: who answered, its own nonce, and its proof
    /// of the cluster secret (empty when it has none).
    Welcome {
        node_id: u64,
        nonce: Vec<u8>,
        proof: Vec<u8>,
    },
    /// The dialing node's proof of the cluster secret, its first frame after the welcome
    /// when the cluster has one.
    Proof { proof: Vec<u8> },
    /// The answer to a hello that was not (another cluster, an unknown node): why.
    Refused { reason: String },
    /// Raft messages, each for a group.
    Raft(Vec<(u64, Message)>),
    /// Requests forwarded to the shard's leader (`forward.rs`).
    Forward(Vec<Forwarded>),
    /// Their answers, by the forwarding core's id.
    Answers(Vec<(u64, ShardReply)>),
    /// Chunks of snapshots (`snapshot.rs`), each for a group.
    Snapshot(Vec<(u64, SnapshotChunk)>),
    /// The sending node's transactions' lock waits: each waiter and the transactions it
    /// waits for (`deadlock.rs`).
    WaitsFor(crate::deadlock::Edges),
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerDecodeError {
    #[error("not a kvs peer frame (bad magic)")]
    Magic,
    #[error("peer protocol version {0}; this node speaks 1")]
    Version(u8),
    #[error("frame body of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("frame body fails its checksum")]
    Checksum,
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes `frame` (header and body) onto `out`.
pub fn encode_frame(frame: &PeerFrame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(match frame {
        PeerFrame::Hello { .. } => 1,
        PeerFrame::Welcome { .. } => 2,
        PeerFrame::Refused { .. } => 3,
        PeerFrame::Raft(_) => 4,
        PeerFrame::Forward(_) => 5,
        PeerFrame::Answers(_) => 6,
        PeerFrame::Snapshot(_) => 7,
        PeerFrame::WaitsFor(_) => 8,
        PeerFrame::Proof { .. } => 9,
    });
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let body = out.len();
    match frame {
        PeerFrame::Hello {
            cluster_id,
            node_id,
            shard_count,
            core,
            client_addr,
            resp_addr,
            nonce,
        } => {
            put_u64(out, *cluster_id);
            put_u64(out, *node_id);
            out.extend_from_slice(&shard_count.to_le_bytes());
            out.extend_from_slice(&core.to_le_bytes());
            put_bytes(out, client_addr.as_bytes());
            put_bytes(out, resp_addr.as_bytes());
            put_bytes(out, nonce);
        }
        PeerFrame::Welcome {
            node_id,
            nonce,
            proof,
        } => {
            put_u64(out, *node_id);
            put_bytes(out, nonce);
            put_bytes(out, proof);
        }
        PeerFrame::Proof { proof } => put_bytes(out, proof),
        PeerFrame::Refused { reason } => put_bytes(out, reason.as_bytes()),
        PeerFrame::Raft(messages) => {
            out.extend_from_slice(&(messages.len() as u32).to_le_bytes());
            for (group, message) in messages {
                put_u64(out, *group);
                encode_message(message, out);
            }
        }
        PeerFrame::Forward(requests) => {
            out.extend_from_slice(&(requests.len() as u32).to_le_bytes());
            for request in requests {
                encode_forwarded(request, out);
            }
        }
        PeerFrame::Answers(answers) => {
            out.extend_from_slice(&(answers.len() as u32).to_le_bytes());
            for (id, reply) in answers {
                encode_answer(*id, reply, out);
            }
        }
        PeerFrame::Snapshot(chunks) => {
            out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
            for (group, chunk) in chunks {
                put_u64(out, *group);
                encode_chunk(chunk, out);
            }
        }
        PeerFrame::WaitsFor(edges) => {
            out.extend_from_slice(&(edges.len() as u32).to_le_bytes());
            for (txn, blockers) in edges {
                put_u64(out, *txn);
                out.extend_from_slice(&(blockers.len() as u32).to_le_bytes());
                for blocker in blockers {
                    put_u64(out, *blocker);
                }
            }
        }
    }
    let len = out.len() - body;
    assert!(len <= PEER_BODY_SIZE_MAX, "peer frame of {len} bytes");
    let crc = crc32c::crc32c(&out[body..]);
    out[start + 8..start + 12].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the frame at the front of `buf`: None when more bytes are needed, else the frame
/// and its length.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(PeerFrame, usize)>, PeerDecodeError> {
    if buf.len() < PEER_HEADER_SIZE {
        return Ok(None);
    }
    if &buf[0..4] != MAGIC {
        return Err(PeerDecodeError::Magic);
    }
    if buf[4] != VERSION {
        return Err(PeerDecodeError::Version(buf[4]));
    }
    let len = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")) as usize;
    if len > PEER_BODY_SIZE_MAX {
        return Err(PeerDecodeError::TooLarge(len));
    }
    let Some(body) = buf.get(PEER_HEADER_SIZE..PEER_HEADER_SIZE + len) else {
        return Ok(None);
    };
    if crc32c::crc32c(body) != u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes")) {
        return Err(PeerDecodeError::Checksum);
    }
    let mut r = Reader { bytes: body, at: 0 };
    let frame = match buf[5] {
        1 => PeerFrame::Hello {
            cluster_id: r.u64()?,
            node_id: r.u64()?,
            shard_count: r.u32()?,
            core: r.u32()?,
            client_addr: String::from_utf8_lossy(r.bytes()?).into_owned(),
            resp_addr: String::from_utf8_lossy(r.bytes()?).into_owned(),
            nonce: r.bytes()?.to_vec(),
        },
        2 => PeerFrame::Welcome {
            node_id: r.u64()?,
            nonce: r.bytes()?.to_vec(),
            proof: r.bytes()?.to_vec(),
        },
        3 => PeerFrame::Refused {
            reason: String::from_utf8_lossy(r.bytes()?).into_owned(),
        },
        4 => PeerFrame::Raft(r.list(8, |r| Ok((r.u64()?, decode_message(r)?)))?),
        5 => PeerFrame::Forward(r.list(17, decode_forwarded)?),
        6 => PeerFrame::Answers(r.list(9, decode_answer)?),
        7 => PeerFrame::Snapshot(r.list(57, |r| Ok((r.u64()?, decode_chunk(r)?)))?),
        8 => PeerFrame::WaitsFor(r.list(12, |r| Ok((r.u64()?, r.list(8, Reader::u64)?)))?),
        9 => PeerFrame::Proof {
            proof: r.bytes()?.to_vec(),
        },
        kind => return Err(malformed(format!("unknown frame kind {kind}"))),
    };
    if r.at != body.len() {
        return Err(malformed(format!(
            "{} bytes after the frame's content",
            body.len() - r.at
        )));
    }
    Ok(Some((frame, PEER_HEADER_SIZE + len)))
}

fn encode_chunk(chunk: &SnapshotChunk, out: &mut Vec<u8>) {
    put_u64(out, chunk.index);
    put_u64(out, chunk.term);
    out.extend_from_slice(&chunk.number.to_le_bytes());
    put_bytes(out, &chunk.meta);
    put_u64(out, chunk.total_pages);
    put_u64(out, chunk.first);
    put_bytes(out, &chunk.pages);
    out.extend_from_slice(&chunk.crc.to_le_bytes());
    out.push(u8::from(chunk.last));
}

/// Decodes a chunk; its checksum is checked by the receiving peer (`snapshot.rs`).
fn decode_chunk(r: &mut Reader<'_>) -> Result<SnapshotChunk, PeerDecodeError> {
    Ok(SnapshotChunk {
        index: r.u64()?,
        term: r.u64()?,
        number: r.u32()?,
        meta: r.bytes()?.to_vec(),
        total_pages: r.u64()?,
        first: r.u64()?,
        pages: r.bytes()?.to_vec(),
        crc: r.u32()?,
        last: match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(malformed(format!("a chunk's last flag is {other}"))),
        },
    })
}

pub(super) fn malformed(detail: String) -> PeerDecodeError {
    PeerDecodeError::Malformed(detail)
}

pub(super) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_ids(out: &mut Vec<u8>, ids: &[u64]) {
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for &id in ids {
        put_u64(out, id);
    }
}

/// Encodes one Raft message: every field raft-rs 0.7 sets.
pub fn encode_message(m: &Message, out: &mut Vec<u8>) {
    out.push(m.get_msg_type() as u8);
    for v in [
        m.to,
        m.from,
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.commit_term,
        m.request_snapshot,
        m.reject_hint,
        m.deprecated_priority,
        m.priority as u64,
    ] {
        put_u64(out, v);
    }
    out.push(u8::from(m.reject));
    put_bytes(out, &m.context);
    out.extend_from_slice(&(m.entries.len() as u32).to_le_bytes());
    for e in m.entries.iter() {
        out.push(e.get_entry_type() as u8);
        put_u64(out, e.term);
        put_u64(out, e.index);
        out.push(u8::from(e.sync_log));
        put_bytes(out, &e.data);
        put_bytes(out, &e.context);
    }
    match m.snapshot.as_ref() {
        None => out.push(0),
        Some(snapshot) => {
            out.push(1);
            put_bytes(out, &snapshot.data);
            let metadata = snapshot.get_metadata();
            put_u64(out, metadata.index);
            put_u64(out, metadata.term);
            let conf = metadata.get_conf_state();
            put_ids(out, &conf.voters);
            put_ids(out, &conf.learners);
            put_ids(out, &conf.voters_outgoing);
            put_ids(out, &conf.learners_next);
            out.push(u8::from(conf.auto_leave));
        }
    }
}

pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], PeerDecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| malformed(format!("ends early (wanted {n} bytes at {})", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    pub(super) fn u8(&mut self) -> Result<u8, PeerDecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn flag(&mut self) -> Result<bool, PeerDecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(malformed(format!("flag {other}"))),
        }
    }
    pub(super) fn u32(&mut self) -> Result<u32, PeerDecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub(super) fn u64(&mut self) -> Result<u64, PeerDecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub(super) fn bytes(&mut self) -> Result<&'a [u8], PeerDecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    /// A count of items each at least `item` bytes long: bounded by what is left, so a lie
    /// cannot make us allocate.
    pub(super) fn count(&mut self, item: usize) -> Result<usize, PeerDecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item) > self.bytes.len() - self.at {
            return Err(malformed(format!(
                "a count of {n} that the frame cannot hold"
            )));
        }
        Ok(n)
    }
    /// A count (see [`Reader::count`]) and that many items, each read by `each`.
    pub(super) fn list<T>(
        &mut self,
        item: usize,
        mut each: impl FnMut(&mut Self) -> Result<T, PeerDecodeError>,
    ) -> Result<Vec<T>, PeerDecodeError> {
        let n = self.count(item)?;
        (0..n).map(|_| each(self)).collect()
    }
    fn ids(&mut self) -> Result<Vec<u64>, PeerDecodeError> {
        self.list(8, Reader::u64)
    }
}

fn message_type(v: u8) -> Result<MessageType, PeerDecodeError> {
    use MessageType::*;
    const ALL: [MessageType; 19] = [
        MsgHup,
        MsgBeat,
        MsgPropose,
        MsgAppend,
        MsgAppendResponse,
        MsgRequestVote,
        MsgRequestVoteResponse,
        MsgSnapshot,
        MsgHeartbeat,
        MsgHeartbeatResponse,
        MsgUnreachable,
        MsgSnapStatus,
        MsgCheckQuorum,
        MsgTransferLeader,
        MsgTimeoutNow,
        MsgReadIndex,
        MsgReadIndexResp,
        MsgRequestPreVote,
        MsgRequestPreVoteResponse,
    ];
    ALL.get(v as usize)
        .copied()
        .filter(|t| *t as u8 == v)
        .ok_or_else(|| malformed(format!("message type {v}")))
}

fn entry_type(v: u8) -> Result<EntryType, PeerDecodeError> {
    match v {
        0 => Ok(EntryType::EntryNormal),
        1 => Ok(EntryType::EntryConfChange),
        2 => Ok(EntryType::EntryConfChangeV2),
        other => Err(malformed(format!("entry type {other}"))),
    }
}

fn decode_message(r: &mut Reader<'_>) -> Result<Message, PeerDecodeError> {
    let mut m = Message::default();
    m.set_msg_type(message_type(r.u8()?)?);
    m.to = r.u64()?;
    m.from = r.u64()?;
    m.term = r.u64()?;
    m.log_term = r.u64()?;
    m.index = r.u64()?;
    m.commit = r.u64()?;
    m.commit_term = r.u64()?;
    m.request_snapshot = r.u64()?;
    m.reject_hint = r.u64()?;
    m.deprecated_priority = r.u64()?;
    m.priority = r.u64()? as i64;
    m.reject = r.flag()?;
    m.context = Bytes::copy_from_slice(r.bytes()?);
    // An entry takes at least 26 bytes.
    let count = r.count(26)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let mut e = Entry::default();
        e.set_entry_type(entry_type(r.u8()?)?);
        e.term = r.u64()?;
        e.index = r.u64()?;
        e.sync_log = r.flag()?;
        e.data = Bytes::copy_from_slice(r.bytes()?);
        e.context = Bytes::copy_from_slice(r.bytes()?);
        entries.push(e);
    }
    m.entries = RepeatedField::from_vec(entries);
    if r.flag()? {
        let data = Bytes::copy_from_slice(r.bytes()?);
        let (index, term) = (r.u64()?, r.u64()?);
        let conf = ConfState {
            voters: r.ids()?,
            learners: r.ids()?,
            voters_outgoing: r.ids()?,
            learners_next: r.ids()?,
            auto_leave: r.flag()?,
            ..Default::default()
        };
        let metadata = SnapshotMetadata {
            index,
            term,
            conf_state: SingularPtrField::some(conf),
            ..Default::default()
        };
        m.set_snapshot(Snapshot {
            data,
            metadata: SingularPtrField::some(metadata),
            ..Default::default()
        });
    }
    Ok(m)
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
