//! One error type for the whole crate.
//!
//! Every variant names *what* failed (an object key, a backup id, a path) and, where it applies,
//! *where* (a byte offset in an object or in the volume), so that an operator reading a log line
//! can find the damaged thing without a debugger. Decoders never panic on bad input: they return
//! [`Error::Corrupt`] or [`Error::UnsupportedVersion`].
//!
//! Each error has a stable [`Error::kind`] string (listed in [`KINDS`]): what the CLI prints
//! under `--json`, what scripts and bindings match on. A kind, once released, keeps its name
//! and meaning; new variants may be added (the enums are `#[non_exhaustive]`), with new kinds.

use std::path::PathBuf;

/// Every string [`Error::kind`] returns.
pub const KINDS: &[&str] = &[
    "io",
    "missing_bucket",
    "access_denied",
    "remote",
    "transient",
    "missing_object",
    "corrupt",
    "hash_mismatch",
    "chunk_not_indexed",
    "chunk_length_mismatch",
    "unsupported_version",
    "backup_not_found",
    "backup_deleted",
    "parent_not_found",
    "backup_exists",
    "invalid_id",
    "config",
    "volume_too_short",
    "target_too_small",
    "target_exists",
    "record_malformed",
    "record_unknown_version",
    "record_missing_manifest",
    "record_manifest_mismatch",
    "record_foreign_container",
    "lease_expired",
    "retained",
    "key_required",
    "wrong_key",
    "key",
    "cancelled",
    "change_map",
    "change_map_missed",
    "internal",
];

/// Result alias used throughout volback.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an exported record was refused by `import_record`. Each cause is distinct so that a caller
/// (or a test) can tell a typo from a tampered record from a container that lost the backup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not JSON, or a required field is missing or has the wrong type.
    #[error("malformed backup record: {0}")]
    Malformed(String),
    /// The record names a format version this build does not understand.
    #[error(
        "backup record version {found} is not supported (this volback reads version {supported})"
    )]
    UnknownVersion { found: u64, supported: u64 },
    /// The manifest the record points at is not in the container.
    #[error("backup record points at manifest '{key}', which is not in the container")]
    MissingManifest { key: String },
    /// The manifest exists but is not the one the record was exported from.
    #[error("manifest '{key}' does not match the record: BLAKE3 {actual}, record says {expected}")]
    ManifestMismatch {
        key: String,
        expected: String,
        actual: String,
    },
    /// The record names a container the driver is not configured for: a record never chooses
    /// where the driver reads or writes.
    #[error(
        "backup record names container '{container}', which this driver is not configured for \
         (configured: '{configured}')"
    )]
    ForeignContainer {
        container: String,
        configured: String,
    },
}

