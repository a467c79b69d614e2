//! RESP2, the Redis protocol: a sans-IO parser for the commands clients send, and encoders
//! for the replies. kvsd's `--resp-listen` speaks it so that redis-cli, redis-benchmark and
//! Redis client libraries work against kvs.
//!
//! A command is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or an inline
//! line (`GET k\r\n`), as telnet users and some tools send.

use crate::limits::{KEY_SIZE_MAX, VALUE_SIZE_MAX};

/// Most arguments one command may have.
pub const RESP_ARGUMENTS_MAX: usize = 1024 * 1024;
/// Longest bulk string: a value plus room for nothing else.
pub const RESP_BULK_SIZE_MAX: usize = VALUE_SIZE_MAX;
/// Longest inline command line or `*`/`$` header line.
pub const RESP_LINE_SIZE_MAX: usize = KEY_SIZE_MAX + 1024;
/// Longest bulk string that is read past (and refused with an error naming the limit)
/// rather than ending the connection: Redis's own bulk limit (`proto-max-bulk-len`).
pub const RESP_DISCARD_SIZE_MAX: usize = 512 * 1024 * 1024;

/// What the front of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed: the command has at least `declared` bytes, as far as the
    /// headers received so far say.
    Incomplete { declared: usize },
    /// A whole command of `len` bytes; `args` is empty for a blank inline line.
    Command { args: Vec<Vec<u8>>, len: usize },
    /// A command with a bulk string of `len` bytes, over [`RESP_BULK_SIZE_MAX`]: the first
    /// `consumed` bytes of the buffer are its start; `discard` skips the rest as it arrives.
    /// The client is told the limit, and the connection goes on: a client still writing the
    /// value would otherwise see a broken pipe, not the reason.
    TooLarge {
        len: usize,
        consumed: usize,
        discard: Discard,
    },
}

/// The rest of a command being skipped: the unread bytes of its current bulk string
/// (CRLF included), then `args_left` more bulk strings, header and all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discard {
    bulk_left: usize,
    args_left: usize,
}

impl Discard {
    /// Skips what it can of `buf`; returns the bytes skipped and whether the command is
    /// over. An error is a stream that is not RESP.
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, bool), RespError> {
        let mut at = 0;
        loop {
            let take = self.bulk_left.min(buf.len() - at);
            at += take;
            self.bulk_left -= take;
            if self.bulk_left > 0 {
                return Ok((at, false));
            }
            if self.args_left == 0 {
                return Ok((at, true));
            }
            if at >= buf.len() {
                return Ok((at, false));
            }
            if buf[at] != b'$' {
                return Err(RespError(format!(
                    "expected '$', got '{}'",
                    buf[at] as char
                )));
            }
            let Some(end) = find_line(buf, at)? else {
                return Ok((at, false));
            };
            let header = buf
                .get(at + 1..end)
                .and_then(|line| line.strip_suffix(b"\r"))
                .ok_or_else(|| RespError("expected CRLF".into()))?;
            let len = parse_number(header, "bulk length")?;
            if !(0..=RESP_DISCARD_SIZE_MAX as i64).contains(&len) {
                return Err(RespError("invalid bulk length".into()));
            }
            at = end + 1;
            self.bulk_left = len as usize + 2;
            self.args_left -= 1;
        }
    }
}

/// The stream is not valid RESP: reply with the error and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct RespError(pub String);

fn find_line(buf: &[u8], from: usize) -> Result<Option<usize>, RespError> {
    let window = &buf[from..buf.len().min(from + RESP_LINE_SIZE_MAX)];
    match window.iter().position(|&b| b == b'\n') {
        Some(at) => Ok(Some(from + at)),
        None if window.len() >= RESP_LINE_SIZE_MAX => {
            Err(RespError("too big inline request".into()))
        }
        None => Ok(None),
    }
}

fn parse_number(line: &[u8], what: &str) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| RespError(format!("invalid {what}")))
}

