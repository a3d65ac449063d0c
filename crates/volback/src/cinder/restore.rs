//! A Cinder backup restored into a new file: every object the plan (`cinder/plan.rs`) needs read
//! once, many at a time, and its pieces written at their offsets; zeros left as holes.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::store::ObjectStore;

use super::object::read_object;
use super::plan::Plan;
use super::{find_chain, volume_size};

/// What a restore of a Cinder backup did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CinderRestoreReport {
    pub backup_id: String,
    /// Backups applied (the chain, full first).
    pub chain: Vec<String>,
    pub size: u64,
    /// Data objects read and verified, and those skipped because newer layers cover them.
    pub objects_read: u64,
    pub objects_skipped: u64,
    /// Volume bytes written (zero blocks are left as holes).
    pub bytes_written: u64,
    pub elapsed_s: f64,
}

/// Writes `data` (volume bytes from `offset`) at its offset, skipping zero blocks.
fn write_nonzero(target: &File, path: &Path, offset: u64, data: &[u8]) -> Result<u64> {
    const BLOCK: usize = 64 << 10;
    let mut written = 0u64;
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        let at = offset + (i * BLOCK) as u64;
        target
            .write_all_at(block, at)
            .map_err(|e| Error::io("write restore target", path, e))?;
        written += block.len() as u64;
    }
    Ok(written)
}

/// Restores Cinder backup `backup_id`, found under `prefix` of `store`, into a new file
/// `target`. A restore that fails removes the target it created: never a half-written volume.
pub fn restore_cinder_backup(
    store: &dyn ObjectStore,
    prefix: &str,
    backup_id: &str,
    target: &Path,
) -> Result<CinderRestoreReport> {
    let started = std::time::Instant::now();
    let backups = super::readable_backups(store, prefix)?;
    let links = find_chain(&backups, backup_id)?;
    let size = volume_size(store, &links)?;
    let plan = Plan::new(&links, size)?;
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::TargetExists {
                path: target.into(),
            },
            _ => Error::io("create restore target", target, e),
        })?;
    let filled = (|| -> Result<CinderRestoreReport> {
        file.set_len(size)
            .map_err(|e| Error::io("size restore target", target, e))?;
        let mut by_object: BTreeMap<(usize, usize), Vec<(u64, u64)>> = BTreeMap::new();
        for p in &plan.pieces {
            by_object
                .entry((p.link, p.object))
                .or_default()
                .push((p.start, p.end));
        }
        let work: Vec<_> = by_object.into_iter().collect();
        let written: Vec<u64> = work
            .par_iter()
            .map(|((link, object), ranges)| {
                let b = links[*link];
                let o = &b.manifest.objects[*object];
                let data = read_object(store, b, o)?;
                let mut n = 0;
                for &(s, e) in ranges {
                    // Inside the object: the plan cut the ranges from it.
                    let part = &data[(s - o.offset) as usize..(e - o.offset) as usize];
                    n += write_nonzero(&file, target, s, part)?;
                }
                Ok(n)
            })
            .collect::<Result<_>>()?;
        file.sync_all()
            .map_err(|e| Error::io("flush restore target", target, e))?;
        Ok(CinderRestoreReport {
            backup_id: backup_id.into(),
            chain: links.iter().map(|b| b.manifest.backup_id.clone()).collect(),
            size,
            objects_read: work.len() as u64,
            objects_skipped: plan.objects_skipped,
            bytes_written: written.iter().sum(),
            elapsed_s: started.elapsed().as_secs_f64(),
        })
    })();
    if filled.is_err() {
        let _ = std::fs::remove_file(target);
    }
    filled
}
