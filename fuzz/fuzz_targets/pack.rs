#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = volback::format::pack::parse_pack("fuzz", data, None) {
        for e in entries {
            let start = e.offset as usize;
            if let Some(stored) = data.get(start..start + e.stored_len as usize) {
                let _ = volback::format::chunk::decode_chunk("fuzz", start as u64, &e.id, e.compression, e.raw_len, stored, volback::crypto::ChunkKeys::PLAIN);
            }
        }
    }
});
