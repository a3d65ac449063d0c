//! `NativeCinderSource`: backups written by Cinder's own chunked drivers (a posix directory or
//! an S3 bucket), listed, restored and adopted into a volback container.

use std::path::Path;
use std::sync::Arc;

use pyo3::prelude::*;
use serde_json::json;

use crate::container::{NativeContainer, json, s3_options};
use crate::errors::to_py;
use volback::cinder::{
    AdoptOptions, adopt_cinder_backups, describe_cinder_backups, open_source, restore_cinder_backup,
};
use volback::store::ObjectStore;

/// Cinder's backups at a URL: Cinder's `backup_posix_path` (or a directory under it), or
/// `s3://bucket/prefix`.
#[pyclass(module = "volback._volback", frozen)]
pub struct NativeCinderSource {
    store: Arc<dyn ObjectStore>,
}

#[pymethods]
impl NativeCinderSource {
    #[new]
    #[pyo3(signature = (
        url, *, s3_endpoint = None, s3_region = None, s3_access_key_id = None,
        s3_secret_access_key = None, s3_session_token = None,
    ))]
    fn new(
        url: String,
        s3_endpoint: Option<String>,
        s3_region: Option<String>,
        s3_access_key_id: Option<String>,
        s3_secret_access_key: Option<String>,
        s3_session_token: Option<String>,
    ) -> PyResult<Self> {
        let s3 = s3_options(
            s3_endpoint,
            s3_region,
            s3_access_key_id,
            s3_secret_access_key,
            s3_session_token,
        );
        Ok(NativeCinderSource {
            store: open_source(&url, &s3).map_err(to_py)?,
        })
    }

    /// The backups found, as JSON: a list of backups (or of errors in place of unreadable
    /// manifests).
    fn list(&self, py: Python<'_>) -> PyResult<String> {
        let found = py
            .detach(|| describe_cinder_backups(self.store.as_ref(), ""))
            .map_err(to_py)?;
        let rows: Vec<_> = found
            .into_iter()
            .map(|b| match b {
                Ok(b) => json!(b),
                Err(e) => json!({"error": e.kind(), "message": e.to_string()}),
            })
            .collect();
        json(&rows)
    }

    /// Restores a backup (its whole chain) into a new file; JSON report.
    fn restore(&self, py: Python<'_>, backup_id: String, target: String) -> PyResult<String> {
        let r = py
            .detach(|| {
                restore_cinder_backup(self.store.as_ref(), "", &backup_id, Path::new(&target))
            })
            .map_err(to_py)?;
        json(&r)
    }

    /// Adopts backups into `dst` (those named, of `volume_id`, or all); JSON report.
    #[pyo3(signature = (dst, *, backup_ids = None, volume_id = None, cinder_exports = None))]
    fn adopt_into(
        &self,
        py: Python<'_>,
        dst: &NativeContainer,
        backup_ids: Option<Vec<String>>,
        volume_id: Option<String>,
        cinder_exports: Option<Vec<String>>,
    ) -> PyResult<String> {
        let opts = AdoptOptions {
            backup_ids: backup_ids.unwrap_or_default(),
            volume_id,
            cinder_exports: cinder_exports.unwrap_or_default(),
            cancel: None,
        };
        let r = py
            .detach(|| adopt_cinder_backups(self.store.as_ref(), "", dst.container(), &opts))
            .map_err(to_py)?;
        json(&r)
    }
}
