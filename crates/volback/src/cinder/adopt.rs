//! Cinder backups adopted into a volback container: each becomes a volback backup with the same
//! backup id, and a record Cinder's `backup-import` accepts for the volback driver.
//!
//! A Cinder backup is adopted as its volume, streamed (`cinder/stream.rs`) from its chain's
//! objects (every one MD5-checked) through a pipe into a volback backup, hashed with BLAKE3
//! on the way. Then the new backup is restored to a hash, writing no volume: a backup whose
//! restore differs from what went in is deleted again and the adoption fails. So
//!
//! - an adopted chain is deduplicated as volback's own backups are (each link an incremental of
//!   the adopted parent, whose chunks guide the cut), and stores what volback's backups of the
//!   same volumes would;
//! - each adopted backup is self-contained: any of them can be deleted, whatever Cinder's chain
//!   rules were;
//! - it keeps Cinder's backup id, volume id, creation time and volume metadata, and carries the
//!   label `origin=cinder`;
//! - a backup is committed as any volback backup is, create-only and last: an interrupted
//!   adoption leaves nothing visible, and running it again skips the backups already adopted
//!   (after checking they are the same backup: volume and size) and adopts the rest. Records are
//!   emitted for both.
//!
//! The record is what Cinder's `backup-export` prints for a backup of the volback driver:
//! `backup_service` and `backup_url`, the base64 of the backup's fields in JSON with the
//! volback driver's `driver_info` (its exported record, pinning the manifest by BLAKE3). Given
//! the old driver's export of a backup, its fields (name, description, availability zone, …)
//! are kept and only the driver's own ones replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::backup::source::VolumeSource;
use crate::backup::{BackupOptions, run_backup};
use crate::container::Container;
use crate::driver::Driver;
use crate::error::{Error, RecordError, Result};
use crate::format::keys::manifest_key;
use crate::format::record::BackupRecord;
use crate::restore::{RestoreOptions, TargetMode, WriteSink, run_restore_to_stream};
use crate::store::ObjectStore;

use super::plan::Plan;
use super::stream::write_volume;
use super::{CinderBackup, find_chain, readable_backups, volume_size};

/// The Cinder driver class the records name (`backup_service`).
pub const VOLBACK_CINDER_DRIVER: &str = "volback.cinder.VolbackBackupDriver";

/// What the caller asks of an adoption.
#[derive(Debug, Clone, Default)]
pub struct AdoptOptions {
    /// These backups (empty: every backup found). The parents of a backup need not be
    /// adopted: without its parent a backup is adopted whole.
    pub backup_ids: Vec<String>,
    /// Only backups of this volume.
    pub volume_id: Option<String>,
    /// The old driver's `backup-export` records (their `backup_url`, base64 JSON, or the JSON
    /// object with `backup_service` and `backup_url`), whose fields the new records keep.
    pub cinder_exports: Vec<String>,
    /// Set to stop: the backup being adopted fails with [`Error::Cancelled`] and commits
    /// nothing; those adopted before it stay.
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What Cinder's `backup-import` takes: `cinder backup-import BACKUP_SERVICE BACKUP_URL`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CinderImportRecord {
    pub backup_service: String,
    pub backup_url: String,
}

/// One Cinder backup adopted (now, or by an earlier run).
#[derive(Debug, Clone, Serialize)]
pub struct AdoptedBackup {
    pub backup_id: String,
    pub volume_id: String,
    /// The volback parent (the Cinder parent, where it is adopted).
    pub parent_id: Option<String>,
    /// Volume bytes.
    pub size: u64,
    /// Adopted by an earlier run: nothing read or written now.
    pub already_adopted: bool,
    /// Cinder objects read (each MD5-checked) and bytes written to the container.
    pub objects_read: u64,
    pub bytes_written: u64,
    /// BLAKE3 of the volume, as read from Cinder's objects and as restored from the adopted
    /// backup (equal, or the adoption failed).
    pub volume_blake3: Option<String>,
    pub record: CinderImportRecord,
    pub elapsed_s: f64,
}

