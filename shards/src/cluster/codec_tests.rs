//! The peer codec: round trips of every field, and decoding that never panics.
// raft-rs's protobuf types are built field by field here, as raft-rs itself does.
#![allow(clippy::field_reassign_with_default)]

use super::*;
use crate::txn_locks::{LockAsk, Mode, TxnLockOp};
use proptest::prelude::*;

fn sample_message() -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.to = 2;
    m.from = 1;
    m.term = 7;
    m.log_term = 6;
    m.index = 41;
    m.commit = 40;
    m.commit_term = 6;
    m.request_snapshot = 3;
    m.reject = true;
    m.reject_hint = 39;
    m.priority = -5;
    m.deprecated_priority = 9;
    m.context = Bytes::from_static(b"ctx");
    let mut entry = Entry::default();
    entry.set_entry_type(EntryType::EntryConfChangeV2);
    entry.term = 7;
    entry.index = 42;
    entry.data = Bytes::from_static(b"payload \0 with any bytes");
    entry.context = Bytes::from_static(b"c");
    entry.sync_log = true;
    m.set_entries(RepeatedField::from_vec(vec![entry, Entry::default()]));
    let mut conf = ConfState::default();
    conf.voters = vec![1, 2, 3];
    conf.learners = vec![4];
    conf.voters_outgoing = vec![1];
    conf.learners_next = vec![5];
    conf.auto_leave = true;
    let mut metadata = SnapshotMetadata::default();
    metadata.index = 30;
    metadata.term = 5;
    metadata.set_conf_state(conf);
    let mut snapshot = Snapshot::default();
    snapshot.data = Bytes::from_static(b"chunk");
    snapshot.set_metadata(metadata);
    m.set_snapshot(snapshot);
    m
}

#[test]
fn every_frame_kind_round_trips() {
    let frames = [
        PeerFrame::Hello {
            cluster_id: 0xC1,
            node_id: 3,
            shard_count: 2,
            core: 1,
            client_addr: "127.0.0.1:7003".into(),
            resp_addr: String::new(),
            nonce: vec![7; 16],
        },
        PeerFrame::Welcome {
            node_id: 1,
            nonce: vec![9; 16],
            proof: vec![1; 32],
        },
        PeerFrame::Welcome {
            node_id: 1,
            nonce: Vec::new(),
            proof: Vec::new(),
        },
        PeerFrame::Proof { proof: vec![2; 32] },
        PeerFrame::Refused {
            reason: "another cluster".into(),
        },
        PeerFrame::Raft(vec![(0, sample_message()), (9, Message::default())]),
        PeerFrame::Forward(sample_forwards()),
        PeerFrame::Answers(sample_answers()),
        PeerFrame::WaitsFor(vec![(7, vec![3, 9]), (3, vec![])]),
        PeerFrame::WaitsFor(Vec::new()),
        PeerFrame::Snapshot(vec![
            (
                1,
                SnapshotChunk {
                    index: 900,
                    term: 4,
                    number: 0,
                    meta: vec![7; 4096],
                    total_pages: 12,
                    first: 0,
                    pages: Vec::new(),
                    crc: 0xDEAD_BEEF,
                    last: false,
                },
            ),
            (
                1,
                SnapshotChunk {
                    index: 900,
                    term: 4,
                    number: 1,
                    meta: Vec::new(),
                    total_pages: 0,
                    first: 2,
                    pages: vec![9; 8192],
                    crc: 1,
                    last: true,
                },
            ),
        ]),
    ];
    let mut stream = Vec::new();
    for frame in &frames {
        encode_frame(frame, &mut stream);
    }
    let mut at = 0;
    for frame in &frames {
        // Every cut short of the whole frame asks for more bytes.
        let (decoded, len) = decode_frame(&stream[at..]).unwrap().unwrap();
        assert_eq!(&decoded, frame);
        for cut in 0..len {
            assert_eq!(
                decode_frame(&stream[at..at + cut]),
                Ok(None),
                "cut at {cut}"
            );
        }
        at += len;
    }
    assert_eq!(at, stream.len());
}

