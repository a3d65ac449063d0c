"""volback as OpenStack Cinder's backup driver.

In ``cinder.conf``::

    [DEFAULT]
    backup_driver = volback.cinder.VolbackBackupDriver
    backup_volback_container = /var/lib/cinder/backup-volback     # or s3://bucket/prefix

Every backup is self-contained (a restore reads one manifest, never a parent chain), any backup
of a chain can be deleted, incrementals follow ``parent_id`` whatever the volume's size did, and
an exported record pins the backup by its manifest's BLAKE3. The native work runs in a real
thread with the GIL released, while the calling greenthread keeps the service responsive: it
sends the progress notifications and watches the backup's status to cancel on request.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import cinder.exception as exception
import cinder.interface as interface
from cinder.backup import driver
from cinder.objects import fields
from cinder.volume import volume_utils
from oslo_config import cfg

import volback
from volback.container import Container, S3Settings

LOG = logging.getLogger(__name__)

volback_opts = [
    cfg.StrOpt(
        "backup_volback_container",
        default="$state_path/backup-volback",
        help="The volback container backups go to: a directory (a plain path or file:///path) "
        "or s3://bucket/prefix (the bucket must exist).",
    ),
    cfg.StrOpt("backup_volback_s3_endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL, then AWS)."),
    cfg.StrOpt("backup_volback_s3_region", help="S3 region (default: the AWS environment, then us-east-1)."),
    cfg.StrOpt("backup_volback_s3_access_key", help="S3 access key id (default: the AWS credential chain)."),
    cfg.StrOpt(
        "backup_volback_s3_secret_key",
        secret=True,
        help="S3 secret key (default: the AWS credential chain). Never logged or exported.",
    ),
    cfg.IntOpt("backup_volback_s3_concurrency", default=8, min=1, max=256, help="S3 requests in flight."),
    cfg.StrOpt(
        "backup_volback_key",
        secret=True,
        help="Where the container key comes from: env:NAME, file:PATH or cmd:COMMAND (whose "
        "output is the key, e.g. a Barbican or Vault client). A container this driver creates "
        "with a key is encrypted on this host: every object sealed (AES-256-GCM-SIV), chunk "
        "ids keyed. Unset: a plaintext container. Never logged or exported.",
    ),
    cfg.IntOpt(
        "backup_volback_zstd_level",
        default=1,
        min=-7,
        max=22,
        help="zstd level for new chunks (readers need no level; 1 is the measured best trade-off).",
    ),
    cfg.IntOpt(
        "backup_volback_chunk_avg",
        default=32768,
        min=256,
        max=4 * 1024 * 1024,
        help="Average chunk size in bytes, for a container this driver creates.",
    ),
    cfg.IntOpt(
        "backup_volback_pack_size",
        default=32 * 1024 * 1024,
        min=1024 * 1024,
        max=512 * 1024 * 1024,
        help="Pack size in bytes, for a container this driver creates.",
    ),
    cfg.IntOpt(
        "backup_volback_object_lock_days",
        min=1,
        max=36500,
        help="For a container this driver creates in an S3 bucket with Object Lock enabled: "
        "keep every backup, and everything it needs, from deletion for this many days after it "
        "is committed, even with this service's own credentials. Unset: no retention.",
    ),
    cfg.StrOpt(
        "backup_volback_object_lock_mode",
        default="compliance",
        choices=["compliance", "governance"],
        help="Object Lock mode: compliance (no one can delete early) or governance (only a user "
        "allowed to bypass governance retention can).",
    ),
    cfg.BoolOpt(
        "backup_volback_differential_restore",
        default=True,
        help="Restoring onto the volume a backup came from (not a new volume): read the volume "
        "first and rewrite only what differs from the backup, then check it.",
    ),
    cfg.StrOpt(
        "backup_volback_change_map_dir",
        help="A directory on the backup host where change maps are put for incrementals (a list "
        "of extents, `rbd diff --format json` output or `thin_delta` XML): a backup whose metadata "
        "says `volback:changes=<file name>` reads only what that map in this directory calls "
        "changed. Unset: maps named by backups are refused (QEMU dirty bitmaps over NBD, "
        "`volback:changes-nbd` and `volback:dirty-bitmap`, need no directory).",
    ),
    cfg.FloatOpt(
        "backup_volback_change_map_sample",
        default=0.001,
        min=0.0,
        max=1.0,
        help="Fraction of the chunks a change map leaves unread that are read back and checked "
        "against the parent's: a map that missed a change fails the backup (or, with "
        "backup_volback_change_map_fallback, makes it read the whole volume).",
    ),
    cfg.BoolOpt(
        "backup_volback_change_map_fallback",
        default=True,
        help="When the sampled check finds a change the map missed, read the whole volume "
        "instead of failing the backup.",
    ),
    cfg.IntOpt(
        "backup_volback_full_read_every",
        min=1,
        help="Read the whole volume when this many incrementals in a row did not (made with a "
        "change map, or of an unchanged image file). Unset: no limit.",
    ),
    cfg.IntOpt(
        "backup_volback_full_read_after_days",
        min=1,
        help="Read the whole volume when the last backup that did is this many days old.",
    ),
    cfg.FloatOpt(
        "backup_volback_status_interval",
        default=1.0,
        min=0.05,
        help="Seconds between checks of a running backup's or restore's status (cancellation).",
    ),
]

CONF = cfg.CONF
CONF.register_opts(volback_opts)
# `backup_create_containers` belongs to Cinder's chunked drivers (registered when their module is
# imported); reuse it.
from cinder.backup import chunkeddriver  # noqa: E402, F401

T = TypeVar("T")

# Open containers, one per configuration and process: Cinder creates a driver object for every
# operation, while opening a container starts thread pools and reads its config.
_CONTAINERS: dict[tuple[Any, ...], Container] = {}
_CONTAINERS_LOCK = threading.Lock()

_GIB = 1024**3


class _Tracker:
    """What the native thread reports and what the service asks of it."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        self.token = volback.CancelToken()

    def stop(self) -> None:
        self.token.cancel()

    def progress(self, done: int, total: int) -> bool:
        self.done, self.total = done, total
        return not self.token.cancelled


