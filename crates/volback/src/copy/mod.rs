//! Copies of backups into a second container: another directory, bucket or S3 endpoint, with
//! other credentials and other keys.
//!
//! A backup is copied as a restore of it streamed into a backup of the destination, through a
//! pipe between two threads: the source's chunks are read with ranged reads and checked
//! against their BLAKE3 ids on the way (as every restore checks them), and the destination
//! cuts, deduplicates, compresses and (with its own keys) seals them as any backup does. So
//!
//! - only the chunks the destination lacks are written, packed densely in new packs;
//! - an encrypted source goes to a destination with keys of its own (or, only when the caller
//!   allows it, to a plaintext one); a plaintext source may go to an encrypted destination:
//!   nothing is assumed of the destination's chunk ids;
//! - the copy keeps its backup id, volume id, labels, metadata, data timestamp and creation
//!   time, and is an incremental of its parent where the destination holds the parent (whose
//!   chunks then guide the cut, as in any incremental);
//! - a copy is committed as any backup is, create-only and last: an interrupted copy leaves
//!   nothing visible, and a run again copies only the backups the destination lacks (what the
//!   interrupted one wrote is deduplicated against or collected);
//! - backups the destination already holds are skipped by id (after checking that they are
//!   the same backup: volume, size and creation time), so a second copy writes nothing; so
//!   are backups deleted at the destination (its own retention rules may differ).
//!
//! The source is read whole for each backup copied, its zero runs included (they go down the
//! pipe as zeros and come out as zero runs again): the cost of copying a backup is the cost of
//! restoring it, not of the chunks the destination lacks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;

use crate::backup::source::VolumeSource;
use crate::backup::{BackupOptions, run_backup};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::format::manifest::Manifest;
use crate::restore::WriteSink;
use crate::restore::{RestoreOptions, TargetMode, run_restore_to_stream};
use crate::store::RequestCounts;

/// Which backups of the source to copy: those matching every field given (all of them if
/// none is).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// These backups (empty: any).
    pub backup_ids: Vec<String>,
    /// Backups of this volume.
    pub volume_id: Option<String>,
    /// Backups carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
}

impl Selection {
    fn matches(&self, m: &Manifest) -> bool {
        (self.backup_ids.is_empty() || self.backup_ids.contains(&m.backup_id))
            && self.volume_id.as_ref().is_none_or(|v| *v == m.volume_id)
            && self.labels.iter().all(|(k, v)| m.labels.get(k) == Some(v))
    }
}

/// What the caller asks of a copy.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    pub selection: Selection,
    /// Copy an encrypted container's backups into a plaintext one. Refused by default: an
    /// encrypted source stays encrypted (the destination needs a key of its own).
    pub allow_plaintext: bool,
    /// Set to stop: the backup being copied fails with [`Error::Cancelled`] and commits
    /// nothing; those copied before it stay.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// One backup copied.
#[derive(Debug, Clone, Serialize)]
pub struct CopiedBackup {
    pub backup_id: String,
    pub volume_id: String,
    /// Volume bytes read from the source.
    pub size: u64,
    /// Bytes written to the destination (new packs, index segments, the manifest).
    pub bytes_written: u64,
    /// The destination's parent of the copy (the source's parent, where the destination
    /// holds it).
    pub parent_id: Option<String>,
    pub elapsed_s: f64,
}

/// What a copy did (the CLI's `copy --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    pub copied: Vec<CopiedBackup>,
    /// Selected backups the destination already held.
    pub skipped: Vec<String>,
    /// Volume bytes read from the source, and bytes written to the destination.
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub source_requests: RequestCounts,
    pub destination_requests: RequestCounts,
    pub elapsed_s: f64,
}

