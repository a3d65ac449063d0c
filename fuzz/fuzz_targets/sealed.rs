#![no_main]
//! An encrypted container's decoders, driven past authentication: the input is sealed with a
//! fixed key first (as a manifest, as a pack table), so the parsers behind the seal see it.
use libfuzzer_sys::fuzz_target;
use volback::crypto::Sealer;
use volback::format::{config::StoredConfig, manifest::Manifest, pack, sealed};

fuzz_target!(|data: &[u8]| {
    let s = Sealer::new(&[7; 32]);
    // The envelope itself, and the config of either version.
    let _ = sealed::open_object(&s, "fuzz", "backups/x", data);
    let _ = sealed::check_envelope("fuzz", data);
    let _ = StoredConfig::decode(data);
    // A sealed manifest whose plaintext is the input.
    let m = sealed::seal_object(&s, "backups/x", data);
    let plain = sealed::open_object(&s, "fuzz", "backups/x", &m).unwrap();
    assert_eq!(plain, data);
    let _ = Manifest::decode("fuzz", &plain);
    // A version-2 pack whose table plaintext is the input: chunk space of the first byte's
    // size, then the sealed table and a trailer that matches it.
    let (space, table) = data.split_first().map_or((0, &[][..]), |(n, t)| (*n as usize * 64, t));
    let n = (table.len() / pack::ENTRY_LEN as usize) as u32;
    let table = &table[..n as usize * pack::ENTRY_LEN as usize];
    let mut p = b"VBPK\x02\x00\x00\x00".to_vec();
    p.resize(8 + space, 0xA5);
    let sealed_table = s.seal(b"volback pack table", table);
    p.extend_from_slice(&sealed_table);
    p.extend_from_slice(blake3::hash(&sealed_table).as_bytes());
    p.extend_from_slice(&n.to_le_bytes());
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(b"VBPE");
    if let Ok(entries) = pack::parse_pack("fuzz", &p, Some(&s)) {
        assert_eq!(entries.len(), n as usize);
    }
});
