//! The native protocol's frames, requests and replies (kvsd and the client decode them).
#![no_main]

use kvs_wire::frame::{Decoded, FrameDecoder};
use kvs_wire::limits::FRAME_HEADER_SIZE;
use kvs_wire::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The whole stream, frame after frame, as a connection reads it.
    let mut at = 0;
    while let Ok(Decoded::Frame { header, len }) = FrameDecoder.decode(&data[at..]) {
        let body = &data[at + FRAME_HEADER_SIZE..at + len];
        if let Ok(request) = Request::decode_body(header.opcode, body) {
            // What decodes encodes again, and decodes to the same.
            let mut again = Vec::new();
            request.encode(header.request_id, &mut again);
            let Ok(Decoded::Frame { header, len }) = FrameDecoder.decode(&again) else {
                panic!("a request's own encoding does not frame");
            };
            let back = Request::decode_body(header.opcode, &again[FRAME_HEADER_SIZE..len]);
            assert_eq!(back.as_ref(), Ok(&request));
        }
        let _ = Response::decode(&header, body);
        at += len;
    }
    // A body alone, under every opcode.
    if let Some((&opcode, body)) = data.split_first() {
        let _ = Request::decode_body(opcode, body);
    }
});