/// Parses the command at the front of `buf`. Never panics, whatever the bytes.
pub fn parse_command(buf: &[u8]) -> Result<Parsed, RespError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete {
            declared: buf.len() + 1,
        });
    }
    if buf[0] != b'*' {
        let Some(end) = find_line(buf, 0)? else {
            return Ok(Parsed::Incomplete {
                declared: buf.len() + 1,
            });
        };
        let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
        let args = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        return Ok(Parsed::Command { args, len: end + 1 });
    }
    let Some(end) = find_line(buf, 0)? else {
        return Ok(Parsed::Incomplete {
            declared: buf.len() + 1,
        });
    };
    let header = buf
        .get(1..end)
        .and_then(|line| line.strip_suffix(b"\r"))
        .ok_or_else(|| RespError("expected CRLF".into()))?;
    let count = parse_number(header, "multibulk length")?;
    if count > RESP_ARGUMENTS_MAX as i64 {
        return Err(RespError("invalid multibulk length".into()));
    }
    let count = count.max(0) as usize;
    let mut at = end + 1;
    let mut args = Vec::with_capacity(count.min(1024));
    for arg in 0..count {
        if at >= buf.len() {
            return Ok(Parsed::Incomplete {
                declared: buf.len() + 1,
            });
        }
        if buf[at] != b'$' {
            return Err(RespError(format!(
                "expected '$', got '{}'",
                buf[at] as char
            )));
        }
        let Some(end) = find_line(buf, at)? else {
            return Ok(Parsed::Incomplete {
                declared: buf.len() + 1,
            });
        };
        let header = buf
            .get(at + 1..end)
            .and_then(|line| line.strip_suffix(b"\r"))
            .ok_or_else(|| RespError("expected CRLF".into()))?;
        let len = parse_number(header, "bulk length")?;
        if len > RESP_BULK_SIZE_MAX as i64 && len <= RESP_DISCARD_SIZE_MAX as i64 {
            return Ok(Parsed::TooLarge {
                len: len as usize,
                consumed: end + 1,
                discard: Discard {
                    bulk_left: len as usize + 2,
                    args_left: count - arg - 1,
                },
            });
        }
        if !(0..=RESP_BULK_SIZE_MAX as i64).contains(&len) {
            return Err(RespError("invalid bulk length".into()));
        }
        let start = end + 1;
        let stop = start + len as usize;
        if buf.len() < stop + 2 {
            return Ok(Parsed::Incomplete { declared: stop + 2 });
        }
        if &buf[stop..stop + 2] != b"\r\n" {
            return Err(RespError("bulk string not followed by CRLF".into()));
        }
        // One byte of room: applying a key puts the store's key-space byte in front of it,
        // which without the room reallocated every key of every write.
        let mut arg = Vec::with_capacity(stop - start + 1);
        arg.extend_from_slice(&buf[start..stop]);
        args.push(arg);
        at = stop + 2;
    }
    Ok(Parsed::Command { args, len: at })
}

