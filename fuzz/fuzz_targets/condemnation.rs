#![no_main]
use libfuzzer_sys::fuzz_target;

// Condemnation records are read by every backup before it deduplicates: a damaged one must be
// an error naming it, never a panic.
fuzz_target!(|data: &[u8]| {
    let _ = volback::format::condemnation::Condemnation::decode("gc/condemned-0-fuzz", data);
});
