//! Condemn: choose the packs to give back (no live chunk, or the sparsest partly live ones) and
//! list them in a create-only record. Nothing is deleted here.

use super::join::for_each_chunk;
use super::survey::{Known, PackList, Survey};
use crate::clock::{hostname, now_rfc3339, now_unix};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::extsort::Table;
use crate::format::condemnation::{CONDEMNED_FORMAT, CONDEMNED_VERSION, Condemnation};
use crate::format::keys::condemnation_key;
use crate::format::pack::ENTRY_LEN;
use crate::ids::Hash;
use crate::index::located::ChunkId;

/// The packs a run condemns, each list sorted.
pub(super) struct Chosen {
    /// Packs with no live chunk.
    pub(super) unreferenced: Vec<Hash>,
    /// Partly live packs to rewrite: the sparsest, until the unused bytes left are within the
    /// bound.
    pub(super) sparse: Vec<Hash>,
}

/// Live bytes of each pack (by [`PackList`] position; each live chunk's stored bytes and
/// table entry), and the number of live chunks no pack holds: one pass over the chunks.
pub(super) fn live_bytes(survey: &Survey, live: &Table<ChunkId>) -> Result<(Vec<u64>, u64)> {
    let mut bytes = vec![0u64; survey.packs.len()];
    let missing = for_each_chunk(&[&survey.holders], &[live], |_, is_live, holders| {
        if is_live {
            for h in holders {
                let b = &mut bytes[h.loc.pack as usize];
                *b = b.saturating_add(u64::from(h.loc.stored_len) + ENTRY_LEN);
            }
        }
        Ok(())
    })?;
    Ok((bytes, missing))
}

/// Chooses, among packs whose contents are known and that are not already condemned, those with
/// no live chunk and the sparsest partly live ones while unused bytes exceed `max_unused` of the
/// live bytes.
pub(super) fn choose(
    packs: &PackList,
    live_bytes: &[u64],
    condemned_before: &[bool],
    max_unused: f64,
) -> Chosen {
    let mut unreferenced = Vec::new();
    let mut partial = Vec::new();
    let mut total_live = 0u64;
    for pos in 0..packs.len() as u32 {
        let i = pos as usize;
        if condemned_before[i] || packs.known[i] == Known::No {
            continue;
        }
        let (p, size, live) = (packs.id(pos), packs.size(pos), live_bytes[i]);
        total_live = total_live.saturating_add(live);
        if live == 0 {
            unreferenced.push(p);
        } else if live < size {
            partial.push((live as f64 / size as f64, p, size - live));
        }
    }
    // Sparsest first, until the unused bytes left are within the bound.
    partial.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    // Sizes come from the listing: sums saturate rather than wrap (or panic).
    let mut unused = (partial.iter()).fold(0u64, |sum, (_, _, dead)| sum.saturating_add(*dead));
    let allowed = max_unused.max(0.0) * total_live as f64;
    let mut sparse = Vec::new();
    for (_, p, dead) in partial {
        if unused as f64 <= allowed {
            break;
        }
        sparse.push(p);
        unused = unused.saturating_sub(dead);
    }
    unreferenced.sort();
    sparse.sort();
    Chosen {
        unreferenced,
        sparse,
    }
}

/// Writes a condemnation record for `chosen` (create-only); `None` if it names no pack. Its
/// exposed list, `exposed`, is every chunk the packs hold but those this run copied into new
/// packs (which no record names).
pub(super) fn write_record(
    c: &Container,
    chosen: &Chosen,
    exposed: Vec<Hash>,
) -> Result<Option<(String, Condemnation)>> {
    if chosen.unreferenced.is_empty() && chosen.sparse.is_empty() {
        return Ok(None);
    }
    let (unreferenced, sparse) = (&chosen.unreferenced, &chosen.sparse);
    let record = Condemnation {
        format: CONDEMNED_FORMAT.into(),
        version: CONDEMNED_VERSION,
        created_unix: now_unix(),
        created_at: now_rfc3339(),
        host: hostname(),
        packs: unreferenced
            .iter()
            .chain(sparse)
            .map(|p| p.to_hex())
            .collect(),
        exposed: Some(Condemnation::encode_exposed(exposed.into_iter())),
    };
    let key = condemnation_key(record.created_unix);
    let bytes = crate::format::versioned::encode_json("condemnation record", &record, false)?;
    if !c.store().put_if_absent(&key, c.seal_object(&key, bytes)?)? {
        return Err(Error::Internal(format!("condemnation record {key} exists")));
    }
    Ok(Some((key, record)))
}