/// Every failure volback reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a local file: the volume, the restore target, or a filesystem container.
    #[error("{op} '{}': {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A request to remote storage failed (after retries, for transient failures). `location`
    /// is `s3://bucket/key`; the message is the server's answer, never credentials.
    #[error("{op} {location}: {message}")]
    Remote {
        op: &'static str,
        location: String,
        message: String,
    },
    /// A request failed in a way that may succeed if repeated (a timeout, an interrupted call,
    /// a server asking to slow down). Retried by the container's store layer; seen by callers
    /// only when the retries are exhausted.
    #[error("{op} '{key}' failed transiently: {message}")]
    Transient {
        op: &'static str,
        key: String,
        message: String,
    },
    /// An object the operation needs is not in the container.
    #[error("object '{key}' is missing from the container")]
    MissingObject { key: String },
    /// A stored object failed to decode or verify. `offset` is the byte offset inside the object.
    #[error("object '{key}' is corrupt at offset {offset}: {reason}")]
    Corrupt {
        key: String,
        offset: u64,
        reason: String,
    },
    /// A chunk read back from a pack does not hash to its id.
    #[error(
        "chunk {chunk} in '{key}' at offset {offset} (volume offset {volume_offset}) fails BLAKE3 verification"
    )]
    ChunkHashMismatch {
        key: String,
        offset: u64,
        chunk: String,
        volume_offset: u64,
    },
    /// A manifest or index references a chunk that no index entry locates.
    #[error(
        "chunk {chunk} (volume offset {volume_offset}) of backup '{backup_id}' is not in any index"
    )]
    ChunkNotIndexed {
        backup_id: String,
        chunk: String,
        volume_offset: u64,
    },
    /// The index's length for a chunk is not the length of the extent the backup restores it
    /// to: the index or the manifest is damaged, and writing the chunk would spill into its
    /// neighbour or leave part of its extent unwritten.
    #[error(
        "chunk {chunk} (volume offset {volume_offset}) of backup '{backup_id}' is {chunk_len} \
         bytes by the index, but its extent is {extent_len} bytes"
    )]
    ChunkLengthMismatch {
        backup_id: String,
        chunk: String,
        volume_offset: u64,
        extent_len: u32,
        chunk_len: u32,
    },
    /// A stored object declares a format version this build cannot read.
    #[error("object '{key}' has {what} version {found}; this volback reads version {supported}")]
    UnsupportedVersion {
        key: String,
        what: &'static str,
        found: u64,
        supported: u64,
    },
    /// No committed backup has this id.
    #[error("backup '{id}' does not exist in container '{container}'")]
    BackupNotFound { id: String, container: String },
    /// The backup existed but was deleted.
    #[error("backup '{id}' was deleted from container '{container}'")]
    BackupDeleted { id: String, container: String },
    /// The backup named as parent of an incremental does not exist.
    #[error("parent backup '{id}' does not exist in container '{container}'")]
    ParentNotFound { id: String, container: String },
    /// A backup with this id is already committed.
    #[error("backup '{id}' already exists in container '{container}'")]
    BackupExists { id: String, container: String },
    /// An id (backup, volume) or name is not acceptable.
    #[error("invalid {what} '{value}': {reason}")]
    InvalidId {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The container URL or driver configuration is unusable.
    #[error("configuration error: {0}")]
    Config(String),
    /// The volume ended before the size the caller said it has.
    #[error("volume '{volume}' ended at {actual} bytes, expected {expected}")]
    VolumeTooShort {
        volume: String,
        expected: u64,
        actual: u64,
    },
    /// A change map that cannot be used: unreadable, malformed, unsorted, overlapping, past the
    /// end of the volume, or with a block size its format does not allow. Raised before the
    /// backup writes anything.
    #[error("change map '{map}' {at}: {reason}")]
    ChangeMap {
        map: String,
        /// Where in the map: "line 12", "entry 3", "byte 4096".
        at: String,
        reason: String,
    },
    /// The sampled check read volume bytes the change map called unchanged and found them
    /// changed: the map missed a change. Nothing is committed.
    #[error(
        "change map missed a change: volume '{volume}' bytes {offset}..{} are no longer the parent's chunk {chunk}",
        offset + u64::from(*len)
    )]
    ChangeMapMissed {
        volume: String,
        offset: u64,
        len: u32,
        chunk: String,
    },
    /// The restore target cannot hold the volume.
    #[error("restore target '{}' holds {actual} bytes, the backup needs {needed}", path.display())]
    TargetTooSmall {
        path: PathBuf,
        needed: u64,
        actual: u64,
    },
    /// The restore target exists and the caller did not say it may be overwritten.
    #[error("restore target '{}' already exists (restore onto an existing target with --existing)", path.display())]
    TargetExists { path: PathBuf },
    /// An exported record was refused.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A backup could not renew its lease for half its time to live, so it did not commit (the
    /// collector may have treated it as dead).
    #[error(
        "lease '{key}' was not renewed in time (valid until unix {expires_unix}); nothing was committed"
    )]
    LeaseExpired { key: String, expires_unix: u64 },
    /// An object is under S3 Object Lock retention and cannot be deleted yet (`until`: the
    /// retention date, RFC 3339, when known). Nothing was changed.
    #[error("'{key}' is under Object Lock retention{}: it cannot be deleted before then", until.as_ref().map(|u| format!(" until {u}")).unwrap_or_default())]
    Retained { key: String, until: Option<String> },
    /// The container is encrypted and the operation needs its key, which was not given.
    #[error("container '{container}' is encrypted: give one of its keys (--key)")]
    KeyRequired { container: String },
    /// No key slot of the container opens with the key given.
    #[error("no key of container '{container}' matches the key given")]
    WrongKey { container: String },
    /// A key source failed, or a key-management request was refused (removing the last key,
    /// a key given for a container that is not encrypted). Never carries a secret.
    #[error("key: {0}")]
    Key(String),
    /// The caller asked the operation to stop (a backup commits nothing; a restore leaves a new
    /// target absent and an existing one partly written).
    #[error("{what} cancelled by the caller")]
    Cancelled { what: &'static str },
    /// A worker thread failed in a way that is a volback bug, not bad input.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Whether `message` carries the HTTP status `code` as a token of its own: "status 403",
/// "403 Forbidden", not the digits inside a duration ("1.774039699s"), a port or a pack name.
fn has_status(message: &str, code: &str) -> bool {
    let bytes = message.as_bytes();
    let part_of_word = |b: u8| b.is_ascii_alphanumeric() || b == b'.';
    message.match_indices(code).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + code.len()).copied();
        !before.is_some_and(part_of_word) && !after.is_some_and(part_of_word)
    })
}

