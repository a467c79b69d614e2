//! Files kvsd reads: the users file's lines and the TOML configuration.
#![no_main]

use kvs_wire::auth::parse_user_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        let _ = parse_user_line(line);
    }
    let _ = kvs_shards::config::Config::parse_file_text(text);
});
