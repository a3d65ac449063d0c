"""volback: deduplicating, compressed, verifiable backups of block-storage volumes.

``Container`` opens a container (a directory or ``s3://bucket/prefix``) and backs volumes up
into it, restores, deletes, exports and imports records, verifies and collects garbage; the
work is native and runs without the GIL. ``CinderSource`` reads backups Cinder's own drivers
wrote: lists, restores and adopts them. ``volback.cinder.VolbackBackupDriver`` is the
OpenStack Cinder backup driver built on it.
"""

from volback._volback import KINDS, CancelToken, __version__
from volback.change_map import ChangeMap
from volback.cinder_source import CinderSource
from volback.container import Container, ProgressCallback, S3Settings, Volume
from volback.errors import (
    BackupDeleted,
    BackupExists,
    BackupNotFound,
    Cancelled,
    ChangeMapError,
    ConfigError,
    DamageError,
    EncryptionKeyError,
    LeaseExpired,
    RecordError,
    RetainedError,
    StorageError,
    UnsupportedVersion,
    VolbackError,
    VolumeError,
    error_class,
)
from volback.events import EventCallback
from volback.nbd import NbdServer

__all__ = [
    "KINDS",
    "CancelToken",
    "__version__",
    "ChangeMap",
    "CinderSource",
    "Container",
    "EventCallback",
    "NbdServer",
    "ProgressCallback",
    "S3Settings",
    "Volume",
    "BackupDeleted",
    "BackupExists",
    "BackupNotFound",
    "Cancelled",
    "EncryptionKeyError",
    "ConfigError",
    "DamageError",
    "ChangeMapError",
    "LeaseExpired",
    "RecordError",
    "RetainedError",
    "StorageError",
    "UnsupportedVersion",
    "VolbackError",
    "VolumeError",
    "error_class",
]
