#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = volback::format::manifest::Manifest::decode("fuzz", data) {
        let _ = m.meta_ids("fuzz");
    }
});
