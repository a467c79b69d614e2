//! Byte layouts of the log: segment header, commit group header and record.
//! `docs/log-format.md` describes the same layouts for people; keep the two in step.
//!
//! ```text
//! segment file  := segment_header_block  group*
//! segment header (one 4 KiB block, rest zero):
//!   0  8  magic           b"KVSLOG\0\x01"
//!   8  4  format version  1
//!  12  4  shard id
//!  16  8  first sequence  sequence number of the first group in this file
//!  24  4  crc32c          of bytes 0..24
//! group (starts on a 4 KiB boundary; zero padding after it to the next boundary):
//!   0  4  magic           b"KVSG"
//!   4  4  header crc32c   of bytes 8..32
//!   8  8  sequence        previous group's + 1, across segments
//!  16  4  records_len     bytes of records after this header
//!  20  4  records crc32c  of those bytes
//!  24  4  record count
//!  28  4  reserved, 0
//!  32     records
//! record:
//!   0  4  payload length
//!   4  4  crc32c          of bytes 8..28+len, then of bytes 0..4
//!   8  1  kind            1 raft entry, 2 raft hard state
//!   9  1  entry type      raft EntryType for kind 1 (0 normal, 1 conf change, 2 conf change v2)
//!  10  2  reserved, 0
//!  12  8  index           entry index; for a hard state, the commit index
//!  20  8  term
//!  28     payload         entry data; for a hard state, the vote as u64
//! ```

use crate::limits::{LOG_BLOCK_SIZE, RECORD_PAYLOAD_SIZE_MAX};

pub const SEGMENT_MAGIC: [u8; 8] = *b"KVSLOG\0\x01";
pub const SEGMENT_FORMAT_VERSION: u32 = 2;
pub const SEGMENT_HEADER_SIZE: usize = LOG_BLOCK_SIZE;
pub const GROUP_MAGIC: [u8; 4] = *b"KVSG";
pub const GROUP_HEADER_SIZE: usize = 32;
pub const RECORD_HEADER_SIZE: usize = 28;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    Entry = 1,
    HardState = 2,
}

/// A record to append, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: RecordKind,
    pub entry_type: u8,
    pub index: u64,
    pub term: u64,
    pub payload: &'a [u8],
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub kind: RecordKind,
    pub entry_type: u8,
    pub index: u64,
    pub term: u64,
    pub payload: Vec<u8>,
}

impl Record<'_> {
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_SIZE + self.payload.len()
    }
}

