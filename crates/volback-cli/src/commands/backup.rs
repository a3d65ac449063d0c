//! `volback backup`: Back up a volume image, block device or stdin ('-') into a container.

use super::*;
use crate::args::BackupArgs;
use volback::change_map::{MapKind, MapSource};
use volback::chunker::ChunkerParams;
use volback::format::config::ObjectLock;
use volback::store::s3_lock::LockMode;

pub fn run(args: BackupArgs, access: &Access) -> Result<Outcome> {
    let BackupArgs {
        container,
        volume,
        backup_id,
        volume_id,
        parent,
        metadata,
        data_timestamp,
        zstd_level,
        chunk_avg,
        object_lock_days,
        object_lock_mode,
        lease_ttl,
        label,
        full_read,
        changes,
        changes_format,
        changes_nbd,
        dirty_bitmap,
        map_sample,
        map_fallback,
        full_read_every,
        full_read_after_days,
        json,
    } = args;
    let changes = match (changes, changes_nbd, dirty_bitmap) {
        (Some(path), _, _) => Some(MapSource::File {
            path,
            kind: MapKind::of_file_format(&changes_format)?,
        }),
        (None, Some(uri), Some(bitmap)) => Some(MapSource::Nbd { uri, bitmap }),
        _ => None,
    };
    let mut init = ContainerConfig::default();
    if let Some(avg) = chunk_avg {
        init.chunker =
            ChunkerParams::around(avg).map_err(|e| Error::Config(format!("--chunk-avg: {e}")))?;
    }
    if let Some(days) = object_lock_days {
        init.object_lock = Some(ObjectLock {
            mode: LockMode::parse(&object_lock_mode)?,
            days,
        });
    }
    let init = (chunk_avg.is_some() || object_lock_days.is_some()).then_some(init);
    let c = access.open(&container, true, init)?;
    let volume_metadata = match metadata {
        Some(p) => {
            let text = volback::store::read_local_file(&p)?;
            Some(serde_json::from_slice(&text).map_err(|e| {
                Error::Config(format!("metadata file '{}' is not JSON: {e}", p.display()))
            })?)
        }
        None => None,
    };
    let size_hint = if volume == "-" {
        None
    } else {
        std::fs::metadata(&volume)
            .ok()
            .map(|m| m.len())
            .filter(|n| *n > 0)
    };
    let source = if volume == "-" {
        VolumeSource::stdin()
    } else {
        VolumeSource::Path(PathBuf::from(&volume))
    };
    let opts = BackupOptions {
        backup_id,
        volume_id: volume_id.unwrap_or_else(|| volume_id_from(&volume)),
        parent_id: parent,
        data_timestamp,
        volume_metadata,
        expected_size: None,
        zstd_level,
        dedup_mem_keys: None,
        cancel: None,
        lease_ttl: Some(std::time::Duration::from_secs(lease_ttl.max(1))),
        labels: labels_of(&label)?,
        full_read,
        created: None,
        changes,
        map_sample,
        map_fallback,
        full_read_every,
        full_read_after: full_read_after_days
            .map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400)),
    };
    let pb = progress_bar(json, size_hint);
    let cb = |n: u64| {
        if let Some(pb) = &pb {
            pb.set_position(n);
        }
        events::progress(n, size_hint);
    };
    let driver = Driver::with_container(c.clone());
    let out = driver.backup_with(&c, source, &opts, Some(&cb));
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let r = out?.report;
    events::finished(&r);
    if json {
        print_json(&r)?;
    } else {
        // An incremental says how much of the volume its parent's chunks recognised.
        let guided = if r.parent_id.is_some() {
            format!(", {} recognised from the parent", r.chunks_guided)
        } else {
            String::new()
        };
        out!(
            "backup {} of {} bytes: read {}, stored {} new bytes in {} objects ({} of {} chunks new{guided}, {} zero bytes) in {:.2}s",
            r.backup_id,
            r.size,
            r.bytes_read,
            r.bytes_new,
            r.object_count,
            r.chunks_new,
            r.chunks_total,
            r.zero_bytes,
            r.elapsed_s
        )?;
    }
    Ok(Outcome::Done)
}
