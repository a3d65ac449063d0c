#![no_main]
use libfuzzer_sys::fuzz_target;

// Resume hints are read by an incremental before it deduplicates: a damaged one must be an
// error naming it (the backup then ignores the hint), never a panic.
fuzz_target!(|data: &[u8]| {
    let _ = volback::format::resume::Resume::decode("resume/fuzz", data);
});