impl Error {
    /// Wraps an I/O error on a local path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// A decode failure in object `key` at byte `offset`.
    pub fn corrupt(key: &str, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            key: key.to_string(),
            offset,
            reason: reason.into(),
        }
    }

    /// A short, stable name for the error's kind, printed by the CLI's `--json` error output and
    /// used by tests, so that scripts need not parse messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Remote { message, .. } => {
                if message.contains("NoSuchBucket") {
                    "missing_bucket"
                } else if has_status(message, "403")
                    || message.contains("AccessDenied")
                    || message.contains("SignatureDoesNotMatch")
                    || message.contains("InvalidAccessKeyId")
                {
                    "access_denied"
                } else {
                    "remote"
                }
            }
            Error::Transient { .. } => "transient",
            Error::MissingObject { .. } => "missing_object",
            Error::Corrupt { .. } => "corrupt",
            Error::ChunkHashMismatch { .. } => "hash_mismatch",
            Error::ChunkNotIndexed { .. } => "chunk_not_indexed",
            Error::ChunkLengthMismatch { .. } => "chunk_length_mismatch",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::BackupNotFound { .. } => "backup_not_found",
            Error::BackupDeleted { .. } => "backup_deleted",
            Error::ParentNotFound { .. } => "parent_not_found",
            Error::BackupExists { .. } => "backup_exists",
            Error::InvalidId { .. } => "invalid_id",
            Error::Config(_) => "config",
            Error::VolumeTooShort { .. } => "volume_too_short",
            Error::TargetTooSmall { .. } => "target_too_small",
            Error::TargetExists { .. } => "target_exists",
            Error::Record(RecordError::Malformed(_)) => "record_malformed",
            Error::Record(RecordError::UnknownVersion { .. }) => "record_unknown_version",
            Error::Record(RecordError::MissingManifest { .. }) => "record_missing_manifest",
            Error::Record(RecordError::ManifestMismatch { .. }) => "record_manifest_mismatch",
            Error::Record(RecordError::ForeignContainer { .. }) => "record_foreign_container",
            Error::LeaseExpired { .. } => "lease_expired",
            Error::Retained { .. } => "retained",
            Error::KeyRequired { .. } => "key_required",
            Error::WrongKey { .. } => "wrong_key",
            Error::Key(_) => "key",
            Error::Cancelled { .. } => "cancelled",
            Error::ChangeMap { .. } => "change_map",
            Error::ChangeMapMissed { .. } => "change_map_missed",
            Error::Internal(_) => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `kind()` arm returns a string listed in `KINDS`, and no two kinds share a name.
    #[test]
    fn kinds_are_listed_and_distinct() {
        let src = include_str!("error.rs");
        let body = &src[src.find("pub fn kind(").unwrap()..src.find("#[cfg(test)]").unwrap()];
        let returned: Vec<&str> = body
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        let mut listed = KINDS.to_vec();
        listed.sort_unstable();
        listed.dedup();
        assert_eq!(listed.len(), KINDS.len(), "a kind is listed twice");
        for k in &returned {
            assert!(KINDS.contains(k), "kind '{k}' is not in KINDS");
        }
        for k in KINDS {
            assert!(
                returned.contains(k),
                "KINDS lists '{k}', which kind() never returns"
            );
        }
    }

    fn remote(message: &str) -> Error {
        Error::Remote {
            op: "get",
            location: "s3://b/c/config".into(),
            message: message.into(),
        }
    }

    #[test]
    fn remote_errors_are_classified_by_status_tokens_not_stray_digits() {
        for m in [
            "Client error with status 403 Forbidden: <Error><Code>X</Code></Error>",
            "GET http://h/b failed: 403",
            "<Code>AccessDenied</Code>",
            "<Code>SignatureDoesNotMatch</Code>",
        ] {
            assert_eq!(remote(m).kind(), "access_denied", "{m}");
        }
        // A refused connection whose message happens to contain the digits 4, 0, 3 (this
        // one came from CI): not a denial.
        for m in [
            "Error performing GET http://127.0.0.1:46189/b/c1/config in 1.774039699s, after 6 \
             retries - HTTP error: error sending request",
            "PUT http://127.0.0.1:40312/b/packs/ab/ab403f failed: connection reset",
        ] {
            assert_eq!(remote(m).kind(), "remote", "{m}");
        }
        assert_eq!(remote("<Code>NoSuchBucket</Code>").kind(), "missing_bucket");
    }
}
