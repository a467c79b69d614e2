//! Named maximums of the protocol. Every one is checked by the decoder and has a typed error.

/// Largest key, in bytes.
pub const KEY_SIZE_MAX: usize = 1024;
/// Largest value, in bytes.
pub const VALUE_SIZE_MAX: usize = 16 * 1024 * 1024;
/// Most keys in one MGET or pairs in one MPUT.
pub const BATCH_COUNT_MAX: usize = 10_000;
/// Most pairs one SCAN reply may carry.
pub const SCAN_LIMIT_MAX: u32 = 10_000;
/// Largest document command or document reply (JSON text); a reply that would be larger
/// is cut into cursor pages or refused with TOO_LARGE.
pub const DOCUMENT_SIZE_MAX: usize = 48 * 1024 * 1024;
/// Largest frame body. A body larger than this closes the connection after a TOO_LARGE reply.
pub const FRAME_BODY_SIZE_MAX: usize = 64 * 1024 * 1024;
/// Size of the fixed frame header.
pub const FRAME_HEADER_SIZE: usize = 24;
/// Longest error message the server sends; longer ones are cut.
pub const ERROR_MESSAGE_SIZE_MAX: usize = 4096;

/// A byte limit as messages give it: `1024-byte`, or `16777216-byte (16 MiB)` when it is a
/// whole number of KiB or MiB, so a reader need not count digits.
pub fn bytes_limit(max: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if max >= MIB && max.is_multiple_of(MIB) {
        format!("{max}-byte ({} MiB)", max / MIB)
    } else if max >= 64 * 1024 && max.is_multiple_of(1024) {
        format!("{max}-byte ({} KiB)", max / 1024)
    } else {
        format!("{max}-byte")
    }
}

// One largest key and one largest value must fit in a frame, with room for their lengths.
const _: () = assert!(KEY_SIZE_MAX + VALUE_SIZE_MAX + 64 <= FRAME_BODY_SIZE_MAX);
const _: () = assert!(FRAME_BODY_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(DOCUMENT_SIZE_MAX + 64 <= FRAME_BODY_SIZE_MAX);

#[cfg(test)]
mod tests {
    #[test]
    fn byte_limits_name_their_unit() {
        assert_eq!(super::bytes_limit(1024), "1024-byte");
        assert_eq!(super::bytes_limit(16 << 20), "16777216-byte (16 MiB)");
        assert_eq!(super::bytes_limit(64 << 10), "65536-byte (64 KiB)");
    }
}
