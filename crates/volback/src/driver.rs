//! The backup driver: Cinder's verbs over volback containers.
//!
//! A block-storage service calls [`Driver`] the way Cinder's backup manager calls a backup
//! driver: it owns the backup records (its database rows) and hands them in; the driver reads
//! and writes the container and returns the record fields it changed. Unlike Cinder's chunked
//! driver, every backup is self-contained (restore never replays a chain), any link of a chain
//! can be deleted, a grown or shrunk volume backs up incrementally, and an exported record is
//! enough to restore on another host.
//!
//! Volume metadata follows Cinder's `get_metadata`/`put_metadata`: the service implements
//! [`VolumeMetadata`]; the driver asks it for the volume's document when backing up, stores the
//! document in the manifest, and hands it back through `put_metadata` on restore.

use std::path::Path;
use std::sync::Arc;

use crate::backup::source::VolumeSource;
use crate::backup::{BackupOptions, BackupReport, Progress, run_backup};
use crate::container::{Container, ContainerUrl, manifest_key};
use crate::error::{Error, RecordError, Result};
use crate::format::config::ContainerConfig;
use crate::format::record::{BackupRecord, ExportedRecord, RECORD_FORMAT, RECORD_VERSION};
use crate::ids::Hash;
use crate::restore::locations::{DEFAULT_MEM_ENTRIES, LocationTable};
use crate::restore::{RestoreReport, TargetMode, check_complete, run_restore};
use crate::store::s3::S3Options;

/// The service's side of Cinder's `get_metadata` / `put_metadata`: an opaque JSON document per
/// volume.
pub trait VolumeMetadata: Send + Sync {
    /// The document to store with a backup of `volume_id` (None: nothing to store).
    fn get_metadata(&self, volume_id: &str) -> Result<Option<serde_json::Value>>;
    /// Applies a document restored from a backup to `volume_id`.
    fn put_metadata(&self, volume_id: &str, doc: &serde_json::Value) -> Result<()>;
}

/// Driver settings.
#[derive(Clone, Default)]
pub struct DriverConfig {
    /// Default container URL, used when a record names none.
    pub container: String,
    /// Create missing containers (Cinder's `backup_create_containers`, default true in CLI).
    pub create_container: bool,
    /// Settings for containers this driver creates.
    pub init: Option<ContainerConfig>,
    /// zstd level override for backups.
    pub zstd_level: Option<i32>,
    /// S3 settings for `s3://` containers (unset fields come from the environment).
    pub s3: S3Options,
    /// Containers besides `container` that a backup record may name (the service's records of
    /// backups made under an earlier setting). A record naming any other container is
    /// refused: a record never chooses where the driver reads or writes.
    pub allowed_containers: Vec<String>,
    /// Key of the containers (Cinder's `backup_volback_key`): a container this driver creates
    /// with a key is encrypted; an encrypted one is opened with it (wrong: [`Error::WrongKey`]).
    pub key: Option<crate::crypto::KeySource>,
}

/// Record fields a backup sets (Cinder applies them with `backup.update()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordUpdates {
    pub container: String,
    pub service_metadata: String,
    pub object_count: u64,
    pub size: u64,
    pub parent_id: Option<String>,
}

/// The result of [`Driver::backup`].
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    pub updates: RecordUpdates,
    pub report: BackupReport,
}

/// The backup driver.
pub struct Driver {
    config: DriverConfig,
    metadata: Option<Arc<dyn VolumeMetadata>>,
    /// An already-open container (used instead of the URL; tests and embedding).
    fixed: Option<Container>,
}

impl Driver {
    /// A driver with the given settings.
    pub fn new(config: DriverConfig) -> Self {
        Driver {
            config,
            metadata: None,
            fixed: None,
        }
    }

    /// A driver over an already-open container.
    pub fn with_container(container: Container) -> Self {
        Driver {
            config: DriverConfig {
                container: container.url().to_string(),
                ..Default::default()
            },
            metadata: None,
            fixed: Some(container),
        }
    }

