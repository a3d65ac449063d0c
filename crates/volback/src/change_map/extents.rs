//! The generic change map: a list of changed extents, JSON or CSV.
//!
//! ```text
//! JSON: [{"offset": 0, "length": 65536}, {"offset": 1048576, "length": 4096, "zero": true}]
//!   or: {"block_size": 4096, "volume_size": 17179869184, "extents": [ ...the same... ]}
//! CSV:  offset,length[,zero]      one extent a line; a header line and # comments allowed
//! ```
//!
//! `zero: true` says the range now reads as zeros (it is not read). With `block_size` every
//! offset and length must be a multiple of it; with `volume_size` the volume must have that
//! size.

use serde::Deserialize;

use super::{Change, ChangeMap, MapKind};
use crate::error::{Error, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    offset: u64,
    length: u64,
    #[serde(default)]
    zero: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Doc {
    List(Vec<Entry>),
    Full {
        #[serde(default)]
        block_size: Option<u64>,
        #[serde(default)]
        volume_size: Option<u64>,
        extents: Vec<Entry>,
    },
}

/// Parses a generic extent list (JSON when it starts with `[` or `{`, else CSV).
pub fn parse(name: &str, text: &str) -> Result<ChangeMap> {
    let bad = |at: String, reason: String| Error::ChangeMap {
        map: name.into(),
        at,
        reason,
    };
    let t = text.trim_start();
    if t.starts_with('[') || t.starts_with('{') {
        // (An untagged document's error has no line.)
        let doc: Doc = serde_json::from_str(t).map_err(|e| {
            let at = match e.line() {
                0 => "document".to_string(),
                n => format!("line {n}"),
            };
            bad(at, format!("not an extent list: {e}"))
        })?;
        let (block, size, entries) = match doc {
            Doc::List(e) => (None, None, e),
            Doc::Full {
                block_size,
                volume_size,
                extents,
            } => (block_size, volume_size, extents),
        };
        if let Some(b) = block
            && !(512..=1 << 30).contains(&b)
        {
            return Err(bad(
                "block_size".into(),
                format!("{b} bytes: must be 512 B to 1 GiB"),
            ));
        }
        let mut changes = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let at = format!("entry {i}");
            if let Some(b) = block
                && (e.offset % b != 0 || e.length % b != 0)
            {
                return Err(bad(
                    at,
                    format!(
                        "{}+{} is not on the map's {b}-byte blocks (wrong block size?)",
                        e.offset, e.length
                    ),
                ));
            }
            changes.push((
                at,
                Change {
                    offset: e.offset,
                    len: e.length,
                    zeroed: e.zero,
                },
            ));
        }
        return ChangeMap::new(MapKind::Extents, name, size, changes);
    }
    let mut changes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}", i + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if changes.is_empty()
            && fields
                .first()
                .is_some_and(|f| f.eq_ignore_ascii_case("offset"))
        {
            continue; // a header
        }
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(at.clone(), format!("'{s}' is not a byte count")))
        };
        let (offset, len, zeroed) = match fields.as_slice() {
            [o, l] => (num(o)?, num(l)?, false),
            [o, l, z] => {
                let zeroed = match z.to_ascii_lowercase().as_str() {
                    "" | "0" | "false" | "data" => false,
                    "1" | "true" | "zero" => true,
                    other => return Err(bad(at, format!("'{other}' is not true or false"))),
                };
                (num(o)?, num(l)?, zeroed)
            }
            _ => {
                return Err(bad(at, "expected offset,length[,zero]".into()));
            }
        };
        changes.push((
            at,
            Change {
                offset,
                len,
                zeroed,
            },
        ));
    }
    ChangeMap::new(MapKind::Extents, name, None, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_csv_say_the_same() {
        let j = parse(
            "j",
            r#"{"block_size": 4096, "extents": [{"offset": 0, "length": 8192},
                {"offset": 16384, "length": 4096, "zero": true}]}"#,
        )
        .unwrap();
        let c = parse("c", "offset,length,zero\n# c\n0,8192\n16384,4096,true\n").unwrap();
        assert_eq!(j.changes, c.changes);
        assert!(j.changes[1].zeroed);
        let l = parse("l", r#"[{"offset": 0, "length": 8192}]"#).unwrap();
        assert_eq!(l.changes[0], j.changes[0]);
    }

    #[test]
    fn malformed_lists_name_the_place() {
        for (text, want) in [
            ("0,abc\n", "line 1"),
            ("0,4096\n1\n", "line 2"),
            (
                r#"{"block_size": 4096, "extents": [{"offset": 100, "length": 4096}]}"#,
                "entry 0",
            ),
            (r#"{"block_size": 3, "extents": []}"#, "block_size"),
            (r#"[{"offset": 1, "lenght": 2}]"#, "document"),
            ("0,4096,maybe\n", "line 1"),
        ] {
            match parse("m", text) {
                Err(Error::ChangeMap { at, .. }) => assert_eq!(at, want, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
