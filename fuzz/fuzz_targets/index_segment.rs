#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = volback::format::index_segment::decode_segment("fuzz", data);
});
