"""volback as the backup driver of a stock Cinder 29 backup manager.

Built on Cinder's own test base (``BaseBackupTest``: an in-memory sqlite database, a fake
notifier): the manager is driven as the service drives it (``create_backup`` +
``continue_backup``, ``restore_backup``, ``delete_backup``, ``export_record`` /
``import_record``), with volback configured as ``backup_driver`` and a real temporary image as
the attached device. Run with ``python -m unittest`` (Cinder's TestCase does not run under
pytest as shipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any
from unittest import mock

from oslo_config import cfg
from oslo_utils import importutils

import cinder.exception as exception
import cinder.objects as objects
import volback.cinder  # noqa: F401  (registers the options)
from cinder.db import api as db_api
from cinder.objects import fields
from cinder.tests.unit.backup import test_backup

CONF = cfg.CONF
DRIVER = "volback.cinder.VolbackBackupDriver"
MIB = 1024 * 1024
# Credentials of the test S3 server: the secret must never appear in a fail_reason or an error.
ACCESS_KEY = "volback-cinder-test"
SECRET_KEY = "volback-cinder-secret-never-shown"


def pseudo_random(n: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d-%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


def image_bytes(seed: int, mib: int) -> bytes:
    parts = []
    for k in range(mib):
        parts.append(pseudo_random(MIB, seed * 1000 + k) if k % 3 != 2 else bytes(MIB))
    return b"".join(parts)


class CinderInterfaceCompliance(test_backup.test.TestCase):  # type: ignore[misc]
    """Cinder's own check of a backup driver (`cinder/tests/compliance`), on this class."""

    def test_the_driver_conforms_to_cinder_backup_driver_interface(self) -> None:
        from cinder.interface import backup_driver, util

        self.assertTrue(issubclass(volback.cinder.VolbackBackupDriver, backup_driver.BackupDriver))
        names = [d.class_fqn for d in util.get_backup_drivers()]
        self.assertIn("volback.cinder.VolbackBackupDriver", names)


def manager_patches(cls: Any) -> Any:
    """What attaching a device needs outside the manager's own code (os-brick, the volume
    service's RPC, chown), patched for every test method of ``cls``."""
    cls = mock.patch("cinder.utils.temporary_chown")(cls)
    cls = mock.patch("cinder.volume.rpcapi.VolumeAPI.get_backup_device")(cls)
    return mock.patch("cinder.volume.volume_utils.brick_get_connector_properties", return_value={})(cls)


