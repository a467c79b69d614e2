//! The codec's tests: every request and reply round-trips, limits and damaged bodies are
//! refused with typed errors, and no input makes a decoder panic.

use super::*;
use crate::frame::{Decoded, FrameDecoder};
use crate::limits::FRAME_HEADER_SIZE;
use proptest::prelude::*;

fn requests() -> Vec<Request> {
    vec![
        Request::Ping,
        Request::Info,
        Request::Get { key: b"k".to_vec() },
        Request::Delete { key: b"".to_vec() },
        Request::Put {
            key: b"k".to_vec(),
            value: vec![0, 1, 2, 255],
        },
        Request::Cas {
            key: b"k".to_vec(),
            expected_version: 7,
            value: Some(b"v".to_vec()),
        },
        Request::Cas {
            key: b"k".to_vec(),
            expected_version: 0,
            value: None,
        },
        Request::MGet {
            keys: vec![b"a".to_vec(), b"b".to_vec()],
        },
        Request::MPut {
            pairs: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), vec![])],
        },
        Request::Scan {
            start: b"a".to_vec(),
            end: Some(b"z".to_vec()),
            limit: 10,
        },
        Request::Scan {
            start: vec![],
            end: None,
            limit: 1,
        },
        Request::Document {
            command: br#"{"find": "people"}"#.to_vec(),
        },
        Request::GetStale { key: b"k".to_vec() },
        Request::TransferLeader { shard: 3, node: 2 },
        Request::Once {
            session: 0xabc,
            seq: 9,
            acked_below: 7,
            request: Box::new(Request::Cas {
                key: b"k".to_vec(),
                expected_version: 1,
                value: None,
            }),
        },
        Request::Begin {
            isolation: Isolation::ReadCommitted,
        },
        Request::Begin {
            isolation: Isolation::Serializable,
        },
        Request::InTxn {
            txn: 0x1234,
            for_update: false,
            request: Box::new(Request::Scan {
                start: b"a".to_vec(),
                end: None,
                limit: 5,
            }),
        },
        Request::InTxn {
            txn: 1,
            for_update: true,
            request: Box::new(Request::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            }),
        },
        Request::Commit { txn: 7 },
        Request::Rollback { txn: 8 },
    ]
}

#[test]
fn once_carries_a_write_and_never_another_once() {
    let once = |request: Request| Request::Once {
        session: 1,
        seq: 1,
        acked_below: 1,
        request: Box::new(request),
    };
    assert!(matches!(
        once(Request::Get { key: b"k".to_vec() }).validate(),
        Err(DecodeError::Invalid { what: "ONCE", .. })
    ));
    // A chain of ONCEs (a hostile client's) is refused before it is followed.
    let mut body = Vec::new();
    for _ in 0..100_000 {
        body.extend_from_slice(&[0; 24]);
        body.push(Opcode::Once as u8);
    }
    assert!(Request::decode_body(Opcode::Once as u8, &body).is_err());
    assert_eq!(
        once(Request::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec()
        })
        .reply_opcode(),
        Opcode::Put
    );
}

fn responses() -> Vec<(Opcode, Response)> {
    vec![
        (Opcode::Ping, Response::Pong),
        (Opcode::Begin, Response::Began { txn: 99 }),
        (
            Opcode::Commit,
            Response::Committed(vec![(b"a".to_vec(), 5), (b"b".to_vec(), 0)]),
        ),
        (Opcode::Rollback, Response::Ended),
        (
            Opcode::Get,
            Response::Value {
                version: 3,
                value: b"v".to_vec(),
            },
        ),
        (Opcode::Put, Response::Written { version: 9 }),
        (Opcode::TransferLeader, Response::Written { version: 1 }),
        (
            Opcode::GetStale,
            Response::Value {
                version: 2,
                value: b"w".to_vec(),
            },
        ),
        (Opcode::Cas, Response::Written { version: 0 }),
        (Opcode::Delete, Response::Deleted { existed: true }),
        (
            Opcode::MGet,
            Response::Values(vec![Some((1, b"x".to_vec())), None]),
        ),
        (Opcode::MPut, Response::Versions(vec![4, 5])),
        (
            Opcode::Scan,
            Response::Scanned {
                pairs: vec![(b"a".to_vec(), b"1".to_vec())],
                next: Some(b"a\0".to_vec()),
            },
        ),
        (
            Opcode::Scan,
            Response::Scanned {
                pairs: vec![],
                next: None,
            },
        ),
        (Opcode::Info, Response::Info("{\"shards\":2}".into())),
        (
            Opcode::Document,
            Response::Document("{\"documents\":[]}".into()),
        ),
        (
            Opcode::Get,
            Response::error(ErrorCode::NotFound, "key not found"),
        ),
    ]
}

