//! `volback gc`: Reclaim the space of deleted backups and interrupted ones; safe alongside anything.

use super::*;
use crate::args::GcArgs;

pub fn run(args: GcArgs, access: &Access) -> Result<Outcome> {
    let GcArgs {
        container,
        dry_run,
        max_unused,
        clock_skew,
        min_age,
        json,
    } = args;
    if max_unused.is_nan() || max_unused < 0.0 {
        return Err(Error::Config(format!(
            "--max-unused {max_unused} must be 0 or more"
        )));
    }
    let c = access.open(&container, false, None)?;
    let r = run_gc(
        &c,
        &GcOptions {
            dry_run,
            max_unused,
            clock_skew: std::time::Duration::from_secs(clock_skew),
            min_age: std::time::Duration::from_secs(min_age),
            ..GcOptions::default()
        },
    )?;
    events::finished(&r);
    if json {
        print_json(&r)?;
    } else {
        out!(
            "{}{} backups, {} live chunks; condemned {} unreferenced and {} sparse packs; wrote {} packs ({} bytes); deleted {} packs ({} bytes); reclaimed {} bytes; {} condemnation records swept, {} deferred, in {:.2}s",
            if dry_run { "dry run: " } else { "" },
            r.backups,
            r.live_chunks,
            r.packs_unreferenced,
            r.packs_repacked,
            r.packs_written,
            r.bytes_written,
            r.packs_deleted,
            r.bytes_deleted,
            r.bytes_reclaimed,
            r.records_swept,
            r.records_deferred,
            r.elapsed_s
        )?;
        if r.packs_retained > 0 {
            out!(
                "{} packs ({} bytes) no backup needs are under Object Lock retention; the first can be reclaimed after {}",
                r.packs_retained,
                r.bytes_retained,
                r.retained_until.as_deref().unwrap_or("its date")
            )?;
        }
        if let (Some(n), Some(bytes)) = (r.noncurrent_versions, r.noncurrent_bytes)
            && n > 0
        {
            out!(
                "the bucket keeps {n} noncurrent versions ({bytes} bytes) of this container's objects: its lifecycle rules decide when they go"
            )?;
        }
        if r.live_chunks_missing > 0 {
            out!(
                "warning: {} chunks needed by backups are in no pack; run verify",
                r.live_chunks_missing
            )?;
        }
    }
    Ok(Outcome::Done)
}
