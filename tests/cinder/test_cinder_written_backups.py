"""Backups written by Cinder 29's own posix and S3 drivers, read by volback.

Cinder's ``PosixBackupDriver`` and ``S3BackupDriver`` (the latter against the S3 test server on
127.0.0.1) write chains — a full and two incrementals, each compression Cinder offers, volumes
with zero regions, several volumes in one tree — and volback lists them, restores every link
byte for byte, adopts them into a volback container, and the records the adoption emits are
imported through a stock backup manager with the volback driver and restored from there.
Damaged objects and missing links give the right errors. Run with ``python -m unittest``.
"""

from __future__ import annotations

# Cinder's test package monkey-patches with eventlet: it must run before anything imports ssl,
# or botocore's SSL context (Cinder's S3 driver) recurses without end.
import cinder.tests.unit  # noqa: F401  # isort: skip

import base64
import io
import json
import os
import time
from typing import Any

import test_volback_driver as base
from oslo_config import cfg
from oslo_utils import importutils

import cinder.objects as objects
import volback
import volback.cinder
from cinder.backup.drivers import posix, s3
from cinder.db import api as db_api
from cinder.objects import fields

CONF = cfg.CONF
MIB = base.MIB
COMPRESSIONS = ("zlib", "bz2", "zstd", "none")


def volumes(seed: int) -> list[bytes]:
    """Three states of a 12 MiB volume (every third MiB zero): full, a few changed MiB, and
    one more changed MiB plus a written MiB zeroed again."""
    v1 = base.image_bytes(seed, 12)
    v2 = bytearray(v1)
    v2[1 * MIB : 1 * MIB + 100_000] = base.pseudo_random(100_000, seed + 1)
    v2[7 * MIB : 8 * MIB] = base.pseudo_random(MIB, seed + 2)
    v3 = bytearray(v2)
    v3[10 * MIB + 4096 : 10 * MIB + 70_000] = base.pseudo_random(65_904, seed + 3)
    v3[0:MIB] = bytes(MIB)
    return [v1, bytes(v2), bytes(v3)]


