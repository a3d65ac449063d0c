//! Which bytes of a Cinder backup's volume come from which object of its chain.
//!
//! Layers are taken newest first: each object of a layer supplies only the parts of its range
//! that no newer layer has supplied, so every byte of the volume comes from exactly one object
//! (the newest that has it) and an object that newer layers cover entirely is never read. What
//! no layer has is zeros.

use crate::error::{Error, Result};

use super::CinderBackup;

/// Bytes `[start, end)` of the volume, taken from object `object` of chain link `link` (at
/// `start - object.offset` within it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub start: u64,
    pub end: u64,
    pub link: usize,
    pub object: usize,
}

/// The pieces of a volume of `size` bytes, sorted by offset and disjoint.
#[derive(Debug)]
pub(crate) struct Plan {
    pub size: u64,
    pub pieces: Vec<Piece>,
    /// Objects of the chain that supply nothing (newer layers cover them).
    pub objects_skipped: u64,
}

impl Plan {
    /// The plan for `links` (oldest first) restoring a volume of `size` bytes; an object that
    /// ends past the volume is damage in the manifest that names it.
    pub fn new(links: &[&CinderBackup], size: u64) -> Result<Plan> {
        let mut covered = Covered::default();
        let mut pieces = Vec::new();
        let mut objects_skipped = 0u64;
        for (link, b) in links.iter().enumerate().rev() {
            for (object, o) in b.manifest.objects.iter().enumerate() {
                // Checked when the manifest was decoded; never past the volume either.
                let end = o.offset.saturating_add(o.length);
                if end > size {
                    return Err(Error::corrupt(
                        &b.key,
                        0,
                        format!(
                            "object {} ends at {end}, past the volume's {size} bytes",
                            o.name
                        ),
                    ));
                }
                let gaps = covered.gaps(o.offset, end);
                if gaps.is_empty() {
                    objects_skipped += 1;
                }
                pieces.extend(gaps.into_iter().map(|(start, end)| Piece {
                    start,
                    end,
                    link,
                    object,
                }));
            }
            covered.add(
                b.manifest
                    .objects
                    .iter()
                    .map(|o| (o.offset, o.offset.saturating_add(o.length))),
            );
        }
        pieces.sort_unstable_by_key(|p| p.start);
        Ok(Plan {
            size,
            pieces,
            objects_skipped,
        })
    }

    /// The objects to read, each once, in the order the volume first needs them, with the
    /// index of the last piece that needs each.
    pub fn objects_in_order(&self) -> Vec<((usize, usize), usize)> {
        let mut last = std::collections::HashMap::new();
        for (i, p) in self.pieces.iter().enumerate() {
            last.insert((p.link, p.object), i);
        }
        let mut seen = std::collections::HashSet::new();
        self.pieces
            .iter()
            .filter(|p| seen.insert((p.link, p.object)))
            .map(|p| ((p.link, p.object), last[&(p.link, p.object)]))
            .collect()
    }
}

/// Ranges of the volume already supplied by newer layers, sorted and disjoint.
#[derive(Default)]
struct Covered(Vec<(u64, u64)>);

impl Covered {
    /// The parts of `[start, end)` not covered.
    fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        // The first range that could overlap: ranges are sorted and disjoint.
        let from = self.0.partition_point(|&(_, e)| e <= at);
        for &(s, e) in &self.0[from..] {
            if s >= end {
                break;
            }
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
            if at >= end {
                break;
            }
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    fn add(&mut self, ranges: impl IntoIterator<Item = (u64, u64)>) {
        self.0.extend(ranges);
        self.0.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.0.len());
        for (s, e) in self.0.drain(..) {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.0 = merged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_ranges_leave_the_right_gaps() {
        let mut c = Covered::default();
        c.add([(10, 20), (30, 40)]);
        assert_eq!(c.gaps(0, 50), vec![(0, 10), (20, 30), (40, 50)]);
        assert_eq!(c.gaps(12, 18), vec![]);
        assert_eq!(c.gaps(15, 35), vec![(20, 30)]);
        assert_eq!(c.gaps(40, 45), vec![(40, 45)]);
        c.add([(20, 30)]);
        assert_eq!(c.0, vec![(10, 40)]);
    }
}
