#![no_main]
use libfuzzer_sys::fuzz_target;
use volback::change_map::{ChangeMap, MapKind};

// Change maps come from other tools and from users: every format must refuse bad text with an
// error, never panic, and a map it accepts must be sorted and disjoint.
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [None, Some(MapKind::Extents), Some(MapKind::RbdDiff), Some(MapKind::ThinDelta)] {
        if let Ok(map) = ChangeMap::parse("fuzz", text, kind) {
            for w in map.changes.windows(2) {
                assert!(w[0].end() <= w[1].offset);
            }
            let _ = map.check_size(1 << 30);
        }
    }
});
