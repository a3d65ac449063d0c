//! `NativeContainer`: an open container and the operations on it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::{self, to_py};
use crate::progress::{CancelToken, Reporter};
use crate::source::{Located, PyReader, PyWriter, locate};
use volback::backup::source::VolumeSource;
use volback::backup::{BackupOptions, run_backup};
use volback::chunker::ChunkerParams;
use volback::container::Container;
use volback::copy::{CopyOptions, Selection, run_copy};
use volback::crypto::{KdfParams, KeySource};
use volback::driver::Driver;
use volback::format::config::{ContainerConfig, ObjectLock};
use volback::format::record::BackupRecord;
use volback::gc::{GcOptions, run_gc};
use volback::prune::{GroupBy, Policy, PruneOptions, Span, run_prune};
use volback::restore::{RestoreOptions, TargetMode, run_restore_to_stream, run_restore_with};
use volback::store::s3::S3Options;
use volback::store::s3_lock::LockMode;
use volback::verify::{VerifyOptions, run_verify};

/// An open volback container (a filesystem path or `s3://bucket/prefix`).
#[pyclass(module = "volback._volback", frozen)]
pub struct NativeContainer {
    container: Container,
}

/// A key given from Python: a source string (`env:NAME`, `file:PATH`, `cmd:COMMAND`) or the
/// secret itself as bytes.
fn key_source(key: &Bound<'_, PyAny>) -> PyResult<KeySource> {
    if let Ok(spec) = key.extract::<String>() {
        return KeySource::parse(&spec).map_err(to_py);
    }
    match key.extract::<Vec<u8>>() {
        Ok(secret) => Ok(KeySource::secret(secret)),
        Err(_) => Err(errors::config(
            "key must be a source string (env:NAME, file:PATH, cmd:COMMAND) or bytes",
        )),
    }
}

/// S3 settings given from Python (what is `None` comes from the AWS environment and files).
pub(crate) fn s3_options(
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
) -> S3Options {
    S3Options {
        endpoint,
        region,
        access_key_id,
        secret_access_key,
        session_token,
        ..Default::default()
    }
}

pub(crate) fn json(v: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| errors::config(format!("report: {e}")))
}

impl NativeContainer {
    /// The open container.
    pub(crate) fn container(&self) -> &Container {
        &self.container
    }
}

