#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = volback::container::url::ContainerUrl::parse(text);
        let _ = volback::store::validate_key(text);
        let _ = volback::ids::validate_id("fuzz", text);
    }
});
