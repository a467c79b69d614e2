//! The Redis protocol: commands as kvsd reads them, replies as clients read them.
#![no_main]

use kvs_wire::resp::{parse_command, parse_reply, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match parse_command(&data[at..]) {
            Ok(Parsed::Command { len, .. }) if len > 0 => at += len,
            _ => break,
        }
    }
    let _ = parse_reply(data);
});