def _green() -> bool:
    try:
        from eventlet import patcher
    except ImportError:
        return False
    return bool(patcher.is_monkey_patched("thread"))


def _run_native(fn: Callable[[], T], poll: Callable[[], None], interval: float) -> T:
    """Runs ``fn`` in a real thread and calls ``poll`` from this (green)thread every
    ``interval`` seconds until it returns; returns or raises what ``fn`` did."""
    step = min(0.05, interval)
    if _green():
        import eventlet
        from eventlet import tpool

        gt = eventlet.spawn(tpool.execute, fn)
        last = time.monotonic()
        while not gt.dead:
            eventlet.sleep(step)
            if time.monotonic() - last >= interval:
                last = time.monotonic()
                poll()
        return gt.wait()  # type: ignore[no-any-return]
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            error.append(e)

    t = threading.Thread(target=run, name="volback-native", daemon=True)
    t.start()
    last = time.monotonic()
    while t.is_alive():
        t.join(step)
        if t.is_alive() and time.monotonic() - last >= interval:
            last = time.monotonic()
            poll()
    if error:
        raise error[0]
    return result[0]


def _change_map_of(backup: Any) -> volback.ChangeMap | None:
    """The change map an incremental's metadata names, if any: `volback:changes` (a file in
    backup_volback_change_map_dir, with `volback:changes-format`) or `volback:changes-nbd` with
    `volback:dirty-bitmap`. A full backup ignores them (there is no parent to apply them to)."""
    try:
        meta = dict(backup.metadata or {}) if backup.obj_attr_is_set("metadata") else {}
    except Exception:  # noqa: BLE001 - an object without the field has no map
        meta = {}
    if not backup.parent_id:
        return None
    name = meta.get("volback:changes")
    if name:
        base = CONF.backup_volback_change_map_dir
        if not base:
            raise exception.BackupOperationError(
                "backup names a change map, but backup_volback_change_map_dir is not set"
            )
        root = os.path.realpath(base)
        path = os.path.realpath(os.path.join(root, name))
        if os.path.dirname(path) != root:
            raise exception.BackupOperationError(
                f"change map {name!r} is not a file name in backup_volback_change_map_dir"
            )
        try:
            return volback.ChangeMap.file(path, meta.get("volback:changes-format", "auto"))
        except ValueError as e:
            raise exception.BackupOperationError(str(e)) from None
    uri = meta.get("volback:changes-nbd")
    if uri:
        bitmap = meta.get("volback:dirty-bitmap")
        if not bitmap:
            raise exception.BackupOperationError("volback:changes-nbd needs volback:dirty-bitmap")
        return volback.ChangeMap.nbd_dirty_bitmap(uri, bitmap)
    return None


def _unwrap(volume_file: Any) -> Any:
    """The file behind Cinder's ``tpool.Proxy``, as a descriptor when it has one."""
    inner = getattr(volume_file, "_obj", volume_file)
    try:
        fd = inner.fileno()
    except Exception:
        return inner
    return fd if isinstance(fd, int) and fd >= 0 else inner


