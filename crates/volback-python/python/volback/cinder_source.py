"""Backups written by Cinder's own chunked drivers (posix/NFS directories, S3 buckets), read
without Cinder: listed, restored, and adopted into a volback container."""

from __future__ import annotations

import json
import os
from typing import Any

from volback import _volback
from volback.container import Container, S3Settings, _call


class CinderSource:
    """Cinder's backups at ``url``: its ``backup_posix_path`` (or a directory under it), or
    ``s3://bucket/prefix`` of its S3 driver's bucket.

    Every object read is checked against the length and MD5 Cinder recorded: a damaged or
    missing object raises :class:`volback.DamageError` or :class:`volback.StorageError` naming
    the object and the backup, never a silent bad restore.
    """

    def __init__(self, url: str, *, s3: S3Settings | None = None) -> None:
        s3 = s3 or S3Settings()
        self._native = _call(
            _volback.NativeCinderSource,
            url,
            s3_endpoint=s3.endpoint,
            s3_region=s3.region,
            s3_access_key_id=s3.access_key_id,
            s3_secret_access_key=s3.secret_access_key,
            s3_session_token=s3.session_token,
        )

    def backups(self) -> list[dict[str, Any]]:
        """The backups found, oldest first (``backup_id``, ``volume_id``, ``parent_id``,
        ``created_at``, ``name``, ``description``, ``size`` in bytes, ``objects``, ``manifest``);
        an unreadable manifest appears as ``{"error", "message"}``."""
        return list(json.loads(_call(self._native.list)))

    def restore(self, backup_id: str, target: str | os.PathLike[str]) -> dict[str, Any]:
        """Restores a backup (its chain applied newest layer first, objects decompressed in
        parallel, zeros left as holes) into the new file ``target``; returns the report."""
        return dict(json.loads(_call(self._native.restore, backup_id, os.fspath(target))))

    def adopt_into(
        self,
        container: Container,
        *,
        backup_ids: list[str] | None = None,
        volume_id: str | None = None,
        cinder_exports: list[str] | None = None,
    ) -> dict[str, Any]:
        """Adopts backups (those named, of ``volume_id``, or all) into ``container`` as volback
        backups with the same ids, parents first, each verified by a restore to hash. Each
        entry of the report's ``adopted`` carries ``record`` (``backup_service``,
        ``backup_url``): what Cinder's ``backup-import`` takes. ``cinder_exports`` are the old
        driver's ``backup-export`` outputs, whose fields the records keep. Running it again
        adopts only what is missing."""
        return dict(
            json.loads(
                _call(
                    self._native.adopt_into,
                    container._native,
                    backup_ids=backup_ids,
                    volume_id=volume_id,
                    cinder_exports=cinder_exports,
                )
            )
        )
