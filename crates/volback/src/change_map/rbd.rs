//! `rbd diff` output: Ceph RBD's list of extents that differ between two snapshots.
//!
//! ```text
//! rbd diff --from-snap A pool/image@B --format json
//! [{"offset":0,"length":4194304,"exists":"true"},{"offset":8388608,"length":4194304,"exists":"false"}]
//!
//! rbd diff --from-snap A pool/image@B          (the plain table)
//! Offset   Length   Type
//! 0        4194304  data
//! 8388608  4194304  zero
//! ```
//!
//! `exists` is a string in the JSON Ceph prints (`"true"`/`"false"`); a boolean is accepted
//! too. An extent that no longer exists (`false`, `zero`) was discarded: it reads as zeros.

use serde::Deserialize;

use super::{Change, ChangeMap, MapKind};
use crate::error::{Error, Result};

#[derive(Deserialize)]
struct Entry {
    offset: u64,
    length: u64,
    exists: Exists,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Exists {
    Bool(bool),
    Text(String),
}

/// Parses `rbd diff` output, JSON or the plain table.
pub fn parse(name: &str, text: &str) -> Result<ChangeMap> {
    let bad = |at: String, reason: String| Error::ChangeMap {
        map: name.into(),
        at,
        reason,
    };
    let mut changes = Vec::new();
    if text.trim_start().starts_with('[') {
        let entries: Vec<Entry> = serde_json::from_str(text).map_err(|e| {
            bad(
                format!("line {}", e.line()),
                format!("not rbd diff JSON: {e}"),
            )
        })?;
        for (i, e) in entries.into_iter().enumerate() {
            let at = format!("entry {i}");
            let exists = match e.exists {
                Exists::Bool(b) => b,
                Exists::Text(t) if t == "true" => true,
                Exists::Text(t) if t == "false" => false,
                Exists::Text(t) => {
                    return Err(bad(at, format!("exists is '{t}', not true or false")));
                }
            };
            changes.push((
                at,
                Change {
                    offset: e.offset,
                    len: e.length,
                    zeroed: !exists,
                },
            ));
        }
        return ChangeMap::new(MapKind::RbdDiff, name, None, changes);
    }
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}", i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] => continue,
            [o, _, _] if o.eq_ignore_ascii_case("offset") => continue,
            [o, l, t] => {
                let num = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| bad(at.clone(), format!("'{s}' is not a byte count")))
                };
                let zeroed = match *t {
                    "data" => false,
                    "zero" => true,
                    other => return Err(bad(at, format!("type '{other}', not data or zero"))),
                };
                changes.push((
                    at.clone(),
                    Change {
                        offset: num(o)?,
                        len: num(l)?,
                        zeroed,
                    },
                ));
            }
            _ => return Err(bad(at, "expected: offset length type".into())),
        }
    }
    ChangeMap::new(MapKind::RbdDiff, name, None, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_table_say_the_same() {
        let j = parse(
            "j",
            r#"[{"offset":0,"length":4194304,"exists":"true"},
                {"offset":8388608,"length":4194304,"exists":"false"},
                {"offset":12582912,"length":4096,"exists":true}]"#,
        )
        .unwrap();
        let t = parse(
            "t",
            "Offset   Length   Type\n0 4194304 data\n8388608 4194304 zero\n12582912 4096 data\n",
        )
        .unwrap();
        assert_eq!(j.changes, t.changes);
        assert_eq!(j.changes.len(), 3);
        assert!(j.changes[1].zeroed && !j.changes[2].zeroed);
    }

    #[test]
    fn malformed_diffs_are_refused() {
        for text in [
            r#"[{"offset":0,"length":1,"exists":"maybe"}]"#,
            r#"[{"offset":0,"length":1}]"#,
            "0 4096 sparse\n",
            "0 4096\n",
            r#"[{"offset":4096,"length":4096,"exists":"true"},{"offset":0,"length":4096,"exists":"true"}]"#,
        ] {
            assert!(
                matches!(parse("m", text), Err(Error::ChangeMap { .. })),
                "{text}"
            );
        }
    }
}