fn decode_frame(bytes: &[u8]) -> (Header, &[u8]) {
    match FrameDecoder.decode(bytes).unwrap() {
        Decoded::Frame { header, len } => {
            assert_eq!(len, bytes.len());
            (header, &bytes[FRAME_HEADER_SIZE..len])
        }
        other => panic!("incomplete: {other:?}"),
    }
}

#[test]
fn a_transaction_carries_key_value_requests_only() {
    for inner in [Request::Ping, Request::Commit { txn: 1 }, Request::Info] {
        let mut body = Vec::new();
        Request::InTxn {
            txn: 3,
            for_update: false,
            request: Box::new(inner),
        }
        .encode_body(&mut body);
        assert!(matches!(
            Request::decode_body(Opcode::InTxn as u8, &body),
            Err(DecodeError::Invalid { what: "IN_TXN", .. })
        ));
    }
    assert!(Request::decode_body(Opcode::Begin as u8, &[4]).is_err());
    assert!(Request::decode_body(Opcode::Begin as u8, &[0]).is_err());
    assert_eq!(
        Request::decode_body(Opcode::Begin as u8, &[3]).unwrap(),
        Request::Begin {
            isolation: crate::Isolation::ReadOnly
        }
    );
}

#[test]
fn every_request_round_trips() {
    for request in requests() {
        let mut bytes = Vec::new();
        request.encode(42, &mut bytes);
        let (header, body) = decode_frame(&bytes);
        assert_eq!(header.request_id, 42);
        assert_eq!(Request::decode_body(header.opcode, body).unwrap(), request);
    }
}

#[test]
fn every_response_round_trips() {
    for (opcode, response) in responses() {
        let mut bytes = Vec::new();
        response.encode(opcode as u8, 5, &mut bytes);
        let (header, body) = decode_frame(&bytes);
        assert_eq!(Response::decode(&header, body).unwrap(), response);
    }
}

#[test]
fn truncated_bodies_are_errors() {
    for request in requests() {
        let mut body = Vec::new();
        request.encode_body(&mut body);
        for cut in 0..body.len() {
            let result = Request::decode_body(request.opcode() as u8, &body[..cut]);
            assert!(result.is_err(), "{request:?} cut at {cut} decoded");
        }
        let mut long = body.clone();
        long.push(0);
        assert!(matches!(
            Request::decode_body(request.opcode() as u8, &long),
            Err(DecodeError::TrailingBytes { extra: 1 })
        ));
    }
}

#[test]
fn limits_are_enforced() {
    let key = vec![b'k'; KEY_SIZE_MAX + 1];
    let err = Request::Get { key }.validate().unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooLarge);
    let value = vec![0u8; VALUE_SIZE_MAX + 1];
    let err = Request::Put {
        key: b"k".to_vec(),
        value,
    }
    .validate()
    .unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { what: "value", .. }));
    assert!(Request::Put {
        key: b"k".to_vec(),
        value: vec![0; VALUE_SIZE_MAX]
    }
    .validate()
    .is_ok());
    let err = Request::Scan {
        start: vec![],
        end: None,
        limit: 0,
    }
    .validate()
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert_eq!(
        Request::decode_body(200, &[]).unwrap_err().code(),
        ErrorCode::UnknownOpcode
    );
    // A count far larger than the body is refused by limit, not by allocating for it.
    let mut body = Vec::new();
    put_u32(&mut body, u32::MAX);
    assert_eq!(
        Request::decode_body(Opcode::MGet as u8, &body)
            .unwrap_err()
            .code(),
        ErrorCode::TooLarge
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn decoders_never_panic(opcode in 0u8..12, body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Request::decode_body(opcode, &body);
        for flags in [FLAG_RESPONSE, FLAG_RESPONSE | FLAG_ERROR] {
            let header = Header { opcode, body_len: body.len() as u32, request_id: 1, flags };
            let _ = Response::decode(&header, &body);
        }
    }

    #[test]
    fn frame_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = FrameDecoder.decode(&bytes);
        let _ = crate::frame::frame_len(&bytes);
    }

    #[test]
    fn put_round_trips(key in proptest::collection::vec(any::<u8>(), 0..64),
                       value in proptest::collection::vec(any::<u8>(), 0..512),
                       id in any::<u64>()) {
        let request = Request::Put { key, value };
        let mut bytes = Vec::new();
        request.encode(id, &mut bytes);
        let (header, body) = decode_frame(&bytes);
        prop_assert_eq!(header.request_id, id);
        prop_assert_eq!(Request::decode_body(header.opcode, body).unwrap(), request);
    }
}