#[pymethods]
impl NativeContainer {
    /// Opens (with `create`, creates) the container at `url`. Settings for a new container:
    /// `zstd_level`, `chunk_avg` (bytes; min and max follow at /4 and x4), `pack_size` (bytes),
    /// `object_lock_days` and `object_lock_mode` (S3 Object Lock retention).
    /// S3 settings not given come from the standard AWS environment and files.
    #[new]
    #[pyo3(signature = (
        url, *, create = false, zstd_level = None, chunk_avg = None, pack_size = None,
        s3_endpoint = None, s3_region = None, s3_access_key_id = None,
        s3_secret_access_key = None, s3_session_token = None, s3_concurrency = None, key = None,
        object_lock_days = None, object_lock_mode = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: String,
        create: bool,
        zstd_level: Option<i32>,
        chunk_avg: Option<u32>,
        pack_size: Option<u64>,
        s3_endpoint: Option<String>,
        s3_region: Option<String>,
        s3_access_key_id: Option<String>,
        s3_secret_access_key: Option<String>,
        s3_session_token: Option<String>,
        s3_concurrency: Option<usize>,
        key: Option<&Bound<'_, PyAny>>,
        object_lock_days: Option<u32>,
        object_lock_mode: Option<String>,
    ) -> PyResult<Self> {
        let key = key.map(key_source).transpose()?;
        let mut init = ContainerConfig::default();
        if let Some(level) = zstd_level {
            init.zstd_level = level;
        }
        if let Some(avg) = chunk_avg {
            init.chunker = ChunkerParams::around(avg)
                .map_err(|e| errors::config(format!("chunk_avg: {e}")))?;
        }
        if let Some(size) = pack_size {
            init.pack_target = size;
        }
        if let Some(days) = object_lock_days {
            let mode = object_lock_mode.as_deref().unwrap_or("compliance");
            init.object_lock = Some(ObjectLock {
                mode: LockMode::parse(mode).map_err(to_py)?,
                days,
            });
        }
        let s3 = S3Options {
            concurrency: s3_concurrency,
            ..s3_options(
                s3_endpoint,
                s3_region,
                s3_access_key_id,
                s3_secret_access_key,
                s3_session_token,
            )
        };
        let container = py
            .detach(|| Container::open_keyed(&url, create, Some(init), &s3, key.as_ref()))
            .map_err(to_py)?;
        Ok(NativeContainer { container })
    }

    /// The container's canonical URL (never with credentials).
    #[getter]
    fn url(&self) -> String {
        self.container.url().to_string()
    }

    /// The container's settings, as JSON (an encrypted container's are sealed: `key_required`
    /// without its key).
    fn config(&self) -> PyResult<String> {
        self.container.keys().map_err(to_py)?;
        json(self.container.config())
    }

    /// True if the container is encrypted.
    #[getter]
    fn encrypted(&self) -> bool {
        self.container.is_encrypted()
    }

    /// The key slots of an encrypted container, as JSON.
    fn keys(&self, py: Python<'_>) -> PyResult<String> {
        json(&py.detach(|| self.container.list_keys()).map_err(to_py)?)
    }

    /// Adds a key (a source string or the secret's bytes); returns the new slot's id.
    fn add_key(&self, py: Python<'_>, new_key: &Bound<'_, PyAny>) -> PyResult<String> {
        let source = key_source(new_key)?;
        py.detach(|| self.container.add_key(&source, KdfParams::default()))
            .map_err(to_py)
    }

    /// Removes key slot `id` (refused for the last one).
    fn remove_key(&self, py: Python<'_>, id: String) -> PyResult<()> {
        py.detach(|| self.container.remove_key(&id)).map_err(to_py)
    }

    /// Replaces the key this container was opened with by `new_key`; returns the new slot's id.
    fn change_key(&self, py: Python<'_>, new_key: &Bound<'_, PyAny>) -> PyResult<String> {
        let source = key_source(new_key)?;
        // The clone's keys record the new slot; this object's still open everything (the
        // master key is unchanged), only `keys()` marks no slot as current.
        let mut c = self.container.clone();
        py.detach(|| c.change_key(&source, KdfParams::default()))
            .map_err(to_py)
    }

    /// Writes, reads back and deletes a probe object.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.container.check_writable()).map_err(to_py)
    }

    /// Backs up `source` (path, descriptor or file object); returns the report as JSON.
    #[pyo3(signature = (
        source, *, backup_id, volume_id, parent_id = None, metadata_json = None,
        data_timestamp = None, expected_size = None, zstd_level = None, size_hint = 0,
        progress = None, cancel = None, labels = None, read = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn backup(
        &self,
        py: Python<'_>,
        source: &Bound<'_, PyAny>,
        backup_id: String,
        volume_id: String,
        parent_id: Option<String>,
        metadata_json: Option<String>,
        data_timestamp: Option<String>,
        expected_size: Option<u64>,
        zstd_level: Option<i32>,
        size_hint: u64,
        progress: Option<Py<PyAny>>,
        cancel: Option<PyRef<'_, CancelToken>>,
        labels: Option<BTreeMap<String, String>>,
        read: Option<String>,
    ) -> PyResult<String> {
        let read = read_options(read.as_deref())?;
        let volume = match locate(source)? {
            Located::Path(p) => VolumeSource::Path(p),
            Located::Stream(obj) => VolumeSource::Reader {
                name: "<python file object>".into(),
                reader: Box::new(PyReader::new(obj)),
            },
        };
        let volume_metadata = match metadata_json {
            Some(text) => Some(
                serde_json::from_str(&text)
                    .map_err(|e| errors::config(format!("volume metadata is not JSON: {e}")))?,
            ),
            None => None,
        };
        let reporter = Reporter::new(
            progress,
            expected_size.unwrap_or(size_hint),
            cancel.as_deref(),
        );
        let opts = BackupOptions {
            backup_id: Some(backup_id),
            volume_id,
            parent_id,
            data_timestamp,
            volume_metadata,
            expected_size,
            zstd_level,
            labels: labels.unwrap_or_default(),
            cancel: Some(reporter.cancel.clone()),
            full_read: read.full_read,
            changes: read.changes,
            map_sample: read.map_sample,
            map_fallback: read.map_fallback,
            full_read_every: read.full_read_every,
            full_read_after: read
                .full_read_after_days
                .map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400)),
            ..Default::default()
        };
        let report = |done: u64| reporter.report(done);
        let res = py.detach(|| run_backup(&self.container, volume, &opts, Some(&report)));
        match res {
            Ok((_, _, r)) => {
                reporter.report(r.size);
                json(&r)
            }
            Err(e) => Err(reporter.take_raised().unwrap_or_else(|| to_py(e))),
        }
    }

    /// Restores a backup onto `target` (path, descriptor, or file object with `write()`);
    /// returns the report as JSON, with the stored volume metadata under `volume_metadata`.
    /// `is_new`: the target reads as zeros (a new volume), so zero extents are skipped (on a
    /// file object, seeked over when it is seekable); otherwise they are written as zeros
    /// (holes punched in a file). A path target with `is_new` must not exist yet.
    #[pyo3(signature = (backup_id, target, *, is_new, sync = true, progress = None, cancel = None))]
    #[allow(clippy::too_many_arguments)]
    fn restore(
        &self,
        py: Python<'_>,
        backup_id: String,
        target: &Bound<'_, PyAny>,
        is_new: bool,
        sync: bool,
        progress: Option<Py<PyAny>>,
        cancel: Option<PyRef<'_, CancelToken>>,
    ) -> PyResult<String> {
        let size = py
            .detach(|| self.container.read_manifest(&backup_id))
            .map_err(to_py)?
            .0
            .size;
        let (mode, stream) = match locate(target)? {
            Located::Path(p) => {
                let is_fd = p.starts_with("/proc/self/fd");
                (target_mode(&p, is_fd, is_new), Err(p))
            }
            Located::Stream(obj) => {
                let mode = if is_new {
                    TargetMode::Zeroed
                } else {
                    TargetMode::Existing
                };
                (mode, Ok(PyWriter::new(obj.bind(py))?))
            }
        };
        let reporter = Reporter::new(progress, size, cancel.as_deref());
        let opts = RestoreOptions {
            sync,
            cancel: Some(reporter.cancel.clone()),
            ..RestoreOptions::new(mode)
        };
        let report = |done: u64| reporter.report(done);
        let res = py.detach(|| match stream {
            Err(path) => run_restore_with(&self.container, &backup_id, &path, &opts, Some(&report)),
            Ok(mut w) => {
                run_restore_to_stream(&self.container, &backup_id, &mut w, &opts, Some(&report))
            }
        });
        match res {
            Ok(r) => {
                let mut v =
                    serde_json::to_value(&r).map_err(|e| errors::config(format!("report: {e}")))?;
                v["volume_metadata"] = r.volume_metadata.clone().unwrap_or_default();
                json(&v)
            }
            Err(e) => Err(reporter.take_raised().unwrap_or_else(|| to_py(e))),
        }
    }

    /// Deletes a backup (its space comes back with gc).
    fn delete(&self, py: Python<'_>, backup_id: String) -> PyResult<()> {
        py.detach(|| self.container.delete_backup(&backup_id))
            .map_err(to_py)
    }

    /// The manifest of a backup, as JSON.
    fn manifest(&self, py: Python<'_>, backup_id: String) -> PyResult<String> {
        let (m, _) = py
            .detach(|| self.container.read_manifest(&backup_id))
            .map_err(to_py)?;
        json(&m)
    }

    /// Every backup, oldest first, as a JSON list (an unreadable manifest is an object with
    /// `error` and `message`).
    fn list(&self, py: Python<'_>) -> PyResult<String> {
        let all = py.detach(|| self.container.list_backups()).map_err(to_py)?;
        let items: Vec<serde_json::Value> = all
            .into_iter()
            .map(|m| match m {
                Ok(m) => serde_json::to_value(&m).unwrap_or_default(),
                Err(e) => serde_json::json!({"error": e.kind(), "message": e.to_string()}),
            })
            .collect();
        json(&items)
    }

    /// Brings the existing volume at `target` (a path) back to the backup, rewriting only
    /// what differs, then checks it; JSON report.
    #[pyo3(signature = (backup_id, target, *, progress = None, cancel = None))]
    fn restore_differential(
        &self,
        py: Python<'_>,
        backup_id: String,
        target: String,
        progress: Option<Py<PyAny>>,
        cancel: Option<PyRef<'_, CancelToken>>,
    ) -> PyResult<String> {
        let (manifest, _) = py
            .detach(|| self.container.read_manifest(&backup_id))
            .map_err(to_py)?;
        let reporter = Reporter::new(progress, manifest.size, cancel.as_deref());
        let report = |done: u64| reporter.report(done);
        let res = py.detach(|| {
            volback::restore::run_restore_differential(
                &self.container,
                &backup_id,
                Path::new(&target),
                Some(&report),
                Some(&reporter.cancel),
            )
        });
        match res {
            Ok(r) => {
                let mut v =
                    serde_json::to_value(&r).map_err(|e| errors::config(format!("report: {e}")))?;
                v["volume_metadata"] = manifest.volume_metadata.clone().unwrap_or_default();
                json(&v)
            }
            Err(e) => Err(reporter.take_raised().unwrap_or_else(|| to_py(e))),
        }
    }

    /// `length` bytes of a backup's volume from `offset` (every chunk verified).
    fn read<'py>(
        &self,
        py: Python<'py>,
        backup_id: String,
        offset: u64,
        length: u64,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let mut out = Vec::new();
        py.detach(|| {
            volback::restore::read_range(&self.container, &backup_id, offset, length, &mut out)
        })
        .map_err(to_py)?;
        Ok(pyo3::types::PyBytes::new(py, &out))
    }

    /// Serves a backup over NBD (a Unix socket by default, or TCP) on a background thread.
    #[pyo3(signature = (backup_id, *, socket=None, tcp=None, cache_mib=256, read_ahead_mib=32))]
    fn serve_nbd(
        &self,
        py: Python<'_>,
        backup_id: String,
        socket: Option<String>,
        tcp: Option<String>,
        cache_mib: u64,
        read_ahead_mib: u64,
    ) -> PyResult<crate::nbd_server::NativeNbdServer> {
        let mib = |n: u64| {
            n.checked_mul(1 << 20)
                .ok_or_else(|| to_py(volback::Error::Config(format!("{n} MiB is too large"))))
        };
        let options = volback::serve::ServeOptions {
            cache_bytes: mib(cache_mib)?,
            read_ahead: mib(read_ahead_mib)?,
        };
        crate::nbd_server::NativeNbdServer::start(
            py,
            &self.container,
            &backup_id,
            socket,
            tcp,
            options,
        )
    }

    /// The self-describing record of a backup (text another host imports).
    fn export_record(&self, py: Python<'_>, backup_id: String) -> PyResult<String> {
        let driver = Driver::with_container(self.container.clone());
        let record = BackupRecord {
            id: backup_id,
            ..Default::default()
        };
        py.detach(|| driver.export_record(&record)).map_err(to_py)
    }

    /// Checks an exported record against this container; returns the backup's fields as JSON.
    fn import_record(&self, py: Python<'_>, text: String) -> PyResult<String> {
        let driver = Driver::with_container(self.container.clone());
        // This container, which the caller opened, whatever container the record names (a
        // copy of it, say): the caller's choice, as `volback import --container`.
        let url = self.container.url().to_string();
        let record = py
            .detach(|| driver.import_record(&text, Some(&url)))
            .map_err(to_py)?;
        json(&record)
    }

    /// Checks that backups can be restored (every chunk re-read with `read_data`); JSON report.
    #[pyo3(signature = (backup_id = None, *, read_data = false))]
    fn verify(
        &self,
        py: Python<'_>,
        backup_id: Option<String>,
        read_data: bool,
    ) -> PyResult<String> {
        let opts = VerifyOptions {
            backup_id,
            read_data,
            ..VerifyOptions::default()
        };
        let r = py
            .detach(|| run_verify(&self.container, &opts))
            .map_err(to_py)?;
        json(&r)
    }

    /// Brings back objects a plain DELETE hid behind delete markers (a container with Object
    /// Lock); returns how many.
    fn undelete(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.container.undelete()).map_err(to_py)
    }

    /// Copies the selected backups (all, without a selection) into `dst`, writing only what
    /// it lacks; JSON report.
    #[pyo3(signature = (dst, *, backup_ids = None, volume_id = None, labels = None, allow_plaintext = false))]
    fn copy_to(
        &self,
        py: Python<'_>,
        dst: &NativeContainer,
        backup_ids: Option<Vec<String>>,
        volume_id: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        allow_plaintext: bool,
    ) -> PyResult<String> {
        let opts = CopyOptions {
            selection: Selection {
                backup_ids: backup_ids.unwrap_or_default(),
                volume_id,
                labels: labels.unwrap_or_default(),
            },
            allow_plaintext,
            cancel: None,
        };
        let r = py
            .detach(|| run_copy(&self.container, &dst.container, &opts, None))
            .map_err(to_py)?;
        json(&r)
    }

    /// Collects garbage (safe alongside anything); JSON report.
    #[pyo3(signature = (*, dry_run = false, max_unused = None, clock_skew = None, min_age = None))]
    fn gc(
        &self,
        py: Python<'_>,
        dry_run: bool,
        max_unused: Option<f64>,
        clock_skew: Option<f64>,
        min_age: Option<f64>,
    ) -> PyResult<String> {
        let d = GcOptions::default();
        let secs = |s: Option<f64>, default: Duration| -> PyResult<Duration> {
            match s {
                None => Ok(default),
                Some(s) => Duration::try_from_secs_f64(s)
                    .map_err(|_| errors::config(format!("{s} is not a duration in seconds"))),
            }
        };
        let opts = GcOptions {
            dry_run,
            max_unused: max_unused.unwrap_or(d.max_unused),
            clock_skew: secs(clock_skew, d.clock_skew)?,
            min_age: secs(min_age, d.min_age)?,
            ..d
        };
        let r = py
            .detach(|| run_gc(&self.container, &opts))
            .map_err(to_py)?;
        json(&r)
    }

    /// Applies retention rules (see `volback::prune`) per volume, or per value of label
    /// `group_by_label`; returns the report as JSON.
    #[pyo3(signature = (
        *, keep_last = None, keep_hourly = None, keep_daily = None, keep_weekly = None,
        keep_monthly = None, keep_yearly = None, keep_within = None, group_by_label = None,
        labels = None, dry_run = false, allow_removing_newest = false, gc = true,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn prune(
        &self,
        py: Python<'_>,
        keep_last: Option<u32>,
        keep_hourly: Option<u32>,
        keep_daily: Option<u32>,
        keep_weekly: Option<u32>,
        keep_monthly: Option<u32>,
        keep_yearly: Option<u32>,
        keep_within: Option<String>,
        group_by_label: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        dry_run: bool,
        allow_removing_newest: bool,
        gc: bool,
    ) -> PyResult<String> {
        let policy = Policy {
            last: keep_last,
            hourly: keep_hourly,
            daily: keep_daily,
            weekly: keep_weekly,
            monthly: keep_monthly,
            yearly: keep_yearly,
            within: keep_within
                .as_deref()
                .map(Span::parse)
                .transpose()
                .map_err(to_py)?,
        };
        let opts = PruneOptions {
            policy,
            group_by: group_by_label.map_or(GroupBy::Volume, GroupBy::Label),
            labels: labels.unwrap_or_default(),
            dry_run,
            allow_removing_newest,
            gc: gc.then(GcOptions::default),
        };
        let r = py
            .detach(|| run_prune(&self.container, &opts))
            .map_err(to_py)?;
        json(&r)
    }
}

