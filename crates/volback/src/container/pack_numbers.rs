//! Pack numbers for tables that hold a pack per chunk location: the pack's position in a pack
//! listing (40 bytes a pack, held once), or, for a pack the index names but the listing did not
//! have, [`UNLISTED`] and up, so no table keeps a map of every pack.

use std::collections::HashMap;

use super::PackListing;
use crate::error::{Error, Result};
use crate::ids::Hash;
use crate::index::UNLISTED;

/// The packs numbered beyond a listing (missing packs: normally none).
#[derive(Default)]
pub(crate) struct Unlisted {
    ids: Vec<Hash>,
    numbers: HashMap<Hash, u32>,
}

impl Unlisted {
    /// The number of `pack`, at position `listed` of the listing, or not listed.
    pub(crate) fn number(&mut self, pack: &Hash, listed: Option<usize>) -> Result<u32> {
        if let Some(p) = listed {
            // A listing holds fewer than UNLISTED packs (`Container::listed_packs`).
            return u32::try_from(p)
                .ok()
                .filter(|&p| p < UNLISTED)
                .ok_or_else(|| Error::Internal(format!("pack listing position {p}")));
        }
        if let Some(&n) = self.numbers.get(pack) {
            return Ok(n);
        }
        let n = u32::try_from(self.ids.len())
            .ok()
            .filter(|&n| n < UNLISTED)
            .ok_or_else(|| Error::Config("more missing packs than can be numbered".into()))?;
        self.ids.push(*pack);
        self.numbers.insert(*pack, UNLISTED | n);
        Ok(UNLISTED | n)
    }

    /// The pack numbered `n` against `listed` (a zero id if nothing was: numbers come from this
    /// process's own tables).
    pub(crate) fn id(&self, listed: &PackListing, n: u32) -> Hash {
        let found = match n & UNLISTED {
            0 => listed.at(n as usize).map(|(p, _)| p),
            _ => self.ids.get((n & !UNLISTED) as usize).copied(),
        };
        found.unwrap_or(Hash([0; 32]))
    }
}

/// Whether pack number `n` is a listed pack's.
pub(crate) fn is_listed(n: u32) -> bool {
    n & UNLISTED == 0
}