class ManagerHarness(test_backup.BaseBackupTest):  # type: ignore[misc]
    """A stock backup manager with volback as its driver over a filesystem container; helpers
    that drive it as the service does. No tests of its own."""

    def setUp(self) -> None:
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="volback-cinder-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.container = os.path.join(self.tmp, "container")
        self.override_config("backup_driver", DRIVER)
        self.override_config("backup_volback_container", self.container)
        self.override_config("backup_volback_status_interval", 0.05)
        self.override_config("backup_timer_interval", 0)
        self.backup_mgr = importutils.import_object(CONF.backup_manager)
        self.backup_mgr.host = "testhost"
        self.backup_mgr.is_initialized = True
        self.device = os.path.join(self.tmp, "device.img")
        self.mock_object(self.backup_mgr, "_detach_device")
        self.attach = self.mock_object(self.backup_mgr, "_attach_device")
        self.attach.return_value = {"device": {"path": self.device}}
        self.mock_object(self.backup_mgr, "_is_our_backup", return_value=True)
        self.volume_mocks["secure_file_operations_enabled"].return_value = False
        # User-facing messages need a project in the context; these tests run as admin.
        self.mock_object(self.backup_mgr, "message_api")
        volback.cinder._CONTAINERS.clear()

    # -- helpers ---------------------------------------------------------------------------

    def _open(self) -> volback.Container:
        return volback.Container(self.container)

    def _objects(self) -> str:
        """The directory holding the container's objects as files."""
        return self.container

    def _backup(
        self,
        vol_id: str,
        data: bytes,
        parent: Any = None,
        fails: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> Any:
        with open(self.device, "wb") as f:
            f.write(data)
        backup = self._create_backup_db_entry(
            volume_id=vol_id, parent_id=parent.id if parent else None, metadata=metadata
        )
        vol = objects.Volume.get_by_id(self.ctxt, vol_id)
        vol.status = "backing-up"
        vol.previous_status = "available"
        vol.save()
        device = objects.BackupDeviceInfo.from_primitive(
            {"backup_device": vol, "secure_enabled": False, "is_snapshot": False},
            self.ctxt,
            ["admin_metadata", "metadata"],
        )
        self.backup_mgr.create_backup(self.ctxt, backup)
        if fails:
            self.assertRaises(
                exception.BackupOperationError, self.backup_mgr.continue_backup, self.ctxt, backup, device
            )
        else:
            self.backup_mgr.continue_backup(self.ctxt, backup, device)
        backup.refresh()
        return backup

    def _restore(self, backup: Any, vol_id: str, is_new: bool) -> bytes:
        backup.status = fields.BackupStatus.RESTORING
        backup.save()
        volume = objects.Volume.get_by_id(self.ctxt, vol_id)
        volume.status = "restoring-backup"
        volume.save()
        self.backup_mgr.restore_backup(self.ctxt, backup, vol_id, is_new)
        with open(self.device, "rb") as f:
            return f.read()


@manager_patches
class VolbackDriverUnderTheManager(ManagerHarness):
    def test_full_and_incremental_chain_restores_every_link(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        v1 = image_bytes(1, 12)
        full = self._backup(vol_id, v1)
        self.assertEqual(fields.BackupStatus.AVAILABLE, full.status, full.fail_reason)
        self.assertEqual(os.path.abspath(self.container), full.container.replace("file://", ""))
        self.assertLessEqual(len(full.service_metadata), 255)
        self.assertGreater(full.object_count, 0)
        v2 = bytearray(v1)
        v2[3 * MIB : 3 * MIB + 200_000] = pseudo_random(200_000, 9)
        v2 += pseudo_random(2 * MIB, 10)  # the volume grew
        incr = self._backup(vol_id, bytes(v2), parent=full)
        self.assertEqual(fields.BackupStatus.AVAILABLE, incr.status, incr.fail_reason)
        self.assertEqual(full.id, incr.parent_id)
        for backup, want in ((full, v1), (incr, bytes(v2))):
            for is_new in (True, False):
                with open(self.device, "wb") as f:
                    f.write(pseudo_random(3 * MIB, 3))
                got = self._restore(backup, vol_id, is_new)
                self.assertEqual(len(want), len(got))
                self.assertTrue(got == want, f"restore differs (is_new={is_new})")
                backup.refresh()
                self.assertEqual(fields.BackupStatus.AVAILABLE, backup.status)

    def test_an_incremental_given_a_change_map_reads_only_what_changed(self, *mocks: Any) -> None:
        maps = os.path.join(self.tmp, "maps")
        os.mkdir(maps)
        self.override_config("backup_volback_change_map_dir", maps)
        self.override_config("backup_volback_change_map_sample", 1.0)
        vol_id = self._create_volume_db_entry(size=1)
        v1 = image_bytes(1, 12)
        full = self._backup(vol_id, v1)
        v2 = bytearray(v1)
        v2[3 * MIB : 3 * MIB + 200_000] = pseudo_random(200_000, 9)
        with open(os.path.join(maps, "day2.csv"), "w") as f:
            f.write(f"{3 * MIB},200000\n")
        incr = self._backup(vol_id, bytes(v2), parent=full, metadata={"volback:changes": "day2.csv"})
        self.assertEqual(fields.BackupStatus.AVAILABLE, incr.status, incr.fail_reason)
        manifest = self._open().manifest(incr.id)
        self.assertEqual("change-map", manifest["read"])
        # Every chunk the map left unread was read back (sample rate 1) and found unchanged.
        used = manifest["change_map"]
        self.assertEqual((1, 200_000), (used["ranges"], used["changed_bytes"]))
        self.assertGreater(used["reused_chunks"], 0)
        self.assertGreater(used["sampled_chunks"], used["reused_chunks"])  # zeros too
        got = self._restore(incr, vol_id, True)
        self.assertTrue(got == bytes(v2), "restore differs")
        # A map that missed a change: the sampled check reads the whole volume instead.
        v3 = bytearray(v2)
        v3[5 * MIB : 5 * MIB + 5000] = pseudo_random(5000, 10)
        with open(os.path.join(maps, "day3.csv"), "w") as f:
            f.write("0,4096\n")
        third = self._backup(vol_id, bytes(v3), parent=incr, metadata={"volback:changes": "day3.csv"})
        self.assertEqual(fields.BackupStatus.AVAILABLE, third.status, third.fail_reason)
        self.assertNotIn("read", self._open().manifest(third.id))
        self.assertTrue(self._restore(third, vol_id, True) == bytes(v3), "restore differs")
        # A map outside the directory is refused, and the backup ends in error.
        bad = self._backup(
            vol_id, bytes(v3), parent=incr, fails=True, metadata={"volback:changes": "../day3.csv"}
        )
        self.assertEqual(fields.BackupStatus.ERROR, bad.status)

    def test_progress_notifications_are_monotone_and_end_at_100(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        self._backup(vol_id, image_bytes(2, 48))
        percents = [
            n["payload"]["backup_percent"]
            for n in self.notifier.notifications
            if n["event_type"] == "backup.createprogress"
        ]
        self.assertGreater(len(percents), 0, "no createprogress notification")
        self.assertEqual(100, percents[-1])
        self.assertEqual(1, percents.count(100))
        self.assertEqual(sorted(percents), percents)
        self.assertTrue(all(0 <= p <= 100 for p in percents))

    def test_progress_notifications_come_every_backup_timer_interval(self, *mocks: Any) -> None:
        # A slow device (0.6 s per read or write of up to 4 MiB): a backup and a restore of
        # 24 MiB take about 3.6 s each, with a notification every second (Cinder's option is
        # whole seconds).
        interval = 1
        self.override_config("backup_timer_interval", interval)
        vol_id = self._create_volume_db_entry(size=1)
        data = image_bytes(9, 24)
        sent: list[tuple[str, float, float]] = []
        from cinder.volume import volume_utils

        real = volume_utils.notify_about_backup_usage

        def record(ctxt: Any, backup: Any, event: str, extra_usage_info: Any = None, **kw: Any) -> Any:
            sent.append((event, time.monotonic(), extra_usage_info["backup_percent"]))
            return real(ctxt, backup, event, extra_usage_info=extra_usage_info, **kw)

        class SlowDevice:
            def __init__(self, raw: Any) -> None:
                self.raw = raw

            def read(self, n: int) -> bytes:
                time.sleep(0.6 * min(n, 4 * MIB) / (4 * MIB))
                return bytes(self.raw.read(min(n, 4 * MIB)))

            def write(self, b: bytes) -> int:
                n = min(len(b), 4 * MIB)
                time.sleep(0.6 * n / (4 * MIB))
                return int(self.raw.write(b[:n]))

        self.mock_object(volume_utils, "notify_about_backup_usage", record)
        backup = self._create_backup_db_entry(volume_id=vol_id)
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        start = time.monotonic()
        with open(self.device, "wb") as w:
            w.write(data)
        with open(self.device, "rb") as r:
            backup.update(driver.backup(backup, SlowDevice(r)))
        backup.status = fields.BackupStatus.RESTORING
        backup.save()
        with open(os.path.join(self.tmp, "out.img"), "wb") as w:
            driver.restore(backup, vol_id, SlowDevice(w), True)
        with open(os.path.join(self.tmp, "out.img"), "rb") as r:
            self.assertTrue(r.read() == data)
        for event in ("createprogress", "restoreprogress"):
            got = [(t, p) for e, t, p in sent if e == event]
            times = [start] + [t for t, _ in got[:-1]]
            percents = [p for _, p in got]
            self.assertEqual(100.0, percents[-1], event)
            self.assertEqual(sorted(percents), percents, event)
            # Some progress in between, never two notifications closer than the interval.
            self.assertGreaterEqual(len(got), 3, f"{event}: {got}")
            gaps = [b - a for a, b in zip(times, times[1:])]
            self.assertTrue(all(g >= interval for g in gaps), f"{event}: gaps {gaps}")
            start = got[-1][0]

    def test_delete_with_dependents_and_idempotent_delete(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        v1 = image_bytes(3, 8)
        full = self._backup(vol_id, v1)
        incr = self._backup(vol_id, v1[: 4 * MIB] + pseudo_random(4 * MIB, 4), parent=full)
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        driver.delete_backup(full)  # a parent with a dependent
        driver.delete_backup(full)  # again: not an error
        never = self._create_backup_db_entry(volume_id=vol_id, container=None)
        driver.delete_backup(never)  # never committed: not an error
        got = self._restore(incr, vol_id, True)
        self.assertTrue(got == v1[: 4 * MIB] + pseudo_random(4 * MIB, 4))

    def test_export_then_import_on_a_fresh_manager_restores(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        data = image_bytes(4, 6)
        backup = self._backup(vol_id, data)
        backup.status = fields.BackupStatus.AVAILABLE
        backup.save()
        export = self.backup_mgr.export_record(self.ctxt, backup)
        # Another host: a fresh manager and a database that has never seen the backup.
        backup.destroy()
        time.sleep(1.1)
        db_api.purge_deleted_rows(self.ctxt, age_in_days=0)
        volback.cinder._CONTAINERS.clear()
        mgr = importutils.import_object(CONF.backup_manager)
        mgr.host = "testhost"
        mgr.is_initialized = True
        self.backup_mgr = mgr
        self.mock_object(mgr, "_detach_device")
        self.mock_object(mgr, "_attach_device").return_value = {"device": {"path": self.device}}
        self.mock_object(mgr, "message_api")
        imported = self._create_export_record_db_entry(backup_id=backup.id)
        mgr.import_record(
            self.ctxt,
            imported,
            export["backup_service"],
            export["backup_url"],
            [],
        )
        imported = objects.Backup.get_by_id(self.ctxt, backup.id)
        self.assertEqual(fields.BackupStatus.AVAILABLE, imported.status, imported.fail_reason)
        got = self._restore(imported, vol_id, True)
        self.assertTrue(got == data)

    def test_a_record_naming_another_container_is_refused(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        backup = self._backup(vol_id, image_bytes(5, 4))
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        info = driver.export_record(backup)
        info["volback_record"]["container"] = "file:///etc"
        self.assertRaises(exception.InvalidBackup, driver.import_record, backup, info)
        info = driver.export_record(backup)
        info["volback_record"]["manifest_blake3"] = "0" * 64
        self.assertRaises(exception.InvalidBackup, driver.import_record, backup, info)

    def test_a_backup_being_deleted_stops_and_commits_nothing(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        backup = self._create_backup_db_entry(volume_id=vol_id)
        with open(self.device, "wb") as f:
            f.write(image_bytes(6, 64))
        # Slow the volume down so the status check sees the delete while data still flows.
        real = open(self.device, "rb")  # noqa: SIM115 (read by Slow, closed at cleanup)
        self.addCleanup(real.close)

        class Slow:
            def read(self, n: int) -> bytes:
                time.sleep(0.02)
                return real.read(min(n, MIB))

        backup.status = fields.BackupStatus.DELETING
        backup.save()
        started = time.monotonic()
        updates = driver.backup(backup, Slow())
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual({}, updates)
        self.assertEqual([], self._open().list())

    def test_a_restore_whose_status_changes_raises_restore_cancel(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        backup = self._backup(vol_id, image_bytes(7, 64))
        backup.status = fields.BackupStatus.AVAILABLE  # not 'restoring': cancelled at once
        backup.save()
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        with open(os.path.join(self.tmp, "target.img"), "wb") as f:
            self.assertRaises(exception.BackupRestoreCancel, driver.restore, backup, vol_id, f, False)

    def test_a_device_without_fileno_backs_up_and_restores(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        data = image_bytes(8, 6)
        with open(self.device, "wb") as f:
            f.write(data)
        backup = self._create_backup_db_entry(volume_id=vol_id)
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)

        class NoFileno:
            """What os-brick hands out for RBD and some transports: read/write, no descriptor."""

            def __init__(self, raw: Any) -> None:
                self.raw = raw

            def read(self, n: int) -> bytes:
                return bytes(self.raw.read(n))

            def write(self, b: bytes) -> int:
                return int(self.raw.write(b))

        with open(self.device, "rb") as device:
            updates = driver.backup(backup, NoFileno(device))
        self.assertGreater(updates["object_count"], 0)
        backup.update(updates)
        backup.status = fields.BackupStatus.RESTORING
        backup.save()
        out = os.path.join(self.tmp, "out.img")
        for is_new in (True, False):
            with open(out, "wb") as f:
                f.write(b"\xff" * (3 << 20))  # stale content: overwritten, zeros included
                f.seek(0)
                driver.restore(backup, vol_id, NoFileno(f), is_new)
            with open(out, "rb") as restored:
                self.assertTrue(restored.read() == data, f"volume_is_new={is_new}")

    def test_missing_container_ends_in_error_with_a_clear_reason(self, *mocks: Any) -> None:
        self.override_config("backup_create_containers", False)
        self.override_config("backup_volback_container", os.path.join(self.tmp, "absent"))
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        self.assertRaises(exception.BackupDriverException, driver.check_for_setup_error)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "absent")))
        vol_id = self._create_volume_db_entry(size=1)
        backup = self._backup(vol_id, image_bytes(9, 2), fails=True)
        self.assertEqual(fields.BackupStatus.ERROR, backup.status)
        self.assertIn("absent", backup.fail_reason)

    def test_an_encrypted_container_stores_no_plaintext_and_a_wrong_key_fails(self, *mocks: Any) -> None:
        # A real variable: the native side reads the process environment.
        os.environ["VOLBACK_TEST_KEY"] = "right-secret"
        self.addCleanup(os.environ.pop, "VOLBACK_TEST_KEY", None)
        self.override_config("backup_volback_key", "env:VOLBACK_TEST_KEY")
        volback.cinder._CONTAINERS.clear()
        vol_id = self._create_volume_db_entry(size=1)
        marker = b"cinder-volume-plaintext-marker " * 2048
        data = marker + image_bytes(31, 2)
        full = self._backup(vol_id, data)
        self.assertEqual(fields.BackupStatus.AVAILABLE, full.status, full.fail_reason)
        self.assertTrue(self._restore(full, vol_id, True) == data)
        for root, _, names in os.walk(self._objects()):
            for name in names:
                with open(os.path.join(root, name), "rb") as f:
                    stored = f.read()
                self.assertNotIn(marker[:64], stored, name)
                self.assertNotIn(vol_id.encode(), stored, name)
        self.assertTrue(self._open().encrypted)
        # Another key: the backup ends in error, naming the cause and not the secret.
        os.environ["VOLBACK_TEST_KEY"] = "wrong-secret"
        volback.cinder._CONTAINERS.clear()
        failed = self._backup(vol_id, data, parent=full, fails=True)
        self.assertEqual(fields.BackupStatus.ERROR, failed.status)
        self.assertIn("key", failed.fail_reason or "")
        self.assertNotIn("wrong-secret", failed.fail_reason or "")

    def test_a_corrupt_pack_fails_the_restore_by_name(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        backup = self._backup(vol_id, image_bytes(10, 6))
        packs = []
        for root, _, files in os.walk(os.path.join(self._objects(), "packs")):
            packs += [os.path.join(root, n) for n in files]
        biggest = max(packs, key=os.path.getsize)
        with open(biggest, "r+b") as f:
            f.seek(4096)
            b = f.read(1)
            f.seek(4096)
            f.write(bytes([b[0] ^ 0xFF]))
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        backup.status = fields.BackupStatus.RESTORING
        backup.save()
        with (
            open(os.path.join(self.tmp, "out.img"), "wb") as f,
            self.assertRaises(exception.BackupOperationError) as e,
        ):
            driver.restore(backup, vol_id, f, True)
        self.assertIn(os.path.basename(biggest), str(e.exception))
        self.assertNotIn(SECRET_KEY, str(e.exception))

    def test_greenthreads_keep_running_during_a_backup(self, *mocks: Any) -> None:
        """cinder-backup runs under eventlet: a heartbeat greenthread must keep ticking while the
        driver works (the native work runs in a real thread; this greenthread only polls)."""
        import eventlet

        vol_id = self._create_volume_db_entry(size=1)
        with open(self.device, "wb") as f:
            f.write(image_bytes(11, 96))
        backup = self._create_backup_db_entry(volume_id=vol_id)
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        ticks: list[float] = []
        stop: list[bool] = []

        def heartbeat() -> None:
            while not stop:
                ticks.append(time.monotonic())
                eventlet.sleep(0.01)

        gt = eventlet.spawn(heartbeat)
        started = time.monotonic()
        with open(self.device, "rb") as device:
            driver.backup(backup, device)
        elapsed = time.monotonic() - started
        stop.append(True)
        gt.wait()
        during = [x for x in ticks if started <= x <= started + elapsed]
        gaps = [b - a for a, b in zip(during, during[1:])]
        self.assertGreater(len(during), elapsed / 0.01 / 4, (len(during), elapsed))
        self.assertLess(max(gaps, default=0), 0.5, "the heartbeat stalled")

    def test_restoring_onto_the_source_volume_rewrites_only_what_differs(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        data = image_bytes(31, 8)
        backup = self._backup(vol_id, data)
        damaged = bytearray(data)
        damaged[MIB : MIB + 4096] = pseudo_random(4096, 1)
        with open(self.device, "wb") as w:
            w.write(bytes(damaged))
        reports: list[dict[str, Any]] = []
        real = volback.Container.restore_differential

        def spy(c: volback.Container, *a: Any, **kw: Any) -> dict[str, Any]:
            reports.append(real(c, *a, **kw))
            return reports[-1]

        backup.status = fields.BackupStatus.RESTORING
        backup.save()
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        with mock.patch.object(volback.Container, "restore_differential", spy):
            with open(self.device, "r+b") as rw:
                driver.restore(backup, vol_id, rw, False)
            with open(self.device, "rb") as r:
                self.assertTrue(r.read() == data)
            self.assertEqual(1, len(reports))
            self.assertEqual(4096, reports[0]["bytes_written"])
            # Onto a new volume, or another volume: a plain restore.
            other = self._create_volume_db_entry(size=1)
            with open(self.device, "r+b") as rw:
                driver.restore(backup, other, rw, False)
            self.assertEqual(1, len(reports))

    def test_volume_metadata_goes_to_the_destination_volume(self, *mocks: Any) -> None:
        src = self._create_volume_db_entry(size=1)
        dst = self._create_volume_db_entry(size=1, status="available")
        meta = '{"version": 2, "volume-base-metadata": {"bootable": true}}'
        driver = volback.cinder.VolbackBackupDriver(self.ctxt)
        self.mock_object(driver, "get_metadata", return_value=meta)
        put = self.mock_object(driver, "put_metadata")
        backup = self._create_backup_db_entry(volume_id=src)
        data = image_bytes(12, 3)
        with open(self.device, "wb") as f:
            f.write(data)
        with open(self.device, "rb") as f:
            backup.update(driver.backup(backup, f))
        backup.status = fields.BackupStatus.RESTORING
        backup.save()
        out = os.path.join(self.tmp, "dst.img")
        with open(out, "wb") as f:
            driver.restore(backup, dst, f, True)
        put.assert_called_once()
        self.assertEqual(dst, put.call_args[0][0])
        self.assertEqual(
            {"version": 2, "volume-base-metadata": {"bootable": True}}, json.loads(put.call_args[0][1])
        )
        restore_events = [
            n["payload"]["backup_percent"]
            for n in self.notifier.notifications
            if n["event_type"] == "backup.restoreprogress"
        ]
        self.assertEqual(100, restore_events[-1])


def start_s3s_fs(root: str) -> tuple[subprocess.Popen[bytes], str]:
    """An s3s-fs server over ``root`` on a free port of 127.0.0.1 (installed by scripts/test.sh)."""
    binary = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port), "--access-key", ACCESS_KEY]
        + ["--secret-key", SECRET_KEY, root],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


@manager_patches
class VolbackDriverOnS3(VolbackDriverUnderTheManager):
    """The same manager-driven runs against a real S3 server (s3s-fs on 127.0.0.1)."""

    def setUp(self) -> None:
        super().setUp()
        root = os.path.join(self.tmp, "s3")
        os.makedirs(os.path.join(root, "backups"))
        proc, endpoint = start_s3s_fs(root)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        self.container = "s3://backups/cinder"
        self.override_config("backup_volback_container", self.container)
        self.override_config("backup_volback_s3_endpoint", endpoint)
        self.override_config("backup_volback_s3_region", "us-east-1")
        self.override_config("backup_volback_s3_access_key", ACCESS_KEY)
        self.override_config("backup_volback_s3_secret_key", SECRET_KEY)
        self.s3_objects = os.path.join(root, "backups", "cinder")

    def _objects(self) -> str:
        return self.s3_objects

    def _open(self) -> volback.Container:
        return volback.Container(
            self.container,
            s3=volback.S3Settings(
                endpoint=CONF.backup_volback_s3_endpoint,
                region="us-east-1",
                access_key_id=ACCESS_KEY,
                secret_access_key=SECRET_KEY,
            ),
        )

    def test_full_and_incremental_chain_restores_every_link(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        v1 = image_bytes(21, 8)
        full = self._backup(vol_id, v1)
        self.assertEqual(fields.BackupStatus.AVAILABLE, full.status, full.fail_reason)
        self.assertEqual("s3://backups/cinder", full.container)
        v2 = v1[: 5 * MIB] + pseudo_random(3 * MIB, 22)
        incr = self._backup(vol_id, v2, parent=full)
        self.assertEqual(fields.BackupStatus.AVAILABLE, incr.status, incr.fail_reason)
        for backup, want in ((full, v1), (incr, v2)):
            self.assertTrue(self._restore(backup, vol_id, True) == want)

    def test_wrong_credentials_end_in_error_without_the_secret(self, *mocks: Any) -> None:
        self.override_config("backup_volback_s3_secret_key", "wrong-" + SECRET_KEY)
        volback.cinder._CONTAINERS.clear()
        vol_id = self._create_volume_db_entry(size=1)
        backup = self._backup(vol_id, image_bytes(23, 2), fails=True)
        self.assertEqual(fields.BackupStatus.ERROR, backup.status)
        self.assertGreater(len(backup.fail_reason or ""), 0)
        self.assertNotIn(SECRET_KEY, backup.fail_reason)
        self.assertIn("backups", backup.fail_reason)


def start_ceph_rgw(workdir: str) -> str:
    """Ceph's RADOS Gateway on 127.0.0.1 (scripts/ceph-rgw.sh; stops when this process ends)."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "ceph-rgw.sh")
    out = subprocess.run(
        ["bash", script, "start", workdir, str(os.getpid())], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


@manager_patches
class VolbackDriverWithObjectLock(ManagerHarness):
    """Object Lock on a server that enforces it (Ceph RGW): a backup the manager makes is
    retained, and deleting it early fails with the date while the backup stays restorable."""

    endpoint = ""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        workdir = tempfile.mkdtemp(prefix="volback-cinder-rgw-")
        cls.endpoint = start_ceph_rgw(workdir)
        # A bucket with Object Lock enabled (what an operator prepares once).
        subprocess.run(
            ["curl", "-sf", "-X", "PUT", "-H", "x-amz-bucket-object-lock-enabled: true"]
            + ["-H", "x-amz-content-sha256: " + hashlib.sha256(b"").hexdigest()]
            + ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "volbacktest:volbacktestsecret"]
            + [cls.endpoint + "/locked"],
            check=True,
        )

    def setUp(self) -> None:
        super().setUp()
        self.container = "s3://locked/cinder"
        self.override_config("backup_volback_container", self.container)
        self.override_config("backup_volback_s3_endpoint", self.endpoint)
        self.override_config("backup_volback_s3_region", "us-east-1")
        self.override_config("backup_volback_s3_access_key", "volbacktest")
        self.override_config("backup_volback_s3_secret_key", "volbacktestsecret")
        self.override_config("backup_volback_object_lock_days", 1)

    def test_retained_backups_cannot_be_deleted_early(self, *mocks: Any) -> None:
        vol_id = self._create_volume_db_entry(size=1)
        data = image_bytes(31, 4)
        backup = self._backup(vol_id, data)
        self.assertEqual(fields.BackupStatus.AVAILABLE, backup.status, backup.fail_reason)
        backup.status = fields.BackupStatus.DELETING
        backup.save()
        self.assertRaises(exception.BackupOperationError, self.backup_mgr.delete_backup, self.ctxt, backup)
        backup.refresh()
        self.assertEqual(fields.BackupStatus.ERROR, backup.status)
        self.assertIn("retained", backup.fail_reason or "")
        self.assertIn("Object Lock", backup.fail_reason or "")
        backup.status = fields.BackupStatus.AVAILABLE
        backup.save()
        self.assertTrue(self._restore(backup, vol_id, True) == data)