/// How to treat a restore target. A descriptor's file exists already: when it is empty (a file
/// opened `'wb'`, as Cinder's manager opens a file-backed volume) it reads as zeros, so zero
/// extents are skipped; with data in it, zeros are written. A block device is new as the caller
/// says. A path with `is_new` must not exist yet (it is written under a temporary name).
fn target_mode(path: &Path, is_fd: bool, is_new: bool) -> TargetMode {
    match std::fs::metadata(path) {
        Ok(m) if is_fd && m.is_file() && m.len() == 0 => TargetMode::Zeroed,
        Ok(m) if is_fd && m.is_file() => TargetMode::Existing,
        _ if is_new => TargetMode::New,
        _ => TargetMode::Existing,
    }
}

/// How a backup reads its volume, as the Python side hands it over (JSON): `full_read`,
/// a change map (`{"file": PATH, "format": F}`, `{"text": T, "name": N, "format": F}` or
/// `{"nbd": URI, "bitmap": NAME}`), the sampled check and the full-read policy.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadOptions {
    #[serde(default)]
    full_read: bool,
    #[serde(default)]
    changes: Option<MapSpec>,
    #[serde(default)]
    map_sample: Option<f64>,
    #[serde(default)]
    map_fallback: bool,
    #[serde(default)]
    full_read_every: Option<u32>,
    #[serde(default)]
    full_read_after_days: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum MapSpec {
    File {
        file: std::path::PathBuf,
        format: String,
    },
    Text {
        text: String,
        name: String,
        format: String,
    },
    Nbd {
        nbd: String,
        bitmap: String,
    },
}