def _holds_a_volume(fd: int) -> bool:
    """Whether the descriptor is a block device, or a file that still holds data (the manager
    opens the device ``'wb'``, which empties a file-backed volume; comparing against nothing
    would only cost a read)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISBLK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_size > 0)


@interface.backupdriver
class VolbackBackupDriver(driver.BackupDriver):  # type: ignore[misc]
    """Cinder backup driver over a volback container."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        # Any backup can be deleted, dependents or not; a running backup stops on request.
        self.support_force_delete = True

    @staticmethod
    def get_driver_options() -> list[Any]:
        """The driver's oslo.config options (what `cinder-manage` and the docs list)."""
        return volback_opts

    # -- the container ------------------------------------------------------------------

    def _container(self, create: bool) -> Container:
        s3 = S3Settings(
            endpoint=CONF.backup_volback_s3_endpoint,
            region=CONF.backup_volback_s3_region,
            access_key_id=CONF.backup_volback_s3_access_key,
            secret_access_key=CONF.backup_volback_s3_secret_key,
            concurrency=CONF.backup_volback_s3_concurrency,
        )
        url = CONF.backup_volback_container
        key = (
            url,
            s3,
            CONF.backup_volback_zstd_level,
            CONF.backup_volback_chunk_avg,
            CONF.backup_volback_pack_size,
            CONF.backup_volback_key,
            CONF.backup_volback_object_lock_days,
            CONF.backup_volback_object_lock_mode,
        )
        with _CONTAINERS_LOCK:
            c = _CONTAINERS.get(key)
            if c is None:
                c = Container(
                    url,
                    create=create,
                    zstd_level=CONF.backup_volback_zstd_level,
                    chunk_avg=CONF.backup_volback_chunk_avg,
                    pack_size=CONF.backup_volback_pack_size,
                    s3=s3,
                    key=CONF.backup_volback_key,
                    object_lock_days=CONF.backup_volback_object_lock_days,
                    object_lock_mode=CONF.backup_volback_object_lock_mode,
                )
                _CONTAINERS[key] = c
        return c

    def _container_of(self, backup: Any) -> Container:
        """The container a backup lives in: the configured one. A backup row naming another
        container (another driver's, or a crafted one) is refused rather than followed."""
        c = self._container(create=False)
        named = getattr(backup, "container", None)
        if named and named != c.url:
            raise exception.InvalidBackup(
                reason=f"backup {backup.id} is in container {named}; this driver serves {c.url}"
            )
        return c

    def check_for_setup_error(self) -> None:
        url = CONF.backup_volback_container
        if not url:
            raise exception.InvalidConfigurationValue(option="backup_volback_container", value=url)
        create = bool(getattr(CONF, "backup_create_containers", True))
        try:
            c = self._container(create=create)
            if len(c.url) > 255:
                raise exception.InvalidConfigurationValue(option="backup_volback_container", value=url)
            c.check()
        except volback.VolbackError as e:
            raise exception.BackupDriverException(reason=f"volback container {url}: {e}") from None

    # -- progress -------------------------------------------------------------------------

    def _notifier(self, backup: Any, event: str) -> Callable[[_Tracker, bool], None]:
        every = float(getattr(CONF, "backup_timer_interval", 120))
        enabled = bool(getattr(CONF, "backup_enable_progress_timer", True))
        state = {"last": time.monotonic(), "percent": -1.0}

        def notify(t: _Tracker, final: bool) -> None:
            if final and state["percent"] >= 100.0:
                return  # 100 was sent already
            if not final and (not enabled or time.monotonic() - state["last"] < every):
                return
            percent = 100.0 if final else (min(t.done, t.total) * 100.0 / t.total if t.total else 0.0)
            percent = max(percent, state["percent"])  # monotone
            if not final and percent == state["percent"]:
                return
            state["last"], state["percent"] = time.monotonic(), percent
            volume_utils.notify_about_backup_usage(
                self.context, backup, event, extra_usage_info={"backup_percent": percent}
            )

        return notify

    # -- the verbs ------------------------------------------------------------------------

    def backup(self, backup: Any, volume_file: Any, backup_metadata: bool = False) -> dict[str, Any]:
        try:
            c = self._container(create=bool(getattr(CONF, "backup_create_containers", True)))
        except volback.VolbackError as e:
            raise exception.BackupOperationError(f"volback container: {e}") from None
        meta = self.get_metadata(backup.volume_id)
        metadata = json.loads(meta) if isinstance(meta, str) else meta
        source = _unwrap(volume_file)
        tracker = _Tracker()
        notify = self._notifier(backup, "createprogress")
        cancelled = {"yes": False}

        def poll() -> None:
            with backup.as_read_deleted():
                backup.refresh()
            if backup.status in (fields.BackupStatus.DELETING, fields.BackupStatus.DELETED):
                cancelled["yes"] = True
                tracker.stop()
            notify(tracker, False)

        changes = _change_map_of(backup)

        def run() -> dict[str, Any]:
            return c.backup(
                source,
                backup_id=backup.id,
                volume_id=backup.volume_id,
                parent_id=backup.parent_id,
                metadata=metadata,
                data_timestamp=str(backup.data_timestamp) if backup.data_timestamp else None,
                # The volume's size in the database, for progress when the device cannot tell.
                size_hint=int(backup.size or 0) * _GIB,
                progress=tracker.progress,
                cancel=tracker.token,
                changes=changes,
                map_sample=CONF.backup_volback_change_map_sample,
                map_fallback=CONF.backup_volback_change_map_fallback,
                full_read_every=CONF.backup_volback_full_read_every,
                full_read_after_days=CONF.backup_volback_full_read_after_days,
            )

        try:
            report = _run_native(run, poll, CONF.backup_volback_status_interval)
        except volback.Cancelled:
            if cancelled["yes"]:
                # Being deleted: nothing was committed, and gc reclaims what was uploaded.
                LOG.info("backup %s cancelled: it is being deleted", backup.id)
                return {}
            raise
        except volback.VolbackError as e:
            raise exception.BackupOperationError(str(e)) from None
        notify(tracker, True)
        return {
            "container": c.url,
            "service_metadata": json.dumps({"volback": 1, "manifest": report["manifest_key"]}),
            "object_count": int(report["object_count"]),
        }

    def restore(self, backup: Any, volume_id: str, volume_file: Any, volume_is_new: bool) -> None:
        try:
            c = self._container_of(backup)
        except volback.VolbackError as e:
            raise exception.BackupOperationError(f"volback container: {e}") from None
        target = _unwrap(volume_file)
        tracker = _Tracker()
        notify = self._notifier(backup, "restoreprogress")
        cancelled = {"yes": False}

        def poll() -> None:
            with backup.as_read_deleted():
                backup.refresh()
            if backup.status != fields.BackupStatus.RESTORING:
                cancelled["yes"] = True
                tracker.stop()
            notify(tracker, False)

        # Onto the volume the backup came from: only what differs is rewritten. The device is
        # opened again read-write through its descriptor (the manager opened it write-only).
        differential = (
            not volume_is_new
            and CONF.backup_volback_differential_restore
            and backup.volume_id == volume_id
            and isinstance(target, int)
            and _holds_a_volume(target)
        )

        def run() -> dict[str, Any]:
            if differential:
                return c.restore_differential(
                    backup.id, f"/proc/self/fd/{target}", progress=tracker.progress, cancel=tracker.token
                )
            return c.restore(
                backup.id, target, is_new=volume_is_new, progress=tracker.progress, cancel=tracker.token
            )

        try:
            report = _run_native(run, poll, CONF.backup_volback_status_interval)
        except volback.Cancelled:
            if cancelled["yes"]:
                raise exception.BackupRestoreCancel(back_id=backup.id, vol_id=volume_id) from None
            raise
        except volback.VolbackError as e:
            raise exception.BackupOperationError(str(e)) from None
        notify(tracker, True)
        meta = report.get("volume_metadata")
        if meta:
            self.put_metadata(volume_id, json.dumps(meta))

    def delete_backup(self, backup: Any) -> None:
        try:
            c = self._container_of(backup)
            c.delete(backup.id)
        except (volback.BackupNotFound, volback.BackupDeleted):
            # Never committed (failed or cancelled), or already deleted: nothing to do.
            LOG.debug("backup %s: nothing to delete", backup.id)
        except exception.InvalidBackup:
            LOG.warning("backup %s is not in this driver's container: left alone", backup.id)
        except volback.RetainedError as e:
            # Object Lock: the backup stays until its date; the service shows error_deleting
            # with this message, and a delete after the date succeeds.
            raise exception.BackupOperationError(f"backup {backup.id} is retained: {e}") from None
        except volback.VolbackError as e:
            raise exception.BackupOperationError(str(e)) from None

    def export_record(self, backup: Any) -> dict[str, Any]:
        try:
            c = self._container_of(backup)
            record = json.loads(c.export_record(backup.id))
        except volback.VolbackError as e:
            raise exception.BackupOperationError(str(e)) from None
        return {"volback_record": record}

    def import_record(self, backup: Any, driver_info: dict[str, Any]) -> None:
        try:
            c = self._container(create=False)
        except volback.VolbackError as e:
            raise exception.InvalidBackup(reason=f"volback container: {e}") from None
        record = driver_info.get("volback_record") if isinstance(driver_info, dict) else None
        if not isinstance(record, dict):
            raise exception.InvalidBackup(reason="not a volback record")
        if record.get("container") != c.url:
            # A record must never make the service read or write a place it was not given.
            named = record.get("container")
            raise exception.InvalidBackup(
                reason=f"record names container {named!r}; this driver serves {c.url}"
            )
        if (record.get("backup") or {}).get("id") != backup.id:
            raise exception.InvalidBackup(reason="record is for another backup")
        try:
            c.import_record(json.dumps(record))
        except volback.VolbackError as e:
            raise exception.InvalidBackup(reason=str(e)) from None
