//! Documents in the binary encoding the store keeps (and logged document commands).
#![no_main]

use kvs_core::doc::binary::{from_bytes, to_bytes};
use kvs_core::doc::command::DocCommand;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = from_bytes(data) {
        // What decodes encodes again to something that decodes to the same.
        let again = from_bytes(&to_bytes(&value)).expect("an encoding decodes");
        assert_eq!(again, value);
    }
    let _ = DocCommand::decode(data);
});
