//! Reading entries back from the segments, for a follower that needs entries the shard no
//! longer keeps in memory (Raft's storage fetches them asynchronously, ADR 0017).
//!
//! A segment holds commit groups in log order, and an index can appear more than once: a
//! follower's uncommitted entries may have been overwritten by a new leader's. The caller
//! says which (index, term) pairs are the log's entries now (`keep`); Raft's log matching
//! makes that pair name one entry. Those entries appear in the segments in index order (an
//! entry is appended only after the one before it is in place, in its final form), so a read
//! scans forward from the first segment that can hold the lowest index wanted, and a
//! [`ReadCursor`] lets the next read, which usually starts where this one stopped (a
//! follower catching up), begin where this one stopped rather than at the segment's start.

use super::format::{decode_group_header, decode_records, OwnedRecord, RecordKind};
use super::format::{GROUP_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use super::{Log, LogDisk, LogError, LogFile};

/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 1024 * 1024;

/// Where the last read stopped: the group at `offset` of `segment` is the first that may
/// hold the log's entry `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadCursor {
    segment: String,
    offset: u64,
    index: u64,
}

impl<D: LogDisk> Log<D> {
    /// The log's entry records from index `low` up to `high` (exclusive) that `keep`
    /// accepts, in index order, stopping once their payloads exceed `max_bytes` (at least
    /// one is returned if any is found). Fewer than asked means the segments do not hold
    /// the rest.
    pub async fn read_entries(
        &mut self,
        low: u64,
        high: u64,
        max_bytes: u64,
        keep: impl Fn(u64, u64) -> bool,
    ) -> Result<Vec<OwnedRecord>, LogError> {
        let mut out: Vec<OwnedRecord> = Vec::new();
        let mut next = low;
        let mut bytes = 0u64;
        // The first segment that may hold `low` (segments before it end below it).
        let Some(first) = self.segments.iter().position(|s| s.last_index >= low) else {
            return Ok(out);
        };
        let (mut at_segment, mut offset) = match &self.read_cursor {
            Some(cursor) if cursor.index <= low => match self
                .segments
                .iter()
                .position(|s| s.name == cursor.segment)
                .filter(|&i| i >= first)
            {
                Some(i) => (i, cursor.offset),
                None => (first, SEGMENT_HEADER_SIZE as u64),
            },
            _ => (first, SEGMENT_HEADER_SIZE as u64),
        };
        while at_segment < self.segments.len() && next < high {
            let name = self.segments[at_segment].name.clone();
            let (file, size, path) = self.open_existing(&name).await?;
            // `buffer` holds the file from `buffer_at` on.
            let mut buffer: Vec<u8> = Vec::new();
            let mut buffer_at = offset;
            loop {
                if next >= high || max_bytes > 0 && bytes >= max_bytes && !out.is_empty() {
                    self.read_cursor = Some(ReadCursor {
                        segment: name,
                        offset,
                        index: next,
                    });
                    return Ok(out);
                }
                let rel = (offset - buffer_at) as usize;
                if rel + GROUP_HEADER_SIZE > buffer.len() && offset < size {
                    buffer = read_from(&file, offset, READ_CHUNK, size, &path).await?;
                    buffer_at = offset;
                    continue;
                }
                let Some(header) = buffer.get(rel..).and_then(decode_group_header) else {
                    break; // the end of what was written
                };
                let len = header.size_on_disk();
                if rel + len > buffer.len() {
                    if offset + len as u64 > size {
                        break; // a group cut short: the log's torn tail, never durable
                    }
                    buffer = read_from(&file, offset, len.max(READ_CHUNK), size, &path).await?;
                    buffer_at = offset;
                    continue;
                }
                let start = rel + GROUP_HEADER_SIZE;
                let records = decode_records(&header, &buffer[start..start + header.records_len])
                    .map_err(|(at, detail)| LogError::Corrupt {
                    path: path.clone(),
                    offset: offset + (GROUP_HEADER_SIZE + at) as u64,
                    detail,
                })?;
                let mut stopped = false;
                for record in records {
                    if record.kind != RecordKind::Entry || record.index != next {
                        continue;
                    }
                    // This group may hold the next entry (in its current form, or an older
                    // one): a read that stops here resumes at it.
                    if next >= high || max_bytes > 0 && bytes >= max_bytes && !out.is_empty() {
                        stopped = true;
                        break;
                    }
                    if !keep(record.index, record.term) {
                        continue;
                    }
                    bytes += record.payload.len() as u64;
                    next += 1;
                    out.push(record);
                }
                if stopped {
                    // The rest of this group is still to be read: the cursor stays on it.
                    self.read_cursor = Some(ReadCursor {
                        segment: name,
                        offset,
                        index: next,
                    });
                    return Ok(out);
                }
                offset += len as u64;
            }
            at_segment += 1;
            offset = SEGMENT_HEADER_SIZE as u64;
        }
        self.read_cursor = None;
        Ok(out)
    }
}

/// Reads up to `want` bytes of `file` from `at` (block-aligned), not past `size`.
async fn read_from<F: LogFile>(
    file: &F,
    at: u64,
    want: usize,
    size: u64,
    path: &str,
) -> Result<Vec<u8>, LogError> {
    let len = (want as u64).min(size.saturating_sub(at)) as usize;
    file.read_at(at, len)
        .await
        .map_err(|e| LogError::io("read", path.to_string(), e))
}
