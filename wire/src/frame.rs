//! Frames: the fixed 24-byte header, the CRC, and a sans-IO decoder over a byte buffer.
//!
//! ```text
//! offset size field
//!  0     2    magic        b"KV"
//!  2     1    version      1
//!  3     1    opcode       see message::Opcode
//!  4     4    body_len     u32 LE, at most FRAME_BODY_SIZE_MAX
//!  8     8    request_id   u64 LE, chosen by the client, echoed in the reply
//! 16     2    flags        u16 LE: bit 0 RESPONSE, bit 1 ERROR; other bits must be 0
//! 18     2    reserved     must be 0
//! 20     4    crc32c       over bytes 0..20 of the header, then the body
//! ```

use crate::limits::{FRAME_BODY_SIZE_MAX, FRAME_HEADER_SIZE};

pub const MAGIC: [u8; 2] = *b"KV";
pub const VERSION: u8 = 1;
pub const FLAG_RESPONSE: u16 = 1;
pub const FLAG_ERROR: u16 = 2;
const FLAGS_KNOWN: u16 = FLAG_RESPONSE | FLAG_ERROR;

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub opcode: u8,
    pub body_len: u32,
    pub request_id: u64,
    pub flags: u16,
}

/// A whole frame: its header and its body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub body: Vec<u8>,
}

/// Why bytes could not be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream is not kvs protocol (or framing was lost): the connection must close.
    #[error("bad frame magic {0:02x?}: not a kvs v1 stream")]
    BadMagic([u8; 2]),
    #[error("unsupported protocol version {0} (this side speaks 1)")]
    BadVersion(u8),
    /// The body is larger than FRAME_BODY_SIZE_MAX: the connection must close.
    #[error("frame body of {len} bytes exceeds the {} limit", crate::limits::bytes_limit(*max))]
    TooLarge {
        request_id: u64,
        len: u64,
        max: usize,
    },
    #[error("frame flags {0:#06x} has unknown bits set")]
    BadFlags(u16),
    /// The frame is intact in length but its bytes are damaged; the stream can go on.
    #[error("frame checksum mismatch (request {request_id})")]
    BadChecksum { request_id: u64 },
}

impl FrameError {
    /// Whether the byte stream can still be read after this error. When it can, the server
    /// answers the one bad frame with an error and keeps the connection.
    pub fn framing_intact(&self) -> bool {
        matches!(
            self,
            FrameError::BadChecksum { .. } | FrameError::BadFlags(_)
        )
    }
}

/// Appends one frame to `out`. The body is written by `write_body`, so a message is encoded
/// straight into the output buffer with no intermediate copy.
pub fn encode_frame(
    out: &mut Vec<u8>,
    opcode: u8,
    request_id: u64,
    flags: u16,
    write_body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(opcode);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let body_start = out.len();
    write_body(out);
    let body_len = out.len() - body_start;
    assert!(
        body_len <= FRAME_BODY_SIZE_MAX,
        "encoder produced an oversized frame body"
    );
    out[start + 4..start + 8].copy_from_slice(&(body_len as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 20]), &out[body_start..]);
    out[start + 20..start + 24].copy_from_slice(&crc.to_le_bytes());
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Parses a header from at least FRAME_HEADER_SIZE bytes, checking magic, version and size.
pub fn parse_header(bytes: &[u8]) -> Result<Header, FrameError> {
    assert!(bytes.len() >= FRAME_HEADER_SIZE);
    if bytes[0..2] != MAGIC {
        return Err(FrameError::BadMagic([bytes[0], bytes[1]]));
    }
    if bytes[2] != VERSION {
        return Err(FrameError::BadVersion(bytes[2]));
    }
    let header = Header {
        opcode: bytes[3],
        body_len: read_u32(bytes, 4),
        request_id: read_u64(bytes, 8),
        flags: read_u16(bytes, 16),
    };
    if header.body_len as usize > FRAME_BODY_SIZE_MAX {
        return Err(FrameError::TooLarge {
            request_id: header.request_id,
            len: u64::from(header.body_len),
            max: FRAME_BODY_SIZE_MAX,
        });
    }
    Ok(header)
}