/// What an adoption did (the CLI's `cinder adopt --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdoptReport {
    pub adopted: Vec<AdoptedBackup>,
    /// Volume bytes streamed from Cinder's objects, and bytes written to the container.
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub elapsed_s: f64,
}

/// Adopts the selected Cinder backups found under `prefix` of `source` into `dst`, parents
/// before children.
pub fn adopt_cinder_backups(
    source: &dyn ObjectStore,
    prefix: &str,
    dst: &Container,
    opts: &AdoptOptions,
) -> Result<AdoptReport> {
    let started = Instant::now();
    let backups = readable_backups(source, prefix)?;
    let exports = decode_exports(&opts.cinder_exports)?;
    let mut selected: Vec<&CinderBackup> = Vec::new();
    for b in &backups {
        let m = &b.manifest;
        if (opts.backup_ids.is_empty() || opts.backup_ids.contains(&m.backup_id))
            && opts.volume_id.as_ref().is_none_or(|v| *v == m.volume_id)
        {
            selected.push(b);
        }
    }
    for id in &opts.backup_ids {
        if !selected.iter().any(|b| &b.manifest.backup_id == id) {
            return Err(Error::BackupNotFound {
                id: id.clone(),
                container: "Cinder backups".into(),
            });
        }
    }
    // Parents first: by the length of each backup's chain, then by creation time.
    let mut depth = BTreeMap::new();
    for b in &selected {
        depth.insert(
            b.manifest.backup_id.clone(),
            find_chain(&backups, &b.manifest.backup_id)?.len(),
        );
    }
    selected.sort_by(|a, b| {
        (depth[&a.manifest.backup_id], &a.manifest.created_at)
            .cmp(&(depth[&b.manifest.backup_id], &b.manifest.created_at))
    });
    let children: BTreeSet<(String, String)> = selected
        .iter()
        .filter_map(|b| {
            let p = b.manifest.parent_id.clone()?;
            Some((p, b.manifest.backup_id.clone()))
        })
        .collect();
    let mut report = AdoptReport::default();
    for b in selected {
        let dependents = children
            .iter()
            .filter(|(p, _)| *p == b.manifest.backup_id)
            .count();
        let export = exports.get(&b.manifest.backup_id);
        let one = adopt_one(source, &backups, b, dst, opts, export, dependents)?;
        if !one.already_adopted {
            report.bytes_read += one.size;
            report.bytes_written += one.bytes_written;
        }
        report.adopted.push(one);
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The old driver's exports, decoded, by backup id.
fn decode_exports(texts: &[String]) -> Result<BTreeMap<String, serde_json::Map<String, Value>>> {
    let mut out = BTreeMap::new();
    for text in texts {
        let text = text.trim();
        let url = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => match o.get("backup_url") {
                Some(Value::String(u)) => u.clone(),
                _ => {
                    return Err(Error::Record(RecordError::Malformed(
                        "a Cinder export without backup_url".into(),
                    )));
                }
            },
            _ => text.to_string(),
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(url.trim())
            .map_err(|e| {
                Error::Record(RecordError::Malformed(format!(
                    "a Cinder export's backup_url is not base64: {e}"
                )))
            })?;
        let fields: serde_json::Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|e| {
                Error::Record(RecordError::Malformed(format!(
                    "a Cinder export's backup_url is not JSON: {e}"
                )))
            })?;
        let Some(Value::String(id)) = fields.get("id") else {
            return Err(Error::Record(RecordError::Malformed(
                "a Cinder export without a backup id".into(),
            )));
        };
        out.insert(id.clone(), fields);
    }
    Ok(out)
}

/// A writer that hashes what it forwards.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes the pipe between Cinder's objects and the backup holds.
const PIPE_BYTES: libc::c_int = 1 << 20;

fn adopt_one(
    source: &dyn ObjectStore,
    backups: &[CinderBackup],
    b: &CinderBackup,
    dst: &Container,
    opts: &AdoptOptions,
    export: Option<&serde_json::Map<String, Value>>,
    dependents: usize,
) -> Result<AdoptedBackup> {
    let started = Instant::now();
    let m = &b.manifest;
    let links = find_chain(backups, &m.backup_id)?;
    let size = volume_size(&links);
    if dst.backup_id_taken(&m.backup_id)? {
        let (have, _) = dst.read_manifest(&m.backup_id)?;
        if (&have.volume_id, have.size) != (&m.volume_id, size) {
            return Err(Error::BackupExists {
                id: m.backup_id.clone(),
                container: dst.url().into(),
            });
        }
        return Ok(AdoptedBackup {
            backup_id: m.backup_id.clone(),
            volume_id: m.volume_id.clone(),
            parent_id: have.parent_id.clone(),
            size,
            already_adopted: true,
            objects_read: 0,
            bytes_written: 0,
            volume_blake3: None,
            record: import_record(dst, b, size, export, dependents)?,
            elapsed_s: started.elapsed().as_secs_f64(),
        });
    }
    let parent_id = match &m.parent_id {
        Some(p) if dst.read_manifest(p).is_ok() => Some(p.clone()),
        _ => None,
    };
    let plan = Plan::new(&links, size)?;
    let name = format!("Cinder backup {}", m.backup_id);
    let (reader, writer) = std::io::pipe().map_err(|e| Error::io("create pipe", &name, e))?;
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETPIPE_SZ on a pipe this function owns; failure leaves the default size.
        unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
    }
    let volume_metadata = m
        .volume_meta
        .as_ref()
        .map(|s| serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())));
    let backup_opts = BackupOptions {
        backup_id: Some(m.backup_id.clone()),
        volume_id: m.volume_id.clone(),
        parent_id: parent_id.clone(),
        data_timestamp: Some(m.created_at.clone()).filter(|s| !s.is_empty()),
        volume_metadata,
        expected_size: Some(size),
        labels: BTreeMap::from([("origin".to_string(), "cinder".to_string())]),
        created: cinder_time(&m.created_at).map(|unix| (unix, crate::clock::rfc3339(unix))),
        cancel: opts.cancel.clone(),
        ..Default::default()
    };
    let (streamed, backed_up) = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            // The pipe's writing end is dropped when this returns: the backup sees the end of
            // the volume, or a short one if reading Cinder's objects failed.
            let mut out = Hashing {
                inner: writer,
                hasher: blake3::Hasher::new(),
            };
            let read = write_volume(source, &links, &plan, &name, &mut out)?;
            Ok::<_, Error>((read, out.hasher.finalize()))
        });
        let backed_up = run_backup(
            dst,
            VolumeSource::Reader {
                name: name.clone(),
                reader: Box::new(reader),
            },
            &backup_opts,
            None,
        );
        let streamed = stream
            .join()
            .unwrap_or_else(|_| Err(Error::Internal(format!("reading {name} panicked"))));
        (streamed, backed_up)
    });
    let ((objects_read, want), backup_report) = match (streamed, backed_up) {
        (Ok(s), Ok((_, _, r))) => (s, r),
        (Ok(_), Err(e)) => return Err(e),
        // The backup stopped first and closed the pipe: its error is the cause.
        (Err(Error::Io { source, .. }), Err(e))
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            return Err(e);
        }
        (Err(e), Ok((_, _, _))) => {
            // Cannot commit a backup of a stream that failed (its size is checked), but never
            // leave one behind if it did.
            let _ = dst.delete_backup(&m.backup_id);
            return Err(e);
        }
        (Err(e), Err(_)) => return Err(e),
    };
    let got = restored_hash(dst, &m.backup_id, opts)?;
    if got != want {
        dst.delete_backup(&m.backup_id)?;
        return Err(Error::corrupt(
            &manifest_key(&m.backup_id),
            0,
            format!(
                "the adopted backup restores to BLAKE3 {}, Cinder's objects hold {}: deleted again",
                got.to_hex(),
                want.to_hex()
            ),
        ));
    }
    Ok(AdoptedBackup {
        backup_id: m.backup_id.clone(),
        volume_id: m.volume_id.clone(),
        parent_id,
        size,
        already_adopted: false,
        objects_read,
        bytes_written: backup_report.bytes_new,
        volume_blake3: Some(want.to_hex().to_string()),
        record: import_record(dst, b, size, export, dependents)?,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// BLAKE3 of backup `id` of `dst`, restored to a hash: every chunk checked, no volume written.
fn restored_hash(dst: &Container, id: &str, opts: &AdoptOptions) -> Result<blake3::Hash> {
    let mut sink = WriteSink(Hashing {
        inner: std::io::sink(),
        hasher: blake3::Hasher::new(),
    });
    let restore_opts = RestoreOptions {
        cancel: opts.cancel.clone(),
        // Zero extents are written (as zeros) to the sink: they are part of the hash.
        ..RestoreOptions::new(TargetMode::Existing)
    };
    run_restore_to_stream(dst, id, &mut sink, &restore_opts, None)?;
    Ok(sink.0.hasher.finalize())
}

/// The `backup-import` record of adopted backup `b`.
fn import_record(
    dst: &Container,
    b: &CinderBackup,
    size: u64,
    export: Option<&serde_json::Map<String, Value>>,
    dependents: usize,
) -> Result<CinderImportRecord> {
    let m = &b.manifest;
    let (have, _) = dst.read_manifest(&m.backup_id)?;
    let exported = Driver::with_container(dst.clone()).export_record(&BackupRecord {
        id: m.backup_id.clone(),
        ..Default::default()
    })?;
    let driver_record: Value = serde_json::from_str(&exported)
        .map_err(|e| Error::Internal(format!("an exported record is not JSON: {e}")))?;
    const GIB: u64 = 1 << 30;
    let mut fields = match export {
        Some(old) => old.clone(),
        None => {
            let created = cinder_time(&m.created_at).map(crate::clock::rfc3339);
            let mut f = serde_json::Map::new();
            for (k, v) in [
                ("id", json!(m.backup_id)),
                ("volume_id", json!(m.volume_id)),
                ("parent_id", json!(have.parent_id)),
                ("display_name", json!(m.name)),
                ("display_description", json!(m.description)),
                ("size", json!(size.div_ceil(GIB))),
                ("created_at", json!(created)),
                ("data_timestamp", json!(created)),
                ("snapshot_id", Value::Null),
                ("encryption_key_id", Value::Null),
                ("num_dependent_backups", json!(dependents)),
            ] {
                f.insert(k.into(), v);
            }
            f
        }
    };
    // The volback driver's own fields, whatever the old driver had.
    for (k, v) in [
        ("container", json!(dst.url())),
        ("service", json!(VOLBACK_CINDER_DRIVER)),
        (
            "service_metadata",
            json!(json!({"volback": 1, "manifest": manifest_key(&m.backup_id)}).to_string()),
        ),
        ("object_count", json!(have.stats.object_count)),
        ("parent_id", json!(have.parent_id)),
        ("driver_info", json!({ "volback_record": driver_record })),
    ] {
        fields.insert(k.into(), v);
    }
    let text = serde_json::to_vec(&Value::Object(fields))
        .map_err(|e| Error::Internal(format!("a record does not serialize: {e}")))?;
    Ok(CinderImportRecord {
        backup_service: VOLBACK_CINDER_DRIVER.into(),
        backup_url: base64::engine::general_purpose::STANDARD.encode(text),
    })
}

/// Cinder's `created_at` (`2026-12-05 10:00:00.123456`, or with `T` and a `Z` or `+00:00`), in
/// Unix seconds; None if it is not such a time.
fn cinder_time(text: &str) -> Option<u64> {
    let t = text.trim().replace(' ', "T");
    let t = t.strip_suffix("+00:00").unwrap_or(&t);
    let t = t.strip_suffix('Z').unwrap_or(t);
    let t = t.split('.').next()?;
    let when = humantime::parse_rfc3339(&format!("{t}Z")).ok()?;
    when.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cinder_times_are_read() {
        assert_eq!(cinder_time("1970-01-02 00:00:01"), Some(86401));
        assert_eq!(cinder_time("1970-01-02 00:00:01.250000"), Some(86401));
        assert_eq!(cinder_time("1970-01-02T00:00:01Z"), Some(86401));
        assert_eq!(cinder_time("1970-01-02T00:00:01+00:00"), Some(86401));
        assert_eq!(cinder_time("yesterday"), None);
    }
}
