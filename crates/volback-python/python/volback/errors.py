"""volback's errors as Python exceptions: one class per stable error kind.

Every exception is a :class:`VolbackError` with ``kind`` (the stable string the CLI prints
under ``--json``) and ``message``. Classes group kinds a caller handles alike: a missing
backup, damage, a refused record, storage that cannot be reached.
"""

from __future__ import annotations

from volback import _volback


class VolbackError(Exception):
    """Any volback failure. ``kind`` is stable across releases; ``message`` is for people."""

    kind: str = "internal"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(VolbackError):
    """Bad settings or arguments (kinds ``config``, ``invalid_id``)."""


class BackupNotFound(VolbackError):
    """No such backup (``backup_not_found``, ``parent_not_found``)."""


class BackupDeleted(VolbackError):
    """The backup was deleted (``backup_deleted``)."""


class BackupExists(VolbackError):
    """A backup with this id exists or existed (``backup_exists``)."""


class DamageError(VolbackError):
    """Stored data is damaged or missing (``corrupt``, ``hash_mismatch``, ``missing_object``,
    ``chunk_not_indexed``, ``chunk_length_mismatch``)."""


class UnsupportedVersion(VolbackError):
    """An object written by a newer volback (``unsupported_version``)."""


class RecordError(VolbackError):
    """An exported record was refused (``record_*``)."""


class StorageError(VolbackError):
    """The store failed or refused (``io``, ``remote``, ``transient``, ``access_denied``,
    ``missing_bucket``)."""


class VolumeError(VolbackError):
    """The volume or target does not fit (``volume_too_short``, ``target_too_small``,
    ``target_exists``)."""


class EncryptionKeyError(VolbackError):
    """A key is missing, wrong, or a key request was refused (``key_required``, ``wrong_key``,
    ``key``)."""


class RetainedError(VolbackError):
    """An object is under S3 Object Lock retention and cannot be deleted yet (``retained``)."""


class Cancelled(VolbackError):
    """The caller stopped the operation (``cancelled``)."""


class ChangeMapError(VolbackError):
    """A change map was refused before anything was written (``change_map``), or the sampled
    check found a change the map missed (``change_map_missed``)."""


class LeaseExpired(VolbackError):
    """A backup could not renew its lease and did not commit (``lease_expired``)."""


_BY_KIND: dict[str, type[VolbackError]] = {
    "config": ConfigError,
    "invalid_id": ConfigError,
    "backup_not_found": BackupNotFound,
    "parent_not_found": BackupNotFound,
    "backup_deleted": BackupDeleted,
    "backup_exists": BackupExists,
    "corrupt": DamageError,
    "hash_mismatch": DamageError,
    "missing_object": DamageError,
    "chunk_not_indexed": DamageError,
    "chunk_length_mismatch": DamageError,
    "unsupported_version": UnsupportedVersion,
    "record_malformed": RecordError,
    "record_unknown_version": RecordError,
    "record_missing_manifest": RecordError,
    "record_manifest_mismatch": RecordError,
    "record_foreign_container": RecordError,
    "io": StorageError,
    "remote": StorageError,
    "transient": StorageError,
    "access_denied": StorageError,
    "missing_bucket": StorageError,
    "volume_too_short": VolumeError,
    "target_too_small": VolumeError,
    "target_exists": VolumeError,
    "key_required": EncryptionKeyError,
    "wrong_key": EncryptionKeyError,
    "key": EncryptionKeyError,
    "cancelled": Cancelled,
    "lease_expired": LeaseExpired,
    "change_map": ChangeMapError,
    "change_map_missed": ChangeMapError,
    "retained": RetainedError,
    "internal": VolbackError,
}


def from_native(e: BaseException) -> BaseException:
    """The typed exception for an error raised by the native module (others pass through)."""
    if isinstance(e, _volback.VolbackError) and len(e.args) == 2:
        kind, message = str(e.args[0]), str(e.args[1])
        return _BY_KIND.get(kind, VolbackError)(kind, message)
    return e


def error_class(kind: str) -> type[VolbackError]:
    """The exception class raised for ``kind``."""
    return _BY_KIND.get(kind, VolbackError)