@base.manager_patches
class CinderWrittenBackups(base.ManagerHarness):  # type: ignore[misc]
    """Chains written by Cinder's posix driver into one ``backup_posix_path`` tree."""

    def setUp(self) -> None:
        super().setUp()
        self.posix_root = os.path.join(self.tmp, "backup_posix_path")
        os.makedirs(self.posix_root)
        self.override_config("backup_posix_path", self.posix_root)
        # Objects of 4 MiB (default 1.86 GiB), hashed per 32 KiB for incrementals.
        self.override_config("backup_file_size", 4 * MIB)
        self.override_config("backup_sha_block_size_bytes", 32768)
        self.override_config("backup_enable_progress_timer", False)

    # -- Cinder's side ---------------------------------------------------------------------

    def _cinder_driver(self) -> Any:
        return posix.PosixBackupDriver(self.ctxt)

    def _source(self) -> volback.CinderSource:
        return volback.CinderSource(self.posix_root)

    def _cinder_chain(self, compression: str, seed: int) -> tuple[str, list[Any], list[bytes]]:
        """A full and two incrementals of a new volume, written by Cinder's driver with
        ``compression``; returns the volume id, the backups and the volumes they hold."""
        self.override_config("backup_compression_algorithm", compression)
        driver = self._cinder_driver()
        vol_id = self._create_volume_db_entry(size=1)
        backups: list[Any] = []
        states = volumes(seed)
        for data in states:
            parent = backups[-1] if backups else None
            b = self._create_backup_db_entry(
                volume_id=vol_id,
                parent_id=parent.id if parent else None,
                container=None,
                display_name=f"{compression}-{len(backups)}",
            )
            driver.backup(b, io.BytesIO(data))
            b.refresh()
            b.status = fields.BackupStatus.AVAILABLE
            b.save()
            backups.append(b)
        return vol_id, backups, states

    def _cinder_restore(self, backup: Any, is_new: bool) -> bytes:
        backup.status = fields.BackupStatus.RESTORING
        backup.save()
        out = io.BytesIO(bytes(len(volumes(0)[0])))
        self._cinder_driver().restore(backup, backup.volume_id, out, is_new)
        backup.status = fields.BackupStatus.AVAILABLE
        backup.save()
        return out.getvalue()

    # -- the tests -------------------------------------------------------------------------

    def test_every_compression_lists_restores_and_adopts_byte_for_byte(self, *mocks: Any) -> None:
        chains = {c: self._cinder_chain(c, 40 + i) for i, c in enumerate(COMPRESSIONS)}
        src = self._source()
        found = {b["backup_id"]: b for b in src.backups()}
        self.assertEqual(3 * len(COMPRESSIONS), len(found), list(found))
        for vol_id, backups, states in chains.values():
            for i, (b, want) in enumerate(zip(backups, states)):
                row = found[b.id]
                self.assertEqual(vol_id, row["volume_id"])
                self.assertEqual(len(want), row["size"])
                self.assertEqual(backups[i - 1].id if i else None, row["parent_id"])
                target = os.path.join(self.tmp, f"{b.id}.img")
                report = src.restore(b.id, target)
                with open(target, "rb") as f:
                    got = f.read()
                self.assertTrue(got == want, f"{b.display_name}: restore differs")
                self.assertEqual(i + 1, len(report["chain"]))
                if i == 2:
                    # Cinder's own restore of the same backup agrees.
                    for is_new in (True, False):
                        self.assertTrue(self._cinder_restore(b, is_new) == want)
                os.unlink(target)

        container = self._open_adopt_container()
        report = src.adopt_into(container)
        adopted = {a["backup_id"]: a for a in report["adopted"]}
        self.assertEqual(set(found), set(adopted))
        for _vol_id, backups, states in chains.values():
            for i, (b, want) in enumerate(zip(backups, states)):
                a = adopted[b.id]
                self.assertFalse(a["already_adopted"])
                self.assertEqual(backups[i - 1].id if i else None, a["parent_id"])
                out = os.path.join(self.tmp, "adopted.img")
                container.restore(b.id, out, is_new=True)
                with open(out, "rb") as f:
                    self.assertTrue(f.read() == want, f"{b.display_name}: adopted backup differs")
                os.unlink(out)
        again = src.adopt_into(container)
        self.assertTrue(all(a["already_adopted"] for a in again["adopted"]))
        self.assertEqual(0, again["bytes_written"])

    def test_an_adopted_chain_stores_what_volbacks_own_backups_store(self, *mocks: Any) -> None:
        vol_id, backups, states = self._cinder_chain("zlib", 60)
        adopted = self._source().adopt_into(self._open_adopt_container(), volume_id=vol_id)
        own = volback.Container(os.path.join(self.tmp, "own"), create=True)
        own_bytes = 0
        parent = None
        for b, data in zip(backups, states):
            r = own.backup(io.BytesIO(data), backup_id=b.id, volume_id=vol_id, parent_id=parent)
            own_bytes += int(r["bytes_new"])
            parent = b.id
        self.assertLessEqual(adopted["bytes_written"], own_bytes + 4096)
        # The Cinder chain itself stores every changed 4 MiB object whole.
        self.assertLess(adopted["bytes_written"], 20 * MIB)

    def test_adopted_records_import_through_the_manager_and_restore(self, *mocks: Any) -> None:
        vol_id, backups, states = self._cinder_chain("zstd", 70)
        # The old driver's exports keep the backups' own fields (names, descriptions).
        exports = [self._old_export(b) for b in backups]
        container = self._open_adopt_container()
        report = self._source().adopt_into(container, volume_id=vol_id, cinder_exports=exports)
        records = {a["backup_id"]: a["record"] for a in report["adopted"]}
        # Another service: the old backups leave the database (Cinder refuses to import an id
        # it holds), the volback driver serves the adoption's container.
        for b in reversed(backups):
            b.destroy()
        time.sleep(1.1)
        db_api.purge_deleted_rows(self.ctxt, age_in_days=0)
        self.override_config("backup_volback_container", container.url)
        volback.cinder._CONTAINERS.clear()
        mgr = importutils.import_object(CONF.backup_manager)
        mgr.host = "testhost"
        mgr.is_initialized = True
        self.mock_object(mgr, "_detach_device")
        self.mock_object(mgr, "_attach_device").return_value = {"device": {"path": self.device}}
        self.mock_object(mgr, "message_api")
        self.backup_mgr = mgr
        for b, want in zip(backups, states):
            rec = records[b.id]
            self.assertEqual(base.DRIVER, rec["backup_service"])
            imported = self._create_export_record_db_entry(backup_id=b.id)
            mgr.import_record(self.ctxt, imported, rec["backup_service"], rec["backup_url"], [])
            imported = objects.Backup.get_by_id(self.ctxt, b.id)
            self.assertEqual(fields.BackupStatus.AVAILABLE, imported.status, imported.fail_reason)
            self.assertEqual(b.display_name, imported.display_name)
            self.assertEqual(base.DRIVER, imported.service)
            with open(self.device, "wb") as f:
                f.write(base.pseudo_random(MIB, 1))
            got = self._restore(imported, vol_id, True)
            self.assertTrue(got == want, f"{b.display_name}: restore through the manager differs")

    def test_damaged_objects_and_missing_links_are_named(self, *mocks: Any) -> None:
        _vol_id, backups, _ = self._cinder_chain("bz2", 80)
        src = self._source()
        full, incr1, incr2 = backups
        objects_of = {
            row["backup_id"]: os.path.join(self.posix_root, os.path.dirname(row["manifest"]))
            for row in src.backups()
        }
        # A data object of the first incremental, rewritten with other (valid bz2) bytes.
        names = sorted(n for n in os.listdir(objects_of[incr1.id]) if f"backup_{incr1.id}-" in n)
        victim = os.path.join(objects_of[incr1.id], names[0])
        import bz2

        with open(victim, "wb") as f:
            f.write(bz2.compress(base.pseudo_random(200_000, 5)))
        target = os.path.join(self.tmp, "bad.img")
        with self.assertRaises(volback.DamageError) as cm:
            src.restore(incr2.id, target)
        self.assertIn(names[0], str(cm.exception))
        self.assertIn(incr1.id, str(cm.exception))
        self.assertFalse(os.path.exists(target))
        adopt_into = self._open_adopt_container()
        with self.assertRaises(volback.DamageError):
            src.adopt_into(adopt_into, backup_ids=[incr1.id])
        self.assertEqual([], adopt_into.list())
        # A missing object, then a missing link.
        os.unlink(victim)
        with self.assertRaises(volback.DamageError) as cm:
            src.restore(incr1.id, target)
        self.assertEqual("missing_object", cm.exception.kind)
        for name in os.listdir(objects_of[full.id]):
            if f"backup_{full.id}" in name:
                os.unlink(os.path.join(objects_of[full.id], name))
        with self.assertRaises(volback.BackupNotFound) as nf:
            src.restore(incr2.id, target)
        self.assertEqual("parent_not_found", nf.exception.kind)

    # -- helpers ---------------------------------------------------------------------------

    def _open_adopt_container(self) -> volback.Container:
        return volback.Container(os.path.join(self.tmp, "adopted"), create=True)

    def _old_export(self, backup: Any) -> str:
        """What ``cinder backup-export`` prints for a backup of the old driver."""
        record = backup.encode_record(driver_info={})
        decoded = json.loads(base64.b64decode(record))
        self.assertEqual(backup.id, decoded["id"])
        return json.dumps({"backup_service": backup.service, "backup_url": record})