pub fn align_up(n: usize) -> usize {
    n.div_ceil(LOG_BLOCK_SIZE) * LOG_BLOCK_SIZE
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Writes a segment header into the first block of `out` (which must be zeroed). `window` is
/// how many commit groups may be in flight at once while the segment is written; recovery
/// needs it (see the log's module documentation).
///
/// Version 2 layout: magic (8), version (4), shard (4), first sequence (8), window (4),
/// CRC-32C of the bytes before it (4). Version 1 had no window (one group in flight) and its
/// CRC at 24.
pub fn encode_segment_header(out: &mut [u8], shard: u32, first_sequence: u64, window: u32) {
    assert!(
        window >= 1,
        "at least one group is in flight to write anything"
    );
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&shard.to_le_bytes());
    out[16..24].copy_from_slice(&first_sequence.to_le_bytes());
    out[24..28].copy_from_slice(&window.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// A checked segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: u32,
    pub first_sequence: u64,
    /// Commit groups that may have been in flight at once in this segment.
    pub window: u32,
}

pub fn decode_segment_header(block: &[u8]) -> Result<SegmentHeader, String> {
    if block.len() < 32 {
        return Err(format!("segment header is {} bytes long", block.len()));
    }
    if block[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let version = u32_at(block, 8);
    let (window, crc_at) = match version {
        1 => (1, 24),
        2 => (u32_at(block, 24), 28),
        _ => {
            return Err(format!(
                "segment format version {version}, this build reads 1 and 2"
            ))
        }
    };
    if crc32c::crc32c(&block[0..crc_at]) != u32_at(block, crc_at) {
        return Err("segment header checksum mismatch".into());
    }
    if window == 0 {
        return Err("segment header has a window of 0 groups".into());
    }
    Ok(SegmentHeader {
        shard: u32_at(block, 12),
        first_sequence: u64_at(block, 16),
        window,
    })
}

/// Bytes a group of these records occupies on disk, padding included.
pub fn group_size_on_disk(records: &[Record<'_>]) -> usize {
    align_up(GROUP_HEADER_SIZE + records.iter().map(Record::encoded_len).sum::<usize>())
}

/// Encodes one group into `out`, whose length is `group_size_on_disk(records)`. Every byte of
/// `out` is written, padding included, so `out` may hold anything before. `in_flight_before`
/// is how many earlier groups were not yet known durable when this one was begun (so every
/// group up to `sequence - 1 - in_flight_before` was): recovery uses it to tell damage to a
/// durable group from a torn write.
pub fn encode_group(out: &mut [u8], sequence: u64, in_flight_before: u32, records: &[Record<'_>]) {
    let mut at = GROUP_HEADER_SIZE;
    for record in records {
        assert!(
            record.payload.len() <= RECORD_PAYLOAD_SIZE_MAX,
            "oversized log record"
        );
        let start = at;
        out[at..at + 4].copy_from_slice(&(record.payload.len() as u32).to_le_bytes());
        out[at + 8] = record.kind as u8;
        out[at + 9] = record.entry_type;
        out[at + 10..at + 12].copy_from_slice(&[0, 0]);
        out[at + 12..at + 20].copy_from_slice(&record.index.to_le_bytes());
        out[at + 20..at + 28].copy_from_slice(&record.term.to_le_bytes());
        at += RECORD_HEADER_SIZE;
        out[at..at + record.payload.len()].copy_from_slice(record.payload);
        at += record.payload.len();
        let crc =
            crc32c::crc32c_append(crc32c::crc32c(&out[start + 8..at]), &out[start..start + 4]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    let records_len = at - GROUP_HEADER_SIZE;
    out[at..].fill(0);
    out[0..4].copy_from_slice(&GROUP_MAGIC);
    out[8..16].copy_from_slice(&sequence.to_le_bytes());
    out[16..20].copy_from_slice(&(records_len as u32).to_le_bytes());
    let records_crc = crc32c::crc32c(&out[GROUP_HEADER_SIZE..at]);
    out[20..24].copy_from_slice(&records_crc.to_le_bytes());
    out[24..28].copy_from_slice(&(records.len() as u32).to_le_bytes());
    out[28..32].copy_from_slice(&in_flight_before.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[8..32]);
    out[4..8].copy_from_slice(&header_crc.to_le_bytes());
}

/// A group header that passed its own checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupHeader {
    pub sequence: u64,
    pub records_len: usize,
    pub records_crc: u32,
    pub record_count: u32,
    /// Earlier groups not yet known durable when this one was begun (0 in logs written one
    /// group at a time, including every version 1 segment).
    pub in_flight_before: u32,
}

impl GroupHeader {
    /// The last group that was durable when this one was begun.
    pub fn durable_through(&self) -> u64 {
        self.sequence
            .saturating_sub(1)
            .saturating_sub(u64::from(self.in_flight_before))
    }

    pub fn size_on_disk(&self) -> usize {
        align_up(GROUP_HEADER_SIZE + self.records_len)
    }
}

/// Reads a group header; `None` when the bytes are not a checksum-valid header.
pub fn decode_group_header(bytes: &[u8]) -> Option<GroupHeader> {
    if bytes.len() < GROUP_HEADER_SIZE || bytes[0..4] != GROUP_MAGIC {
        return None;
    }
    if crc32c::crc32c(&bytes[8..32]) != u32_at(bytes, 4) {
        return None;
    }
    Some(GroupHeader {
        sequence: u64_at(bytes, 8),
        records_len: u32_at(bytes, 16) as usize,
        records_crc: u32_at(bytes, 20),
        record_count: u32_at(bytes, 24),
        in_flight_before: u32_at(bytes, 28),
    })
}

/// Decodes the records of a group whose header is valid. `Err` names what is wrong and the
/// offset within `records` where it was found.
pub fn decode_records(
    header: &GroupHeader,
    records: &[u8],
) -> Result<Vec<OwnedRecord>, (usize, String)> {
    if records.len() != header.records_len {
        return Err((
            records.len(),
            "group extends past the end of the file".into(),
        ));
    }
    if crc32c::crc32c(records) != header.records_crc {
        return Err((0, "group records checksum mismatch".into()));
    }
    let mut out = Vec::with_capacity(header.record_count as usize);
    let mut at = 0;
    while at < records.len() {
        if records.len() - at < RECORD_HEADER_SIZE {
            return Err((at, "record header cut short".into()));
        }
        let len = u32_at(records, at) as usize;
        if len > RECORD_PAYLOAD_SIZE_MAX || len > records.len() - at - RECORD_HEADER_SIZE {
            return Err((at, format!("record length {len} runs past its group")));
        }
        let end = at + RECORD_HEADER_SIZE + len;
        let crc =
            crc32c::crc32c_append(crc32c::crc32c(&records[at + 8..end]), &records[at..at + 4]);
        if crc != u32_at(records, at + 4) {
            return Err((at, "record checksum mismatch".into()));
        }
        let kind = match records[at + 8] {
            1 => RecordKind::Entry,
            2 => RecordKind::HardState,
            other => return Err((at, format!("unknown record kind {other}"))),
        };
        out.push(OwnedRecord {
            kind,
            entry_type: records[at + 9],
            index: u64_at(records, at + 12),
            term: u64_at(records, at + 20),
            payload: records[at + RECORD_HEADER_SIZE..end].to_vec(),
        });
        at = end;
    }
    if out.len() != header.record_count as usize {
        return Err((
            at,
            format!(
                "group holds {} records, header says {}",
                out.len(),
                header.record_count
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_round_trip() {
        let records = [
            Record {
                kind: RecordKind::Entry,
                entry_type: 0,
                index: 5,
                term: 2,
                payload: b"hello",
            },
            Record {
                kind: RecordKind::Entry,
                entry_type: 0,
                index: 6,
                term: 2,
                payload: b"",
            },
            Record {
                kind: RecordKind::HardState,
                entry_type: 0,
                index: 6,
                term: 2,
                payload: &1u64.to_le_bytes(),
            },
        ];
        let mut out = vec![0xAA; group_size_on_disk(&records)];
        assert_eq!(out.len(), LOG_BLOCK_SIZE);
        encode_group(&mut out, 9, 2, &records);
        let header = decode_group_header(&out).unwrap();
        assert_eq!(header.sequence, 9);
        assert_eq!(header.in_flight_before, 2);
        assert_eq!(header.durable_through(), 6);
        let decoded = decode_records(
            &header,
            &out[GROUP_HEADER_SIZE..GROUP_HEADER_SIZE + header.records_len],
        )
        .unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0].payload, b"hello");
        assert_eq!(decoded[2].kind, RecordKind::HardState);
        assert!(out[GROUP_HEADER_SIZE + header.records_len..]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn damage_is_detected() {
        let records = [Record {
            kind: RecordKind::Entry,
            entry_type: 0,
            index: 1,
            term: 1,
            payload: b"x",
        }];
        let mut out = vec![0; group_size_on_disk(&records)];
        encode_group(&mut out, 1, 0, &records);
        let used = GROUP_HEADER_SIZE + records[0].encoded_len();
        for i in 0..used * 8 {
            let mut damaged = out.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            let ok = decode_group_header(&damaged).is_some_and(|h| {
                damaged.len() >= GROUP_HEADER_SIZE + h.records_len
                    && decode_records(
                        &h,
                        &damaged[GROUP_HEADER_SIZE..GROUP_HEADER_SIZE + h.records_len],
                    )
                    .is_ok()
            });
            assert!(!ok, "flipped bit {i} went unnoticed");
        }
    }

    #[test]
    fn segment_header_round_trip() {
        let mut block = vec![0; SEGMENT_HEADER_SIZE];
        encode_segment_header(&mut block, 3, 77, 4);
        assert_eq!(
            decode_segment_header(&block).unwrap(),
            SegmentHeader {
                shard: 3,
                first_sequence: 77,
                window: 4,
            }
        );
        block[17] ^= 1;
        assert!(decode_segment_header(&block).is_err());
        block[17] ^= 1;
        block[25] ^= 1;
        assert!(
            decode_segment_header(&block).is_err(),
            "the window is checked"
        );
    }

    #[test]
    fn version_1_segments_are_read_with_a_window_of_one() {
        // As the previous build wrote them: no window, the CRC at 24.
        let mut block = vec![0; SEGMENT_HEADER_SIZE];
        block[0..8].copy_from_slice(&SEGMENT_MAGIC);
        block[8..12].copy_from_slice(&1u32.to_le_bytes());
        block[12..16].copy_from_slice(&5u32.to_le_bytes());
        block[16..24].copy_from_slice(&9u64.to_le_bytes());
        let crc = crc32c::crc32c(&block[0..24]);
        block[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_segment_header(&block).unwrap(),
            SegmentHeader {
                shard: 5,
                first_sequence: 9,
                window: 1,
            }
        );
    }
}
