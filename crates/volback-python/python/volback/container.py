"""The Pythonic API over a volback container."""

from __future__ import annotations

import builtins
import json
import os
import stat
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from volback import _volback
from volback.change_map import ChangeMap
from volback.errors import from_native
from volback.events import EventCallback, run_job
from volback.nbd import NbdServer

#: ``progress(done_bytes, total_bytes)``; return ``False`` to stop the operation.
ProgressCallback = Callable[[int, int], Optional[bool]]
#: A volume or target: a path, a file descriptor, or a file object (``fileno()`` is used when it
#: works; otherwise a volume is read with ``read(n)`` and a target written with ``write()``).
Volume = Union[str, "os.PathLike[str]", int, Any]


@dataclass(frozen=True)
class S3Settings:
    """S3 settings; what is left ``None`` comes from the standard AWS environment and files."""

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    concurrency: int | None = None

    def __repr__(self) -> str:  # never show the secret
        return (
            f"S3Settings(endpoint={self.endpoint!r}, region={self.region!r}, "
            f"access_key_id={self.access_key_id!r}, concurrency={self.concurrency!r})"
        )


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except _volback.VolbackError as e:
        raise from_native(e) from None


def _size_of(volume: Volume) -> int:
    """The volume's size in bytes if it can be told without reading it, else 0."""
    fd: int | None = None
    if isinstance(volume, int):
        fd = volume
    elif isinstance(volume, (str, os.PathLike)):
        try:
            st = os.stat(volume)
        except OSError:
            return 0
        if stat.S_ISREG(st.st_mode):
            return st.st_size
        try:
            fd = os.open(volume, os.O_RDONLY)
        except OSError:
            return 0
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            return 0
        finally:
            os.close(fd)
    else:
        try:
            fd = volume.fileno()
        except Exception:
            fd = None
        if fd is None:
            try:
                here = volume.tell()
                end = volume.seek(0, os.SEEK_END)
                volume.seek(here)
                return int(end) - int(here)
            except Exception:
                return 0
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return st.st_size
        # A block device: its size is where a second descriptor's end is (this one's offset
        # stays where the caller left it).
        other = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.lseek(other, 0, os.SEEK_END)
        finally:
            os.close(other)
    except OSError:
        return 0