    /// Connects the service's volume metadata API.
    pub fn with_metadata(mut self, api: Arc<dyn VolumeMetadata>) -> Self {
        self.metadata = Some(api);
        self
    }

    /// Support for deleting backups that have dependents: always (no chain dependencies).
    pub const SUPPORT_FORCE_DELETE: bool = true;

    /// The container a record names (`url`; None: the configured one), if this driver may use
    /// it: the configured container or one of `allowed_containers`, compared as normalised
    /// URLs (`file:///a/b` and `/a/b/` are the same container).
    fn container(&self, url: Option<&str>, create: bool) -> Result<Container> {
        let configured = match &self.fixed {
            Some(c) => c.url().to_string(),
            None => self.config.container.clone(),
        };
        if let Some(url) = url {
            let same = |a: &str| {
                matches!(
                    (ContainerUrl::parse(a), ContainerUrl::parse(url)),
                    (Ok(a), Ok(b)) if a == b
                )
            };
            if !same(&configured) && !self.config.allowed_containers.iter().any(|a| same(a)) {
                return Err(RecordError::ForeignContainer {
                    container: url.into(),
                    configured,
                }
                .into());
            }
        }
        self.open_allowed(url, create)
    }

    /// Opens `url` (None: the configured container), which the caller has allowed.
    fn open_allowed(&self, url: Option<&str>, create: bool) -> Result<Container> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        let url = url.unwrap_or(&self.config.container);
        if url.is_empty() {
            return Err(Error::Config("no container configured".into()));
        }
        Container::open_keyed(
            url,
            create && self.config.create_container,
            self.config.init.clone(),
            &self.config.s3,
            self.config.key.as_ref(),
        )
    }

    /// Validates the configuration and that the default container is reachable and writable.
    pub fn check_for_setup_error(&self) -> Result<()> {
        let c = self.container(None, true)?;
        c.check_writable()
    }

    /// Backs up `volume` as `record` (incremental if `record.parent_id` is set). Returns the
    /// record fields to update and a report.
    pub fn backup(
        &self,
        record: &BackupRecord,
        volume: VolumeSource,
        progress: Option<Progress<'_>>,
    ) -> Result<BackupOutcome> {
        let container = self.container(record.container.as_deref(), true)?;
        let volume_metadata = match &self.metadata {
            Some(api) => api.get_metadata(&record.volume_id)?,
            None => None,
        };
        let opts = BackupOptions {
            backup_id: Some(record.id.clone()),
            volume_id: record.volume_id.clone(),
            parent_id: record.parent_id.clone(),
            data_timestamp: record.data_timestamp.clone(),
            volume_metadata,
            expected_size: None,
            lease_ttl: None,
            zstd_level: self.config.zstd_level,
            dedup_mem_keys: None,
            cancel: None,
            labels: Default::default(),
            full_read: false,
            created: None,
            ..Default::default()
        };
        self.backup_with(&container, volume, &opts, progress)
    }

    /// Backs up with explicit options (the CLI's path).
    pub fn backup_with(
        &self,
        container: &Container,
        volume: VolumeSource,
        opts: &BackupOptions,
        progress: Option<Progress<'_>>,
    ) -> Result<BackupOutcome> {
        let (_, _, report) = run_backup(container, volume, opts, progress)?;
        Ok(BackupOutcome {
            updates: RecordUpdates {
                container: container.url().to_string(),
                service_metadata: report.manifest_key.clone(),
                object_count: report.object_count,
                size: report.size,
                parent_id: report.parent_id.clone(),
            },
            report,
        })
    }

    /// Opens the container a record names (or the default), without creating it; a container
    /// this driver is not configured for is refused.
    pub fn open_container(&self, url: Option<&str>) -> Result<Container> {
        self.container(url, false)
    }

    /// Restores `record` onto `target`. `target_is_new` allows sparse restore (Cinder's
    /// `volume_is_new`); otherwise zero extents are written as zeros. The stored volume metadata
    /// is handed to `put_metadata` for `record.volume_id`.
    pub fn restore(
        &self,
        record: &BackupRecord,
        target: &Path,
        target_is_new: bool,
    ) -> Result<RestoreReport> {
        let container = self.container(record.container.as_deref(), false)?;
        let mode = if target_is_new {
            TargetMode::New
        } else {
            TargetMode::Existing
        };
        let report = run_restore(&container, &record.id, target, mode, None)?;
        if let (Some(api), Some(doc)) = (&self.metadata, &report.volume_metadata) {
            api.put_metadata(&record.volume_id, doc)?;
        }
        Ok(report)
    }

    /// Deletes a backup. Other backups, including incrementals of this one, are unaffected:
    /// each manifest lists every chunk it needs, and chunks are reclaimed only by the garbage
    /// collector once no manifest needs them.
    pub fn delete_backup(&self, record: &BackupRecord) -> Result<()> {
        let container = self.container(record.container.as_deref(), false)?;
        container.delete_backup(&record.id)
    }

    /// The volume metadata document stored with a backup.
    pub fn get_metadata(&self, record: &BackupRecord) -> Result<Option<serde_json::Value>> {
        let container = self.container(record.container.as_deref(), false)?;
        Ok(container.read_manifest(&record.id)?.0.volume_metadata)
    }

    /// Exports a self-describing record of a committed backup.
    pub fn export_record(&self, record: &BackupRecord) -> Result<String> {
        let container = self.container(record.container.as_deref(), false)?;
        let (m, bytes) = container.read_manifest(&record.id)?;
        let exported = ExportedRecord {
            format: RECORD_FORMAT.into(),
            version: RECORD_VERSION,
            container: container.url().into(),
            manifest_key: manifest_key(&m.backup_id),
            manifest_size: bytes.len() as u64,
            manifest_blake3: Hash::of(&bytes).to_hex(),
            backup: BackupRecord {
                id: m.backup_id.clone(),
                volume_id: m.volume_id.clone(),
                container: Some(container.url().into()),
                parent_id: m.parent_id.clone(),
                size: m.size,
                object_count: m.stats.object_count,
                service_metadata: Some(manifest_key(&m.backup_id)),
                data_timestamp: m.data_timestamp.clone(),
            },
        };
        exported.to_text()
    }

    /// Imports an exported record: validates it, checks that the container holds exactly the
    /// manifest it describes and every object that manifest needs, and returns the backup record
    /// to register. `container` is where the caller imports it (a copy of the exporting
    /// container, say): the caller's choice. Without it, the record's own container must be
    /// one this driver is configured for ([`RecordError::ForeignContainer`] otherwise).
    pub fn import_record(&self, text: &str, container: Option<&str>) -> Result<BackupRecord> {
        let r = ExportedRecord::parse(text)?;
        let c = match container {
            Some(url) => self.open_allowed(Some(url), false)?,
            None => self.container(Some(&r.container), false)?,
        };
        let bytes = match c.store().get(&r.manifest_key) {
            Ok(b) => b,
            Err(Error::MissingObject { key }) => {
                return Err(RecordError::MissingManifest { key }.into());
            }
            Err(e) => return Err(e),
        };
        let actual = Hash::of(&bytes).to_hex();
        if actual != r.manifest_blake3 || bytes.len() as u64 != r.manifest_size {
            return Err(RecordError::ManifestMismatch {
                key: r.manifest_key.clone(),
                expected: r.manifest_blake3.clone(),
                actual,
            }
            .into());
        }
        let (m, _) = c.read_manifest(&r.backup.id)?;
        // Bounded memory whatever the container's size, as for a restore.
        let index = LocationTable::for_backup(&c, &m, DEFAULT_MEM_ENTRIES)?;
        check_complete(&c, &index, &m)?;
        Ok(BackupRecord {
            container: Some(c.url().to_string()),
            ..r.backup
        })
    }
}
