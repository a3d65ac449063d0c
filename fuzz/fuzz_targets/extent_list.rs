#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = volback::format::extent_list::ExtentListReader::new();
    let mut out = Vec::new();
    let (a, b) = data.split_at(data.len() / 2);
    if r.push("fuzz", a, &mut out).is_ok() && r.push("fuzz", b, &mut out).is_ok() {
        let _ = r.finish("fuzz");
    }
});