/// Result of looking at the front of a receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// More bytes are needed; `wanted` is the total the next frame needs, when known.
    Incomplete { wanted: usize },
    /// A whole, checked frame occupying `len` bytes at the front of the buffer.
    Frame { header: Header, len: usize },
}

/// Sans-IO frame decoder: looks at the front of a buffer and says whether a whole, valid frame
/// is there. The caller owns the buffer and drops `len` bytes after using the frame; on an
/// error whose framing is intact it drops `FrameError`'s frame too (see [`frame_len`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameDecoder;

impl FrameDecoder {
    pub fn decode(&self, buf: &[u8]) -> Result<Decoded, FrameError> {
        if buf.len() < FRAME_HEADER_SIZE {
            // Check what is there already so garbage is refused without waiting for more.
            if !buf.is_empty() && buf[0] != MAGIC[0] || buf.len() >= 2 && buf[1] != MAGIC[1] {
                let second = buf.get(1).copied().unwrap_or(0);
                return Err(FrameError::BadMagic([buf[0], second]));
            }
            return Ok(Decoded::Incomplete {
                wanted: FRAME_HEADER_SIZE,
            });
        }
        let header = parse_header(buf)?;
        let len = FRAME_HEADER_SIZE + header.body_len as usize;
        if buf.len() < len {
            return Ok(Decoded::Incomplete { wanted: len });
        }
        let stored_crc = read_u32(buf, 20);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[0..20]), &buf[FRAME_HEADER_SIZE..len]);
        if crc != stored_crc {
            return Err(FrameError::BadChecksum {
                request_id: header.request_id,
            });
        }
        if header.flags & !FLAGS_KNOWN != 0 || read_u16(buf, 18) != 0 {
            return Err(FrameError::BadFlags(header.flags));
        }
        Ok(Decoded::Frame { header, len })
    }
}

/// Total length of the frame at the front of `buf`, when its header is readable. Used to skip a
/// frame that was rejected with an intact framing.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < FRAME_HEADER_SIZE {
        return None;
    }
    parse_header(buf)
        .ok()
        .map(|h| FRAME_HEADER_SIZE + h.body_len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, id: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, id, 0, |b| b.extend_from_slice(body));
        out
    }

    #[test]
    fn round_trip_and_incremental() {
        let bytes = frame(3, 77, b"hello");
        for cut in 0..bytes.len() {
            assert!(matches!(
                FrameDecoder.decode(&bytes[..cut]),
                Ok(Decoded::Incomplete { .. })
            ));
        }
        match FrameDecoder.decode(&bytes).unwrap() {
            Decoded::Frame { header, len } => {
                assert_eq!(len, bytes.len());
                assert_eq!(header.opcode, 3);
                assert_eq!(header.request_id, 77);
                assert_eq!(&bytes[FRAME_HEADER_SIZE..len], b"hello");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbage_is_refused_early() {
        assert!(matches!(
            FrameDecoder.decode(b"GET x\r\n"),
            Err(FrameError::BadMagic(_))
        ));
        assert!(matches!(
            FrameDecoder.decode(b"X"),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = frame(3, 1, b"some body bytes");
        for i in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            let result = FrameDecoder.decode(&damaged);
            assert!(
                !matches!(result, Ok(Decoded::Frame { len, .. }) if len == bytes.len()),
                "bit {i} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn oversized_body_is_refused_before_reading_it() {
        let mut bytes = frame(3, 9, b"");
        bytes[4..8].copy_from_slice(&(FRAME_BODY_SIZE_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            FrameDecoder.decode(&bytes),
            Err(FrameError::TooLarge { request_id: 9, .. })
        ));
    }

    #[test]
    fn bad_version_and_flags() {
        let mut bytes = frame(3, 9, b"");
        bytes[2] = 2;
        assert_eq!(FrameDecoder.decode(&bytes), Err(FrameError::BadVersion(2)));
        let mut out = Vec::new();
        encode_frame(&mut out, 3, 9, 0x80, |_| {});
        assert_eq!(FrameDecoder.decode(&out), Err(FrameError::BadFlags(0x80)));
        assert_eq!(frame_len(&out), Some(FRAME_HEADER_SIZE));
    }
}