@base.manager_patches
class CinderWrittenBackupsOnS3(CinderWrittenBackups):
    """The same, with chains written by Cinder's S3 driver into a bucket of the S3 test
    server (s3s-fs on 127.0.0.1), read by volback over S3."""

    def setUp(self) -> None:
        super().setUp()
        root = os.path.join(self.tmp, "s3")
        os.makedirs(os.path.join(root, "volumebackups"))
        proc, self.endpoint = base.start_s3s_fs(root)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        self.bucket_dir = os.path.join(root, "volumebackups")
        self.override_config("backup_s3_endpoint_url", self.endpoint)
        self.override_config("backup_s3_store_access_key", base.ACCESS_KEY)
        self.override_config("backup_s3_store_secret_key", base.SECRET_KEY)
        self.override_config("backup_s3_store_bucket", "volumebackups")
        self.override_config("backup_s3_object_size", 4 * MIB)
        self.override_config("backup_s3_block_size", 32768)
        self.override_config("backup_s3_enable_progress_timer", False)
        self.posix_root = self.bucket_dir  # where the objects lie, for damaging them

    def _cinder_driver(self) -> Any:
        return s3.S3BackupDriver(self.ctxt)

    def _source(self) -> volback.CinderSource:
        return volback.CinderSource(
            "s3://volumebackups",
            s3=volback.S3Settings(
                endpoint=self.endpoint,
                region="us-east-1",
                access_key_id=base.ACCESS_KEY,
                secret_access_key=base.SECRET_KEY,
            ),
        )