/// A simple-string reply, such as `+OK`.
pub fn simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An error reply. `message` starts with the error kind, such as `ERR` or `WRONGTYPE`.
pub fn error(out: &mut Vec<u8>, message: &str) {
    out.push(b'-');
    // A reply line must not contain CR or LF.
    out.extend(
        message
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

pub fn integer(out: &mut Vec<u8>, value: i64) {
    out.push(b':');
    decimal(out, value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `value` in decimal, without allocating (replies are written on the hot path).
fn decimal(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

pub fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 16);
    out.push(b'$');
    decimal(out, bytes.len() as i64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// The null bulk string: a missing value.
pub fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

pub fn array_header(out: &mut Vec<u8>, len: usize) {
    out.push(b'*');
    decimal(out, len as i64);
    out.extend_from_slice(b"\r\n");
}

/// A reply read back by a RESP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Parses the reply at the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// reply and its length. Used by clients (kvs-bench's RESP mode and tests).
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some(end) = find_line(buf, 0)? else {
        return Ok(None);
    };
    let line = buf
        .get(1..end)
        .and_then(|line| line.strip_suffix(b"\r"))
        .ok_or_else(|| RespError("expected a reply line ending in CRLF".into()))?;
    let text = || String::from_utf8_lossy(line).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()), end + 1))),
        b'-' => Ok(Some((Reply::Error(text()), end + 1))),
        b':' => Ok(Some((
            Reply::Integer(parse_number(line, "integer")?),
            end + 1,
        ))),
        b'$' => {
            let len = parse_number(line, "bulk length")?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), end + 1)));
            }
            if len > RESP_BULK_SIZE_MAX as i64 {
                return Err(RespError("invalid bulk length".into()));
            }
            let start = end + 1;
            let stop = start + len as usize;
            if buf.len() < stop + 2 {
                return Ok(None);
            }
            Ok(Some((
                Reply::Bulk(Some(buf[start..stop].to_vec())),
                stop + 2,
            )))
        }
        b'*' => {
            let count = parse_number(line, "multibulk length")?;
            if count < 0 {
                return Ok(Some((Reply::Array(None), end + 1)));
            }
            if count > RESP_ARGUMENTS_MAX as i64 {
                return Err(RespError("invalid multibulk length".into()));
            }
            let mut at = end + 1;
            let mut items = Vec::with_capacity((count as usize).min(1024));
            for _ in 0..count {
                match parse_reply(&buf[at..])? {
                    Some((item, len)) => {
                        items.push(item);
                        at += len;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(RespError(format!("unknown reply type '{}'", other as char))),
    }
}

/// Encodes a command as an array of bulk strings.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    array_header(out, args.len());
    for arg in args {
        bulk(out, arg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn arrays_and_inline_commands() {
        let mut bytes = Vec::new();
        command(&mut bytes, &[b"SET", b"k", b"v\r\nwith crlf"]);
        for cut in 0..bytes.len() {
            // What an incomplete command declares is more than it has, never more than it is.
            match parse_command(&bytes[..cut]) {
                Ok(Parsed::Incomplete { declared }) => {
                    assert!(declared > cut && declared <= bytes.len(), "cut at {cut}")
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        let Parsed::Command { args, len } = parse_command(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(len, bytes.len());
        assert_eq!(
            args,
            vec![b"SET".to_vec(), b"k".to_vec(), b"v\r\nwith crlf".to_vec()]
        );
        let Parsed::Command { args, len } = parse_command(b"get  key\r\nrest").unwrap() else {
            panic!()
        };
        assert_eq!((args, len), (vec![b"get".to_vec(), b"key".to_vec()], 10));
        assert_eq!(
            parse_command(b"\r\n").unwrap(),
            Parsed::Command {
                args: vec![],
                len: 2
            }
        );
    }

    #[test]
    fn bad_input_is_a_protocol_error() {
        assert!(parse_command(b"*2\r\n+OK\r\n").is_err());
        assert!(parse_command(b"*x\r\n").is_err());
        assert!(parse_command(b"*1\r\n$-5\r\n").is_err());
        assert!(parse_command(b"*1\r\n$99999999999\r\n").is_err());
        assert!(parse_command(b"*1\r\n$1\r\nab\r\n").is_err());
        assert!(parse_command(&vec![b'a'; RESP_LINE_SIZE_MAX + 1]).is_err());
    }

    #[test]
    fn a_bulk_over_the_limit_is_skipped_to_the_next_command() {
        let big = RESP_BULK_SIZE_MAX + 1;
        let mut stream = format!("*4\r\n$3\r\nSET\r\n$1\r\nk\r\n${big}\r\n").into_bytes();
        let head = stream.len();
        stream.resize(head + big, b'x');
        stream.extend_from_slice(b"\r\n$2\r\nEX\r\n");
        let end_of_command = stream.len();
        command(&mut stream, &[b"PING"]);
        let Parsed::TooLarge {
            len,
            consumed,
            mut discard,
        } = parse_command(&stream).unwrap()
        else {
            panic!("expected TooLarge")
        };
        assert_eq!((len, consumed), (big, head));
        // Fed in pieces, as a socket delivers it.
        let mut at = consumed;
        loop {
            let piece = &stream[at..(at + 100_003).min(stream.len())];
            let (skipped, done) = discard.advance(piece).unwrap();
            at += skipped;
            if done {
                break;
            }
            assert!(skipped > 0 || piece.is_empty(), "progress at {at}");
        }
        assert_eq!(at, end_of_command);
        assert!(matches!(
            parse_command(&stream[at..]),
            Ok(Parsed::Command { ref args, .. }) if args == &[b"PING".to_vec()]
        ));
        // Beyond what is read past, the stream is refused as before.
        let huge = format!("*1\r\n${}\r\n", RESP_DISCARD_SIZE_MAX + 1);
        assert!(parse_command(huge.as_bytes()).is_err());
    }

    #[test]
    fn a_reply_that_is_only_a_line_end_is_an_error() {
        // Found by parsers_never_panic: the type byte was the line end itself.
        assert!(parse_reply(b"\n").is_err());
        assert!(parse_reply(b"\r\n").is_err());
    }

    #[test]
    fn replies_round_trip() {
        let mut out = Vec::new();
        simple(&mut out, "OK");
        error(&mut out, "ERR bad\r\nthing");
        integer(&mut out, -42);
        bulk(&mut out, b"hi");
        null(&mut out);
        array_header(&mut out, 2);
        bulk(&mut out, b"a");
        integer(&mut out, 1);
        let mut at = 0;
        let mut replies = Vec::new();
        while let Some((reply, len)) = parse_reply(&out[at..]).unwrap() {
            replies.push(reply);
            at += len;
        }
        assert_eq!(at, out.len());
        assert_eq!(
            replies,
            vec![
                Reply::Simple("OK".into()),
                Reply::Error("ERR bad  thing".into()),
                Reply::Integer(-42),
                Reply::Bulk(Some(b"hi".to_vec())),
                Reply::Bulk(None),
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"a".to_vec())),
                    Reply::Integer(1)
                ])),
            ]
        );
    }

    /// Bytes drawn mostly from RESP's own alphabet, so framing edge cases come up often.
    fn resp_like_bytes() -> impl Strategy<Value = Vec<u8>> {
        let alphabet: Vec<u8> = b"*$+-:_%\r\n0123456789-aZ ".to_vec();
        proptest::collection::vec(proptest::sample::select(alphabet), 0..64)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn parsers_never_panic_on_resp_like_bytes(bytes in resp_like_bytes()) {
            let _ = parse_command(&bytes);
            let _ = parse_reply(&bytes);
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_command(&bytes);
            let _ = parse_reply(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_near_valid_input(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..5),
            flip in any::<usize>(), byte in any::<u8>()) {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let mut bytes = Vec::new();
            command(&mut bytes, &refs);
            let at = flip % bytes.len();
            bytes[at] = byte;
            let _ = parse_command(&bytes);
        }
    }
}
