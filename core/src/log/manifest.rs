//! The log's manifest: which segments the log holds and how long each was made, so that a
//! segment deleted or cut short is found at start-up instead of silently taking the
//! acknowledged writes in it along (ADR 0013).
//!
//! The file [`MANIFEST_NAME`] in the shard's directory has two slots of [`SLOT_SIZE`] bytes,
//! written in turn. Each write is whole and fdatasynced *before* the change it records takes
//! effect: a new segment gets no commit group until it is listed, and a segment is unlisted
//! before it is deleted. So the manifest never lists less than the log holds. The valid slot
//! with the higher sequence is the manifest; a write torn by a crash leaves the other slot.
//!
//! Slot layout (integers little-endian):
//!
//! | bytes          | field                                                        |
//! |----------------|--------------------------------------------------------------|
//! | 0..8           | magic `KVSLOGM1`                                             |
//! | 8..16          | sequence of this write (1, 2, ...): the higher one is newer   |
//! | 16..20         | shard                                                        |
//! | 20..24         | segment count n (at most [`SEGMENTS_MAX`])                   |
//! | 24..24+16n     | per segment: its first group's sequence, the size it was made |
//! | 24+16n..+4     | crc32c of the bytes before it                                |
//! | rest           | zero                                                         |

use super::format::SEGMENT_HEADER_SIZE;

/// The manifest's file name (not a segment name, so segment listings pass over it).
pub const MANIFEST_NAME: &str = "log.manifest";
/// Bytes per slot: a multiple of the direct-I/O block.
pub const SLOT_SIZE: usize = 32 * 1024;
/// Segments one slot can list: at the 64 MiB segment size, 127 GiB of log not yet covered
/// by a checkpoint, far beyond what the checkpoint policy lets accumulate.
pub const SEGMENTS_MAX: usize = (SLOT_SIZE - 24 - 4) / 16;

const MAGIC: &[u8; 8] = b"KVSLOGM1";

/// A segment as the manifest lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    /// The sequence of its first commit group (its file name says the same).
    pub first_sequence: u64,
    /// The size it was made when created (preallocated): it may grow, never shrink.
    pub size: u64,
}

/// The segments the log holds, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Which write this is; the slot is `sequence % 2`.
    pub sequence: u64,
    pub shard: u32,
    pub segments: Vec<Listed>,
}

impl Manifest {
    /// Encodes the manifest into `slot` (SLOT_SIZE bytes).
    pub fn encode(&self, slot: &mut [u8]) {
        assert_eq!(slot.len(), SLOT_SIZE);
        assert!(
            self.segments.len() <= SEGMENTS_MAX,
            "a log of {} segments does not fit the manifest",
            self.segments.len()
        );
        assert!(
            self.segments
                .windows(2)
                .all(|w| w[0].first_sequence < w[1].first_sequence),
            "segments are listed oldest first"
        );
        slot.fill(0);
        slot[0..8].copy_from_slice(MAGIC);
        slot[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        slot[16..20].copy_from_slice(&self.shard.to_le_bytes());
        slot[20..24].copy_from_slice(&(self.segments.len() as u32).to_le_bytes());
        let mut at = 24;
        for segment in &self.segments {
            slot[at..at + 8].copy_from_slice(&segment.first_sequence.to_le_bytes());
            slot[at + 8..at + 16].copy_from_slice(&segment.size.to_le_bytes());
            at += 16;
        }
        let crc = crc32c::crc32c(&slot[..at]);
        slot[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one slot; an error says why it is not a valid manifest.
    pub fn decode(slot: &[u8]) -> Result<Manifest, String> {
        if slot.len() < SLOT_SIZE {
            return Err(format!(
                "slot of {} bytes, expected {SLOT_SIZE}",
                slot.len()
            ));
        }
        if &slot[0..8] != MAGIC {
            return Err("no manifest magic".into());
        }
        let u64_at = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().expect("8"));
        let u32_at = |at: usize| u32::from_le_bytes(slot[at..at + 4].try_into().expect("4"));
        let count = u32_at(20) as usize;
        if count > SEGMENTS_MAX {
            return Err(format!("{count} segments, more than a slot holds"));
        }
        let end = 24 + 16 * count;
        if crc32c::crc32c(&slot[..end]) != u32_at(end) {
            return Err("checksum mismatch".into());
        }
        let segments: Vec<Listed> = (0..count)
            .map(|i| Listed {
                first_sequence: u64_at(24 + 16 * i),
                size: u64_at(32 + 16 * i),
            })
            .collect();
        if segments
            .windows(2)
            .any(|w| w[0].first_sequence >= w[1].first_sequence)
            || segments.iter().any(|s| s.size < SEGMENT_HEADER_SIZE as u64)
        {
            return Err("segment list out of order or sizes below a header".into());
        }
        Ok(Manifest {
            sequence: u64_at(8),
            shard: u32_at(16),
            segments,
        })
    }

    /// The newest valid slot of a manifest file's bytes; an error when neither slot is valid
    /// (the reasons for both).
    pub fn decode_file(bytes: &[u8]) -> Result<Manifest, String> {
        let slot = |i: usize| {
            bytes
                .get(i * SLOT_SIZE..(i + 1) * SLOT_SIZE)
                .ok_or_else(|| format!("file of {} bytes has no slot {i}", bytes.len()))
                .and_then(Manifest::decode)
        };
        match (slot(0), slot(1)) {
            (Ok(a), Ok(b)) => Ok(if a.sequence >= b.sequence { a } else { b }),
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => Ok(m),
            (Err(a), Err(b)) => Err(format!("no valid slot (first: {a}; second: {b})")),
        }
    }

    /// Byte offset of the slot the next write (`sequence + 1`) goes to.
    pub fn next_slot_offset(&self) -> u64 {
        ((self.sequence + 1) % 2) * SLOT_SIZE as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sequence: u64) -> Manifest {
        Manifest {
            sequence,
            shard: 3,
            segments: vec![
                Listed {
                    first_sequence: 1,
                    size: 1 << 20,
                },
                Listed {
                    first_sequence: 40,
                    size: 1 << 20,
                },
            ],
        }
    }

    #[test]
    fn slots_round_trip_and_the_newest_valid_one_wins() {
        let mut file = vec![0u8; 2 * SLOT_SIZE];
        let (old, new) = (sample(6), sample(7));
        old.encode(&mut file[..SLOT_SIZE]);
        assert_eq!(old.next_slot_offset(), SLOT_SIZE as u64);
        new.encode(&mut file[SLOT_SIZE..]);
        assert_eq!(Manifest::decode_file(&file), Ok(new.clone()));
        // A torn write of the newer slot leaves the older one.
        file[SLOT_SIZE + 30] ^= 1;
        assert_eq!(Manifest::decode_file(&file), Ok(old));
        file[30] ^= 1;
        let error = Manifest::decode_file(&file).unwrap_err();
        assert!(error.contains("checksum"), "{error}");
        assert!(Manifest::decode_file(&file[..100]).is_err());
    }

    #[test]
    fn a_slot_that_lies_about_its_count_is_refused() {
        let mut slot = vec![0u8; SLOT_SIZE];
        sample(1).encode(&mut slot);
        slot[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Manifest::decode(&slot).is_err());
        slot[20..24].copy_from_slice(&5u32.to_le_bytes());
        assert!(Manifest::decode(&slot).is_err());
    }
}
