//! Tests of the RESP listener's rendering and helpers.

use super::*;
use crate::resp_reply::render;
use crate::shard::ShardReply;
use kvs_core::state::CommandResult;

#[test]
fn glob_patterns() {
    assert!(glob_match(b"*", b"anything"));
    assert!(glob_match(b"user:*", b"user:42"));
    assert!(!glob_match(b"user:*", b"usr:42"));
    assert!(glob_match(b"h?llo", b"hello"));
    assert!(glob_match(b"h[ae]llo", b"hallo"));
    assert!(!glob_match(b"h[ae]llo", b"hillo"));
    assert!(glob_match(b"h[^e]llo", b"hallo"));
    assert!(!glob_match(b"h[^e]llo", b"hello"));
    assert!(glob_match(b"h[a-c]llo", b"hbllo"));
    assert!(glob_match(b"a\\*b", b"a*b"));
    assert!(!glob_match(b"a\\*b", b"axb"));
    assert!(glob_match(b"*a*b*", b"xxaxxbxx"));
    assert!(!glob_match(b"*a*b", b"xxaxxbxxc"));
    assert!(glob_match(b"", b""));
    assert!(!glob_match(b"", b"x"));
}

#[test]
fn scan_cursors_are_the_nodes_and_an_unknown_one_starts_over() {
    use crate::scan_cursors::{ScanCursors, SCAN_CURSORS_MAX};
    let cursors = ScanCursors::new(7);
    let cursor = cursors.remember(b"next".to_vec());
    assert!(cursor > 0);
    assert_eq!(cursors.resume(0), Vec::<u8>::new());
    assert_eq!(cursors.resume(cursor), b"next".to_vec());
    assert_eq!(
        cursors.resume(cursor),
        b"next".to_vec(),
        "a page may be asked again"
    );
    assert_eq!(
        cursors.resume(cursor + 999),
        Vec::<u8>::new(),
        "unknown: start over"
    );
    for i in 0..SCAN_CURSORS_MAX {
        cursors.remember(format!("k{i}").into_bytes());
    }
    assert_eq!(
        cursors.resume(cursor),
        Vec::<u8>::new(),
        "the oldest is forgotten"
    );
}

#[test]
fn renders() {
    use kvs_core::state::Versioned;
    let get = render(
        RespRender::Get,
        ShardReply::Value(Some(Versioned {
            version: 1,
            value: b"v".to_vec(),
        })),
        false,
    );
    assert_eq!(get, b"$1\r\nv\r\n");
    assert_eq!(
        render(RespRender::Get, ShardReply::Value(None), false),
        b"$-1\r\n"
    );
    assert_eq!(
        render(RespRender::Strlen, ShardReply::Value(None), false),
        b":0\r\n"
    );
    let skipped = render(
        RespRender::SetConditional,
        ShardReply::Written(CommandResult::Skipped),
        true,
    );
    assert_eq!(skipped, b"_\r\n", "RESP3 null");
    let refused = render(
        RespRender::Integer,
        ShardReply::Written(CommandResult::Refused {
            reason: "no".into(),
        }),
        false,
    );
    assert_eq!(refused, b"-ERR no\r\n");
}