/// Progress of a copy: volume bytes copied so far, of the total of the backups to copy.
pub type CopyProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Copies the selected backups of `src` into `dst`, oldest first.
pub fn run_copy(
    src: &Container,
    dst: &Container,
    opts: &CopyOptions,
    progress: Option<CopyProgress<'_>>,
) -> Result<CopyReport> {
    let started = Instant::now();
    if src.is_encrypted() && !dst.is_encrypted() && !opts.allow_plaintext {
        return Err(Error::Key(format!(
            "'{}' is encrypted and '{}' is not: give the destination a key of its own, or \
             allow a plaintext copy explicitly",
            src.url(),
            dst.url()
        )));
    }
    let (src_before, dst_before) = (src.store().requests(), dst.store().requests());
    let mut selected = Vec::new();
    for m in src.list_backups()? {
        let m = m?;
        if opts.selection.matches(&m) {
            selected.push(m);
        }
    }
    for id in &opts.selection.backup_ids {
        if !selected.iter().any(|m| &m.backup_id == id) {
            return Err(Error::BackupNotFound {
                id: id.clone(),
                container: src.url().into(),
            });
        }
    }
    let mut report = CopyReport::default();
    let mut todo = Vec::new();
    for m in &selected {
        if dst.backup_id_taken(&m.backup_id)? {
            same_backup(dst, m)?;
            report.skipped.push(m.backup_id.clone());
        } else {
            todo.push(m);
        }
    }
    let total: u64 = todo.iter().map(|m| m.size).sum();
    for m in todo {
        let done = report.bytes_read;
        let one = |n: u64| {
            if let Some(p) = progress {
                p(done.saturating_add(n), total);
            }
        };
        let copied = copy_one(src, dst, m, opts, Some(&one))?;
        report.bytes_read += copied.size;
        report.bytes_written += copied.bytes_written;
        report.copied.push(copied);
    }
    report.source_requests = src.store().requests().since(&src_before);
    report.destination_requests = dst.store().requests().since(&dst_before);
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Checks that the destination's backup with `m`'s id is a copy of `m`, not another backup
/// that happens to share its id. One deleted at the destination (by its own retention rules,
/// say) stays deleted: it is not copied again.
fn same_backup(dst: &Container, m: &Manifest) -> Result<()> {
    let have = match dst.read_manifest(&m.backup_id) {
        Ok((have, _)) => have,
        Err(Error::BackupDeleted { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if (&have.volume_id, have.size, have.created_unix) != (&m.volume_id, m.size, m.created_unix) {
        return Err(Error::BackupExists {
            id: m.backup_id.clone(),
            container: dst.url().into(),
        });
    }
    Ok(())
}

/// Bytes a pipe between the restore and the backup holds (the kernel's default is 64 KiB,
/// which costs a pair of context switches per 64 KiB).
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Copies one backup: its restore, streamed through a pipe into a backup of `dst`.
fn copy_one(
    src: &Container,
    dst: &Container,
    m: &Manifest,
    opts: &CopyOptions,
    progress: Option<crate::backup::Progress<'_>>,
) -> Result<CopiedBackup> {
    let started = Instant::now();
    let parent_id = match &m.parent_id {
        Some(p) if dst.read_manifest(p).is_ok() => Some(p.clone()),
        _ => None,
    };
    let name = format!("{}/{}", src.url(), m.backup_id);
    let (reader, writer) = std::io::pipe().map_err(|e| Error::io("create pipe", &name, e))?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETPIPE_SZ on a pipe this function owns; failure leaves the default size.
        unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
    }
    let restore_opts = RestoreOptions {
        cancel: opts.cancel.clone(),
        ..RestoreOptions::new(TargetMode::New)
    };
    let backup_opts = BackupOptions {
        backup_id: Some(m.backup_id.clone()),
        volume_id: m.volume_id.clone(),
        parent_id: parent_id.clone(),
        data_timestamp: m.data_timestamp.clone(),
        volume_metadata: m.volume_metadata.clone(),
        expected_size: Some(m.size),
        labels: m.labels.clone(),
        created: Some((m.created_unix, m.created_at.clone())),
        cancel: opts.cancel.clone(),
        ..Default::default()
    };
    let (restored, backed_up) = std::thread::scope(|s| {
        let restore = s.spawn(|| {
            let mut sink = WriteSink(writer);
            // The sink (the pipe's writing end) is dropped when this returns, so the backup
            // sees the end of the volume, or a short one if the restore failed.
            run_restore_to_stream(src, &m.backup_id, &mut sink, &restore_opts, None)
        });
        let source = VolumeSource::Reader {
            name: name.clone(),
            reader: Box::new(reader),
        };
        let backed_up = run_backup(dst, source, &backup_opts, progress);
        let restored = restore
            .join()
            .unwrap_or_else(|_| Err(Error::Internal(format!("restore of {name} panicked"))));
        (restored, backed_up)
    });
    let report = match (restored, backed_up) {
        // Committed: the backup read the whole volume, and the restore verified every chunk
        // before it wrote it.
        (_, Ok((_, _, report))) => report,
        (Ok(_), Err(e)) => return Err(e),
        // The backup stopped first and closed the pipe: its error is the cause.
        (Err(Error::Io { source, .. }), Err(e))
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            return Err(e);
        }
        // The restore failed first: the backup then saw a short volume.
        (Err(e), Err(_)) => return Err(e),
    };
    Ok(CopiedBackup {
        backup_id: m.backup_id.clone(),
        volume_id: m.volume_id.clone(),
        size: m.size,
        bytes_written: report.bytes_new,
        parent_id,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
