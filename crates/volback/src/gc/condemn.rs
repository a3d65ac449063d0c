//! Condemn: choose the packs to give back (no live chunk, or the sparsest partly live ones) and
//! list them in a create-only record. Nothing is deleted here.

use std::collections::HashSet;

use super::packs::Packs;
use crate::clock::{hostname, now_rfc3339, now_unix};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::format::condemnation::{CONDEMNED_FORMAT, CONDEMNED_VERSION, Condemnation};
use crate::format::keys::condemnation_key;
use crate::format::pack::ENTRY_LEN;
use crate::ids::Hash;

/// The packs a run condemns, each list sorted.
pub(super) struct Chosen {
    /// Packs with no live chunk.
    pub(super) unreferenced: Vec<Hash>,
    /// Partly live packs to rewrite: the sparsest, until the unused bytes left are within the
    /// bound.
    pub(super) sparse: Vec<Hash>,
}

/// Chooses, among packs not already condemned, those with no live chunk and the sparsest partly
/// live ones while unused bytes exceed `max_unused` of the live bytes.
pub(super) fn choose(
    packs: &Packs,
    live: &HashSet<Hash>,
    condemned_before: &HashSet<Hash>,
    max_unused: f64,
) -> Chosen {
    let mut unreferenced = Vec::new();
    let mut partial = Vec::new();
    let mut total_live = 0u64;
    for (p, (size, entries)) in &packs.table {
        if condemned_before.contains(p) {
            continue;
        }
        let mut live_bytes = 0u64;
        let mut counted = HashSet::new();
        for e in entries {
            if live.contains(&e.id) && counted.insert(e.id) {
                live_bytes += u64::from(e.stored_len) + ENTRY_LEN;
            }
        }
        total_live += live_bytes;
        if live_bytes == 0 {
            unreferenced.push(*p);
        } else if live_bytes < *size {
            partial.push((live_bytes as f64 / *size as f64, *p, size - live_bytes));
        }
    }
    // Sparsest first, until the unused bytes left are within the bound.
    partial.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut unused: u64 = partial.iter().map(|(_, _, dead)| dead).sum();
    let allowed = max_unused.max(0.0) * total_live as f64;
    let mut sparse = Vec::new();
    for (_, p, dead) in partial {
        if unused as f64 <= allowed {
            break;
        }
        sparse.push(p);
        unused -= dead;
    }
    unreferenced.sort();
    sparse.sort();
    Chosen {
        unreferenced,
        sparse,
    }
}

/// Writes a condemnation record for `chosen` (create-only); `None` if it names no pack. Its
/// exposed list is every chunk the packs hold but those in `copied` (copied by this run into
/// new packs, which no record names yet).
pub(super) fn write_record(
    c: &Container,
    chosen: &Chosen,
    packs: &Packs,
    copied: &HashSet<Hash>,
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
        exposed: Some(Condemnation::encode_exposed(
            unreferenced
                .iter()
                .chain(sparse)
                .filter_map(|p| packs.table.get(p))
                .flat_map(|(_, entries)| entries.iter().map(|e| e.id))
                .filter(|id| !copied.contains(id)),
        )),
    };
    let key = condemnation_key(record.created_unix);
    let bytes = crate::format::versioned::encode_json("condemnation record", &record, false)?;
    if !c.store().put_if_absent(&key, c.seal_object(&key, bytes)?)? {
        return Err(Error::Internal(format!("condemnation record {key} exists")));
    }
    Ok(Some((key, record)))
}
