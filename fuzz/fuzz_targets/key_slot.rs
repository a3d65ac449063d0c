#![no_main]
use libfuzzer_sys::fuzz_target;
use volback::format::key_slot::KeySlot;

fuzz_target!(|data: &[u8]| {
    // Whatever name the slot claims, a slot that decodes is bounded and re-encodes to itself.
    let key = std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.split("\"id\":\"").nth(1))
        .and_then(|r| r.split('"').next())
        .map_or("keys/0".to_string(), volback::format::key_slot::key_slot_key);
    if let Ok(slot) = KeySlot::decode(&key, data) {
        if let Some(p) = slot.params {
            p.check(&key).unwrap();
        }
        let again = KeySlot::decode(&key, &slot.encode().unwrap()).unwrap();
        assert_eq!(again, slot);
    }
});