/// What [`ReadOptions`] says, with the change map's source built.
struct Read {
    full_read: bool,
    changes: Option<volback::change_map::MapSource>,
    map_sample: Option<f64>,
    map_fallback: bool,
    full_read_every: Option<u32>,
    full_read_after_days: Option<u32>,
}

fn read_options(json: Option<&str>) -> PyResult<Read> {
    use volback::change_map::{MapKind, MapSource};
    let o: ReadOptions = match json {
        Some(t) => serde_json::from_str(t)
            .map_err(|e| errors::config(format!("read options are not valid: {e}")))?,
        None => ReadOptions::default(),
    };
    let kind = |f: &str| MapKind::of_file_format(f).map_err(to_py);
    let changes = match o.changes {
        None => None,
        Some(MapSpec::File { file, format }) => Some(MapSource::File {
            path: file,
            kind: kind(&format)?,
        }),
        Some(MapSpec::Text { text, name, format }) => Some(MapSource::Text {
            name,
            text,
            kind: kind(&format)?,
        }),
        Some(MapSpec::Nbd { nbd, bitmap }) => Some(MapSource::Nbd { uri: nbd, bitmap }),
    };
    Ok(Read {
        full_read: o.full_read,
        changes,
        map_sample: o.map_sample,
        map_fallback: o.map_fallback,
        full_read_every: o.full_read_every,
        full_read_after_days: o.full_read_after_days,
    })
}