#[test]
fn damage_is_refused_by_kind() {
    let mut bytes = Vec::new();
    encode_frame(&PeerFrame::Raft(vec![(1, sample_message())]), &mut bytes);
    let mut bad = bytes.clone();
    bad[40] ^= 1;
    assert_eq!(decode_frame(&bad), Err(PeerDecodeError::Checksum));
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert_eq!(decode_frame(&bad), Err(PeerDecodeError::Magic));
    let mut bad = bytes.clone();
    bad[4] = 9;
    assert_eq!(decode_frame(&bad), Err(PeerDecodeError::Version(9)));
    let mut bad = bytes;
    bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        decode_frame(&bad),
        Err(PeerDecodeError::TooLarge(_))
    ));
}

/// A body that passes its checksum but lies inside is refused, not trusted: `body` is
/// wrapped in a valid header.
fn framed(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = b"KVSP".to_vec();
    out.extend_from_slice(&[1, kind, 0, 0]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn a_count_the_frame_cannot_hold_is_refused_before_allocating() {
    let mut body = 1u32.to_le_bytes().to_vec(); // one message
    body.extend_from_slice(&0u64.to_le_bytes()); // group
    body.push(3); // MsgAppend
    body.extend_from_slice(&[0; 88]); // the eleven u64 fields
    body.push(0); // reject
    body.extend_from_slice(&0u32.to_le_bytes()); // context
    body.extend_from_slice(&u32::MAX.to_le_bytes()); // entries: four billion
    assert!(matches!(
        decode_frame(&framed(4, &body)),
        Err(PeerDecodeError::Malformed(d)) if d.contains("cannot hold")
    ));
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        (0u8..19, any::<[u64; 11]>(), any::<bool>()),
        proptest::collection::vec(
            (
                0u8..3,
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
            0..5,
        ),
        proptest::option::of((
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any::<u64>(), 0..4),
        )),
    )
        .prop_map(|((kind, v, reject), entries, snapshot)| {
            let mut m = Message::default();
            m.set_msg_type(message_type(kind).unwrap());
            (m.to, m.from, m.term, m.log_term, m.index, m.commit) =
                (v[0], v[1], v[2], v[3], v[4], v[5]);
            (
                m.commit_term,
                m.request_snapshot,
                m.reject_hint,
                m.deprecated_priority,
            ) = (v[6], v[7], v[8], v[9]);
            m.priority = v[10] as i64;
            m.reject = reject;
            m.set_entries(RepeatedField::from_vec(
                entries
                    .into_iter()
                    .map(|(t, term, index, data)| {
                        let mut e = Entry::default();
                        e.set_entry_type(entry_type(t).unwrap());
                        e.term = term;
                        e.index = index;
                        e.data = Bytes::from(data);
                        e
                    })
                    .collect(),
            ));
            if let Some((data, voters)) = snapshot {
                let mut s = Snapshot::default();
                s.data = Bytes::from(data);
                let mut conf = ConfState::default();
                conf.voters = voters;
                let mut metadata = SnapshotMetadata::default();
                metadata.set_conf_state(conf);
                s.set_metadata(metadata);
                m.set_snapshot(s);
            }
            m
        })
}

proptest! {
    #[test]
    fn messages_round_trip(messages in proptest::collection::vec((any::<u64>(), arb_message()), 0..4)) {
        let frame = PeerFrame::Raft(messages);
        let mut bytes = Vec::new();
        encode_frame(&frame, &mut bytes);
        let (decoded, len) = decode_frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(len, bytes.len());
        prop_assert_eq!(decoded, frame);
    }

    #[test]
    fn any_bytes_decode_without_panicking(kind in 0u8..9, body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame(&framed(kind, &body));
        let _ = decode_frame(&body);
    }
}

fn sample_forwards() -> Vec<Forwarded> {
    use crate::doc_reads::{DocRead, FindMode};
    use crate::shard::ShardOp;
    use kvs_core::command::Command;
    let ops = vec![
        ShardOp::Get { key: b"k".to_vec() },
        ShardOp::MGet {
            keys: vec![b"a".to_vec(), Vec::new()],
        },
        ShardOp::Scan {
            start: b"a".to_vec(),
            end: Some(b"z".to_vec()),
            limit: 10,
        },
        ShardOp::Scan {
            start: Vec::new(),
            end: None,
            limit: 0,
        },
        ShardOp::Write(Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }),
        ShardOp::Write(Command::Cas {
            key: b"k".to_vec(),
            expected_version: 3,
            value: None,
        }),
        ShardOp::Write(Command::PutMany {
            pairs: vec![(b"a".to_vec(), b"1".to_vec())],
        }),
        ShardOp::DocRead(DocRead::Find {
            coll: "users".into(),
            query: b"{}".to_vec(),
            mode: FindMode::Explain,
        }),
        ShardOp::DocRead(DocRead::Aggregate {
            coll: "c".into(),
            filter: b"f".to_vec(),
            group: Some(b"g".to_vec()),
        }),
        ShardOp::DocRead(DocRead::Indexes { coll: "c".into() }),
        ShardOp::DocRead(DocRead::Collections),
        ShardOp::DocRead(DocRead::UniqueConflict {
            coll: "c".into(),
            doc: b"d".to_vec(),
        }),
        ShardOp::DocRead(DocRead::IndexKeys {
            coll: "c".into(),
            name: "i".into(),
        }),
        ShardOp::TxnLock(TxnLockOp::Lock(LockAsk {
            txn: 9,
            deadline_ms: 1_700_000_000_000,
            held: 4,
            keys: vec![
                (b"a".to_vec(), Mode::Shared),
                (b"b".to_vec(), Mode::Exclusive),
            ],
            range: Some((b"m".to_vec(), None)),
        })),
        ShardOp::TxnLock(TxnLockOp::Lock(LockAsk {
            txn: 9,
            deadline_ms: 1,
            held: 0,
            keys: vec![],
            range: Some((b"m".to_vec(), Some(b"n".to_vec()))),
        })),
        ShardOp::TxnLock(TxnLockOp::Check { txn: 10, locks: 2 }),
        ShardOp::TxnLock(TxnLockOp::Release { txn: 11 }),
        ShardOp::Fenced(Box::new(ShardOp::Get { key: b"f".to_vec() })),
        ShardOp::Fenced(Box::new(ShardOp::Scan {
            start: b"a".to_vec(),
            end: None,
            limit: 3,
        })),
        ShardOp::SnapshotBegin,
        ShardOp::AtSnapshot {
            began: 5,
            ts: 7,
            keep_open: true,
            read: Box::new(ShardOp::MGet {
                keys: vec![b"a".to_vec(), b"b".to_vec()],
            }),
        },
        ShardOp::SnapshotEnd { began: 5, ts: 0 },
        ShardOp::SnapshotEnd { began: 0, ts: 9 },
    ];
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| Forwarded {
            id: i as u64,
            origin: u64::MAX - i as u64,
            op,
        })
        .collect()
}

