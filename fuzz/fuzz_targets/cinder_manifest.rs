#![no_main]
use libfuzzer_sys::fuzz_target;

// Cinder's chunked-driver manifests come from a store volback does not control: any bytes must
// give a manifest whose numbers are checked, or a typed error; never a panic.
fuzz_target!(|data: &[u8]| {
    if let Ok(m) = volback::cinder::metadata::CinderManifest::decode("fuzz_metadata", data) {
        let end = m.data_end();
        for o in &m.objects {
            assert!(o.offset.checked_add(o.length).is_some_and(|e| e <= end));
            assert!(o.length > 0);
        }
    }
});