class Container:
    """An open volback container: a directory (a plain path or ``file:///abs/dir``) or an
    S3-compatible bucket and prefix (``s3://bucket/prefix``).

    ``create`` makes a missing container with ``zstd_level``, ``chunk_avg`` (bytes) and
    ``pack_size`` (bytes); an existing container keeps the settings it was created with.

    ``key`` is the key of an encrypted container: a source (``"env:NAME"``, ``"file:PATH"``,
    ``"cmd:COMMAND"``, whose output is the secret) or the secret itself as ``bytes``. A
    container created with a key is encrypted (every object sealed, chunk ids keyed); a wrong
    key raises :class:`volback.EncryptionKeyError` (kind ``wrong_key``), and an encrypted container opened
    without one can only be verified (kind ``key_required`` otherwise).

    ``object_lock_days`` (with ``object_lock_mode``, ``"compliance"`` or ``"governance"``) creates
    a container in an S3 bucket with Object Lock enabled whose backups, and everything they
    need, no one can delete for that many days after each is committed: deleting one earlier
    raises :class:`volback.RetainedError`.
    Every method releases the GIL while it works.
    """

    def __init__(
        self,
        url: str,
        *,
        create: bool = False,
        zstd_level: int | None = None,
        chunk_avg: int | None = None,
        pack_size: int | None = None,
        s3: S3Settings | None = None,
        key: str | bytes | None = None,
        object_lock_days: int | None = None,
        object_lock_mode: str = "compliance",
    ) -> None:
        s3 = s3 or S3Settings()
        self._native = _call(
            _volback.NativeContainer,
            url,
            create=create,
            zstd_level=zstd_level,
            chunk_avg=chunk_avg,
            pack_size=pack_size,
            s3_endpoint=s3.endpoint,
            s3_region=s3.region,
            s3_access_key_id=s3.access_key_id,
            s3_secret_access_key=s3.secret_access_key,
            s3_session_token=s3.session_token,
            s3_concurrency=s3.concurrency,
            key=key,
            object_lock_days=object_lock_days,
            object_lock_mode=object_lock_mode,
        )

    @property
    def url(self) -> str:
        """The canonical URL (``file:///…`` or ``s3://…``; never with credentials)."""
        return str(self._native.url)

    @property
    def encrypted(self) -> bool:
        """True for an encrypted container."""
        return bool(self._native.encrypted)

    def key_slots(self) -> list[dict[str, Any]]:
        """The key slots (``id``, ``created_at``, Argon2id cost, ``current``: the one this
        object was opened with)."""
        return list(json.loads(_call(self._native.keys)))

    def add_key(self, new_key: str | bytes) -> str:
        """Adds a key (a source or the secret's bytes) by wrapping the master key once more;
        returns the new slot's id. No data is re-encrypted."""
        return str(_call(self._native.add_key, new_key))

    def remove_key(self, key_id: str) -> None:
        """Removes a key slot; refused (kind ``key``) for the last one."""
        _call(self._native.remove_key, key_id)

    def change_key(self, new_key: str | bytes) -> str:
        """Replaces the key this container was opened with (a new slot, then the old one
        removed); returns the new slot's id."""
        return str(_call(self._native.change_key, new_key))

    def config(self) -> dict[str, Any]:
        """The container's settings (chunker, pack size, zstd level); an encrypted container's
        need its key."""
        return dict(json.loads(_call(self._native.config)))

    def check(self) -> None:
        """Writes, reads back and deletes a probe object."""
        _call(self._native.check)

    def backup(
        self,
        volume: Volume,
        *,
        volume_id: str,
        backup_id: str | None = None,
        parent_id: str | None = None,
        metadata: Any = None,
        data_timestamp: str | None = None,
        expected_size: int | None = None,
        size_hint: int | None = None,
        zstd_level: int | None = None,
        progress: ProgressCallback | None = None,
        cancel: _volback.CancelToken | None = None,
        labels: dict[str, str] | None = None,
        events: EventCallback | None = None,
        full_read: bool = False,
        changes: ChangeMap | None = None,
        map_sample: float | None = None,
        map_fallback: bool = False,
        full_read_every: int | None = None,
        full_read_after_days: int | None = None,
    ) -> dict[str, Any]:
        """Backs up ``volume``; an incremental of ``parent_id`` if given (the volume may have
        grown or shrunk). ``metadata`` (JSON-serialisable) is stored with the backup. Returns
        the report (``backup_id``, ``size``, ``bytes_new``, ``chunks_new``, ``object_count``,
        …). Nothing is committed unless it returns; ``cancel.cancel()`` (from any thread) stops it
        with :class:`volback.Cancelled`. ``expected_size``: the volume must be exactly this long
        (a shorter read is an error). ``size_hint``: the total that ``progress`` is given when the
        volume's size cannot be told without reading it (a file object without a descriptor).
        ``labels``: ``key=value`` pairs stored with the backup (``{"policy": "daily"}``), listed
        with it and the groups :meth:`prune` can apply rules to.

        How an incremental reads the volume: ``changes`` (a :class:`volback.ChangeMap`) says
        what changed since the parent's snapshot, and only that is read; ``map_sample`` (0 to 1)
        of the chunks it leaves unread are read back and checked, a mismatch failing the backup
        with :class:`volback.ChangeMapError` (or, with ``map_fallback``, reading everything).
        ``full_read`` reads the whole volume regardless (also a file whose size and times match
        its parent's, which is otherwise not read); ``full_read_every`` / ``full_read_after_days``
        read it all when that many backups in a row did not, or the last that did is that old."""
        read = {
            "full_read": full_read,
            "changes": changes.spec if changes is not None else None,
            "map_sample": map_sample,
            "map_fallback": map_fallback,
            "full_read_every": full_read_every,
            "full_read_after_days": full_read_after_days,
        }
        return run_job(
            "backup",
            events,
            progress,
            lambda p: dict(
                json.loads(
                    _call(
                        self._native.backup,
                        volume,
                        backup_id=backup_id or str(uuid.uuid4()),
                        volume_id=volume_id,
                        parent_id=parent_id,
                        metadata_json=None if metadata is None else json.dumps(metadata),
                        data_timestamp=data_timestamp,
                        expected_size=expected_size,
                        zstd_level=zstd_level,
                        size_hint=_size_of(volume) or size_hint or 0,
                        progress=p,
                        cancel=cancel,
                        labels=labels,
                        read=json.dumps(read),
                    )
                )
            ),
        )

    def restore(
        self,
        backup_id: str,
        target: Volume,
        *,
        is_new: bool,
        sync: bool = True,
        progress: ProgressCallback | None = None,
        cancel: _volback.CancelToken | None = None,
        events: EventCallback | None = None,
    ) -> dict[str, Any]:
        """Restores ``backup_id`` onto ``target``: a path, a file descriptor, or a file object.
        A descriptor (or an object whose ``fileno()`` gives one) is written at offsets; any
        other object with ``write()`` is written front to back in blocks of megabytes, ending at
        exactly the volume size. ``is_new``: the target reads as zeros, so zero extents are
        skipped (a path must not exist yet; it is written under a temporary name and renamed
        when complete; a file object is seeked over them when it is seekable); otherwise zeros
        are written and a file ends at exactly the volume size. Returns the report, with the
        stored volume metadata under ``volume_metadata``."""
        return run_job(
            "restore",
            events,
            progress,
            lambda p: dict(
                json.loads(
                    _call(
                        self._native.restore,
                        backup_id,
                        target,
                        is_new=is_new,
                        sync=sync,
                        progress=p,
                        cancel=cancel,
                    )
                )
            ),
        )

    def delete(self, backup_id: str) -> None:
        """Deletes a backup; other backups are unaffected, and :meth:`gc` gives the space back."""
        _call(self._native.delete, backup_id)

    def manifest(self, backup_id: str) -> dict[str, Any]:
        """A backup's manifest (ids, size, timestamps, stats, volume metadata)."""
        return dict(json.loads(_call(self._native.manifest, backup_id)))

    def get_metadata(self, backup_id: str) -> Any:
        """The volume metadata stored with a backup (``None`` if none)."""
        return self.manifest(backup_id).get("volume_metadata")

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every backup's manifest, oldest first; an unreadable one is ``{"error", "message"}``."""
        return list(json.loads(_call(self._native.list)))

    def restore_differential(
        self,
        backup_id: str,
        target: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
        cancel: _volback.CancelToken | None = None,
        events: EventCallback | None = None,
    ) -> dict[str, Any]:
        """Brings the existing volume at ``target`` (a regular file or a block device) back to
        the backup by rewriting only what differs: the target is read and hashed along the
        backup's extents, only chunks that differ are fetched, only their 4 KiB blocks that
        differ are written, and those are flushed and read back from the device. Returns the
        report (``chunks_rewritten``, ``bytes_written``, ``bytes_zeroed``, ``bytes_compared``,
        ``bytes_checked``)."""
        return run_job(
            "restore",
            events,
            progress,
            lambda p: dict(
                json.loads(
                    _call(
                        self._native.restore_differential,
                        backup_id,
                        os.fspath(target),
                        progress=p,
                        cancel=cancel,
                    )
                )
            ),
        )

    def read(self, backup_id: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the backup's volume from ``offset``, for file-level recovery (a
        partition table, a superblock, one file's blocks): only the chunks the range overlaps
        are read, each checked against its BLAKE3. A range past the volume's end raises
        :class:`volback.ConfigError`."""
        return bytes(_call(self._native.read, backup_id, offset, length))

    def serve_nbd(
        self,
        backup_id: str,
        *,
        socket: str | os.PathLike[str] | None = None,
        tcp: str | None = None,
        cache_mib: int = 256,
        read_ahead_mib: int = 32,
    ) -> NbdServer:
        """Serves the backup as a read-only block device over NBD (instant recovery) until the
        returned server is stopped: on the Unix socket ``socket`` (default
        ``$TMPDIR/volback-<backup id>.sock``) or on TCP at ``tcp`` (``"127.0.0.1:10809"``; port
        0 picks a free one). Memory stays within ``cache_mib`` plus a small constant."""
        native = _call(
            self._native.serve_nbd,
            backup_id,
            socket=None if socket is None else os.fspath(socket),
            tcp=tcp,
            cache_mib=cache_mib,
            read_ahead_mib=read_ahead_mib,
        )
        return NbdServer(native)

    def export_record(self, backup_id: str) -> str:
        """The backup's self-describing record (JSON text, no credentials)."""
        return str(_call(self._native.export_record, backup_id))

    def import_record(self, text: str) -> dict[str, Any]:
        """Checks a record against this container (its manifest must be byte-identical to the
        one exported); returns the backup's fields."""
        return dict(json.loads(_call(self._native.import_record, text)))

    def verify(
        self, backup_id: str | None = None, *, read_data: bool = False, events: EventCallback | None = None
    ) -> dict[str, Any]:
        """Checks that backups can be restored without restoring them; ``read_data`` re-reads
        and re-hashes every chunk. ``report["damaged_backups"]`` names what cannot be."""
        return run_job(
            "verify",
            events,
            None,
            lambda _: dict(json.loads(_call(self._native.verify, backup_id, read_data=read_data))),
        )

    def copy_to(
        self,
        dst: Container,
        *,
        backup_ids: builtins.list[str] | None = None,
        volume_id: str | None = None,
        labels: dict[str, str] | None = None,
        allow_plaintext: bool = False,
        events: EventCallback | None = None,
    ) -> dict[str, Any]:
        """Copies backups into ``dst`` (another directory, bucket or endpoint; its own key): those
        named, of ``volume_id``, carrying ``labels``, or all. Only what ``dst`` lacks is written;
        backups it holds are skipped; copies keep ids, labels and times. An encrypted container's
        backups go only to an encrypted ``dst`` unless ``allow_plaintext``. Returns the report
        (``copied``, ``skipped``, ``bytes_read``, ``bytes_written``)."""
        return run_job(
            "copy",
            events,
            None,
            lambda _: dict(
                json.loads(
                    _call(
                        self._native.copy_to,
                        dst._native,
                        backup_ids=backup_ids,
                        volume_id=volume_id,
                        labels=labels,
                        allow_plaintext=allow_plaintext,
                    )
                )
            ),
        )

    def undelete(self) -> int:
        """Brings back objects of a container with Object Lock that a plain DELETE hid behind
        delete markers; returns how many."""
        return int(_call(self._native.undelete))

    def gc(
        self,
        *,
        dry_run: bool = False,
        max_unused: float | None = None,
        clock_skew: float | None = None,
        min_age: float | None = None,
        events: EventCallback | None = None,
    ) -> dict[str, Any]:
        """Gives back the space of deleted and interrupted backups; safe alongside anything."""
        return run_job(
            "gc",
            events,
            None,
            lambda _: dict(
                json.loads(
                    _call(
                        self._native.gc,
                        dry_run=dry_run,
                        max_unused=max_unused,
                        clock_skew=clock_skew,
                        min_age=min_age,
                    )
                )
            ),
        )

    def prune(
        self,
        *,
        keep_last: int | None = None,
        keep_hourly: int | None = None,
        keep_daily: int | None = None,
        keep_weekly: int | None = None,
        keep_monthly: int | None = None,
        keep_yearly: int | None = None,
        keep_within: str | None = None,
        group_by_label: str | None = None,
        labels: dict[str, str] | None = None,
        dry_run: bool = False,
        allow_removing_newest: bool = False,
        gc: bool = True,
        events: EventCallback | None = None,
    ) -> dict[str, Any]:
        """Applies retention rules with restic's ``forget --keep-*`` meaning (``keep_within``
        as ``"1y2m3d4h"``) to each volume's backups, or to each value of label
        ``group_by_label``, considering only backups carrying all of ``labels``; deletes what
        no rule keeps (never a group's newest unless ``allow_removing_newest``) and, with
        ``gc``, gives the space back. Returns the report: per group, each backup and the
        rules that keep it."""
        return run_job(
            "prune",
            events,
            None,
            lambda _: dict(
                json.loads(
                    _call(
                        self._native.prune,
                        keep_last=keep_last,
                        keep_hourly=keep_hourly,
                        keep_daily=keep_daily,
                        keep_weekly=keep_weekly,
                        keep_monthly=keep_monthly,
                        keep_yearly=keep_yearly,
                        keep_within=keep_within,
                        group_by_label=group_by_label,
                        labels=labels,
                        dry_run=dry_run,
                        allow_removing_newest=allow_removing_newest,
                        gc=gc,
                    )
                )
            ),
        )