fn sample_answers() -> Vec<(u64, ShardReply)> {
    use kvs_core::doc::command::DocErrorKind;
    use kvs_core::state::{CommandResult, Versioned};
    let v = Versioned {
        version: 9,
        value: b"x".to_vec(),
    };
    let replies = vec![
        ShardReply::Value(None),
        ShardReply::Value(Some(v.clone())),
        ShardReply::Values(vec![None, Some(v)]),
        ShardReply::Scanned(vec![(b"k".to_vec(), b"v".to_vec())]),
        ShardReply::Doc(b"doc".to_vec()),
        ShardReply::Locked,
        ShardReply::Snapshot(1 << 60),
        ShardReply::Error(kvs_wire::ErrorCode::NotLeader, "elsewhere".into()),
        ShardReply::Written(CommandResult::Written { version: 1 }),
        ShardReply::Written(CommandResult::Deleted { existed: true }),
        ShardReply::Written(CommandResult::VersionMismatch { current: 2 }),
        ShardReply::Written(CommandResult::Refused {
            reason: "no".into(),
        }),
        ShardReply::Written(CommandResult::Integer { value: -5 }),
        ShardReply::Written(CommandResult::Replaced { previous: None }),
        ShardReply::Written(CommandResult::Replaced {
            previous: Some(b"p".to_vec()),
        }),
        ShardReply::Written(CommandResult::Skipped),
        ShardReply::Written(CommandResult::WrittenMany {
            versions: vec![1, 2],
        }),
        ShardReply::Written(CommandResult::Document {
            reply: b"r".to_vec(),
        }),
        ShardReply::Written(CommandResult::DocumentRefused {
            kind: DocErrorKind::DuplicateKey,
            message: "dup".into(),
        }),
    ];
    replies
        .into_iter()
        .enumerate()
        .map(|(i, reply)| (i as u64 * 7, reply))
        .collect()
}
