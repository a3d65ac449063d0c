//! `thin_delta` XML: the differences between two thin devices of a dm-thin / LVM thin pool.
//!
//! ```text
//! thin_delta --snap1 OLD --snap2 NEW /dev/mapper/pool_tmeta
//! <superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="...">
//!   <diff left="OLD" right="NEW">
//!     <same begin="0" length="1"/>
//!     <different begin="1" length="1"/>
//!     <left_only begin="3" length="1"/>
//!     <right_only begin="5" length="2"/>
//!   </diff>
//! </superblock>
//! ```
//!
//! `begin` and `length` count data blocks of `data_block_size` 512-byte sectors (64 KiB to
//! 1 GiB, a multiple of 64 KiB, as dm-thin allows). `different` and `right_only` blocks
//! changed; `left_only` blocks are no longer mapped in the new device, which reads them as
//! zeros. `--verbose` output, with the ranges nested as `<range begin= length= .../>` inside
//! each element, is read too. The XML is parsed with `quick-xml`.

use quick_xml::events::{BytesStart, Event};

use super::{Change, ChangeMap, MapKind, blocks};
use crate::error::{Error, Result};

/// dm-thin's data block size bounds, in 512-byte sectors.
const MIN_SECTORS: u64 = 128;
const MAX_SECTORS: u64 = 2 * 1024 * 1024;

/// What a `<same>`/`<different>`/... element says of its blocks.
#[derive(Clone, Copy, PartialEq)]
enum Delta {
    Same,
    Changed,
    Unmapped,
}

fn delta(name: &[u8]) -> Option<Delta> {
    match name {
        b"same" => Some(Delta::Same),
        b"different" | b"right_only" => Some(Delta::Changed),
        b"left_only" => Some(Delta::Unmapped),
        _ => None,
    }
}

/// The numeric attribute `key` of an element, if present.
fn attr(e: &BytesStart<'_>, key: &str) -> std::result::Result<Option<u64>, String> {
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        if a.key.local_name().as_ref() == key.as_bytes() {
            let v = std::str::from_utf8(&a.value).map_err(|e| e.to_string())?;
            return v
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("{key}=\"{v}\" is not a number"));
        }
    }
    Ok(None)
}

/// Parses `thin_delta` output.
pub fn parse(name: &str, text: &str) -> Result<ChangeMap> {
    let mut reader = quick_xml::Reader::from_str(text);
    let bad = |pos: u64, reason: String| Error::ChangeMap {
        map: name.into(),
        at: format!("byte {pos}"),
        reason,
    };
    let mut block: Option<u64> = None;
    // The element a nested `<range>` belongs to (verbose output).
    let mut open: Option<Delta> = None;
    let mut changes = Vec::new();
    let mut saw_diff = false;
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| bad(pos, format!("not thin_delta XML: {e}")))?;
        let (e, empty) = match &ev {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(e) => {
                if delta(e.local_name().as_ref()).is_some() {
                    open = None;
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let local = e.local_name();
        let tag = local.as_ref();
        let range = |delta: Delta, e: &BytesStart<'_>| -> Result<Option<(String, Change)>> {
            let size = block.ok_or_else(|| {
                bad(
                    pos,
                    "a range before the superblock's data_block_size".into(),
                )
            })?;
            let begin = attr(e, "begin").map_err(|r| bad(pos, r))?;
            let length = attr(e, "length").map_err(|r| bad(pos, r))?;
            let (Some(begin), Some(length)) = (begin, length) else {
                return Err(bad(pos, "a range without begin and length".into()));
            };
            let at = format!("byte {pos}");
            let (offset, len) = blocks(name, &at, begin, length, size)?;
            Ok((delta != Delta::Same).then_some((
                at,
                Change {
                    offset,
                    len,
                    zeroed: delta == Delta::Unmapped,
                },
            )))
        };
        if tag == b"superblock" {
            let sectors = attr(e, "data_block_size")
                .map_err(|r| bad(pos, r))?
                .ok_or_else(|| bad(pos, "superblock without data_block_size".into()))?;
            if !(MIN_SECTORS..=MAX_SECTORS).contains(&sectors) || sectors % MIN_SECTORS != 0 {
                return Err(bad(
                    pos,
                    format!(
                        "data_block_size {sectors} sectors: dm-thin blocks are 64 KiB to 1 GiB, \
                         in multiples of 64 KiB (wrong block size?)"
                    ),
                ));
            }
            block = Some(sectors * 512);
        } else if tag == b"diff" {
            saw_diff = true;
        } else if let Some(d) = delta(tag) {
            if attr(e, "begin").map_err(|r| bad(pos, r))?.is_some() {
                changes.extend(range(d, e)?);
            } else if !empty {
                open = Some(d);
            }
        } else if tag == b"range" {
            let d = open.ok_or_else(|| bad(pos, "a <range> outside a delta element".into()))?;
            changes.extend(range(d, e)?);
        }
    }
    if !saw_diff {
        return Err(bad(0, "no <diff> element: not thin_delta output".into()));
    }
    ChangeMap::new(MapKind::ThinDelta, name, None, changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &str = r#"<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="1000">
  <diff left="1" right="2">
    <same begin="0" length="1"/>
    <different begin="1" length="1"/>
    <same begin="2" length="1"/>
    <left_only begin="3" length="1"/>
    <right_only begin="5" length="2"/>
  </diff>
</superblock>"#;

    const VERBOSE: &str = r#"<superblock uuid="" time="1" transaction="1" data_block_size="128" nr_data_blocks="1000">
  <diff left="1" right="2">
    <same>
      <range begin="0" data_begin="0" length="1"/>
    </same>
    <different>
      <range begin="1" left_data_begin="1" right_data_begin="10" length="1"/>
    </different>
    <same>
      <range begin="2" data_begin="2" length="1"/>
    </same>
    <left_only>
      <range begin="3" data_begin="3" length="1"/>
    </left_only>
    <right_only>
      <range begin="5" data_begin="11" length="2"/>
    </right_only>
  </diff>
</superblock>"#;

    #[test]
    fn plain_and_verbose_output_say_the_same() {
        let p = parse("p", PLAIN).unwrap();
        let v = parse("v", VERBOSE).unwrap();
        assert_eq!(p.changes, v.changes);
        let k = 65536;
        let want = [(k, k, false), (3 * k, k, true), (5 * k, 2 * k, false)];
        let got: Vec<_> = p
            .changes
            .iter()
            .map(|c| (c.offset, c.len, c.zeroed))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn bad_block_sizes_and_documents_are_refused() {
        for text in [
            PLAIN.replace("data_block_size=\"128\"", "data_block_size=\"100\""),
            PLAIN.replace("data_block_size=\"128\"", "data_block_size=\"x\""),
            PLAIN.replace(" data_block_size=\"128\"", ""),
            PLAIN
                .replace("<diff left=\"1\" right=\"2\">", "")
                .replace("</diff>", ""),
            PLAIN.replace("begin=\"5\"", "begin=\"3\""),
            "<superblock".to_string(),
        ] {
            assert!(
                matches!(parse("m", &text), Err(Error::ChangeMap { .. })),
                "{text}"
            );
        }
    }
}
