#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = volback::format::config::ContainerConfig::decode(data) {
        // A config that decodes is valid, and its own encoding decodes to the same settings.
        let again = volback::format::config::ContainerConfig::decode(&c.encode().unwrap()).unwrap();
        assert_eq!(again.chunker, c.chunker);
    }
});
