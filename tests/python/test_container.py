"""The `volback` Python package against real filesystem containers: every verb, the three kinds
of volume (path, descriptor, file object), progress and cancellation, typed errors, and that
native work releases the GIL."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import volback
from conftest import make_image, pseudo_random


def open_container(tmp_path: Path) -> volback.Container:
    return volback.Container(str(tmp_path / "container"), create=True)


def test_backup_restore_from_a_path_byte_identical(tmp_path: Path, image: Path) -> None:
    c = open_container(tmp_path)
    r = c.backup(image, volume_id="vol-1", backup_id="b1", metadata={"bootable": True})
    assert r["backup_id"] == "b1"
    assert r["size"] == image.stat().st_size
    assert r["zero_bytes"] > 0
    out = tmp_path / "out.img"
    rr = c.restore("b1", out, is_new=True)
    assert out.read_bytes() == image.read_bytes()
    assert rr["volume_metadata"] == {"bootable": True}
    assert c.get_metadata("b1") == {"bootable": True}
    # A new file restore is sparse: zero extents are holes.
    assert out.stat().st_blocks * 512 < out.stat().st_size


def test_descriptors_and_file_objects(tmp_path: Path, image: Path) -> None:
    c = open_container(tmp_path)
    c.backup(image, volume_id="v", backup_id="full")
    data = bytearray(image.read_bytes())
    data[100_000:160_000] = pseudo_random(60_000, 9)
    image.write_bytes(bytes(data))
    # A real descriptor: the engine reads the file itself, and deduplicates against `full`.
    with open(image, "rb") as f:
        inc = c.backup(f.fileno(), volume_id="v", backup_id="inc", parent_id="full")
    assert inc["parent_id"] == "full"
    assert 0 < inc["chunks_new"] < inc["chunks_total"] // 4
    # A file object without a descriptor is read with read(n).
    stream = c.backup(io.BytesIO(bytes(data)), volume_id="v", backup_id="stream")
    assert stream["size"] == len(data)
    assert stream["chunks_new"] == 0
    # Restores onto descriptors: a file opened 'wb' (truncated, as Cinder's manager opens a
    # file-backed volume) ends at exactly the volume's size, new or not.
    for is_new in (True, False):
        target = tmp_path / (f"fd-{is_new}.img")
        target.write_bytes(pseudo_random(3 << 20, 5))
        with open(target, "wb") as f:
            c.restore("inc", f.fileno(), is_new=is_new)
        assert target.read_bytes() == bytes(data), is_new
    # Over a larger existing target, zeros are written and the file is cut to size.
    target = tmp_path / "existing.img"
    target.write_bytes(pseudo_random(12 << 20, 6))
    c.restore("stream", str(target), is_new=False)
    assert target.read_bytes() == bytes(data)


class WriteOnly:
    """A target with ``write()`` only (no descriptor, no seek), as a pipe or a transport's
    wrapper is; it takes at most 1 MiB a call, so short writes are continued."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.calls = 0

    def write(self, b: bytes) -> int:
        self.calls += 1
        n = min(len(b), 1 << 20)
        self.out += b[:n]
        return n


class Seekable(io.BytesIO):
    """An in-memory volume (no descriptor) that counts the zeros it was sent."""

    def __init__(self, initial: bytes = b"") -> None:
        super().__init__(initial)
        self.zeros_written = 0

    def write(self, b: Any) -> int:
        self.zeros_written += bytes(b).count(0)
        return super().write(b)


def test_restore_onto_file_objects_without_a_descriptor(tmp_path: Path, image: Path) -> None:
    c = open_container(tmp_path)
    c.backup(image, volume_id="v", backup_id="b")
    data = image.read_bytes()
    # Write-only: every byte, zeros included, in order, in a few large writes.
    w = WriteOnly()
    r = c.restore("b", w, is_new=True)
    assert bytes(w.out) == data
    assert r["zero_bytes"] > 0
    assert w.calls < len(data) // (1 << 20) + 8
    # Seekable and new: zero runs are seeked over, and the object still ends at the size.
    new = Seekable()
    c.restore("b", new, is_new=True)
    assert new.getvalue() == data
    assert new.zeros_written < r["zero_bytes"] // 10
    # Existing content: zeros are written over it.
    old = Seekable(pseudo_random(len(data), 3))
    c.restore("b", old, is_new=False)
    assert old.getvalue() == data
    assert old.zeros_written >= r["zero_bytes"]

    # A failing write() fails the restore with the target's error, not a partial success.
    class Broken:
        def write(self, b: bytes) -> int:
            raise OSError("device went away")

    with pytest.raises(volback.VolbackError, match="device went away"):
        c.restore("b", Broken(), is_new=True)


def test_progress_is_monotone_and_ends_at_the_size(tmp_path: Path) -> None:
    c = open_container(tmp_path)
    vol = tmp_path / "big.img"
    make_image(vol, 2, mib=64)
    seen: list[tuple[int, int]] = []
    r = c.backup(vol, volume_id="v", backup_id="b", progress=lambda d, t: seen.append((d, t)))
    assert seen, "no progress reported"
    assert all(t == r["size"] for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1][0] == r["size"]
    restored: list[tuple[int, int]] = []
    c.restore("b", tmp_path / "out.img", is_new=True, progress=lambda d, t: restored.append((d, t)))
    assert restored[-1] == (r["size"], r["size"])


def test_cancellation_commits_nothing(tmp_path: Path) -> None:
    c = open_container(tmp_path)
    vol = tmp_path / "big.img"
    make_image(vol, 3, mib=64)
    with pytest.raises(volback.Cancelled) as e:
        c.backup(vol, volume_id="v", backup_id="b", progress=lambda d, t: False)
    assert e.value.kind == "cancelled"
    assert c.list() == []

    # The callback's own exception is what the caller sees.
    def failing(done: int, total: int) -> bool:
        raise ZeroDivisionError("from the callback")

    with pytest.raises(ZeroDivisionError):
        c.backup(vol, volume_id="v", backup_id="b", progress=failing)
    c.backup(vol, volume_id="v", backup_id="b")
    out = tmp_path / "out.img"
    with pytest.raises(volback.Cancelled):
        c.restore("b", out, is_new=True, progress=lambda d, t: False)
    assert not out.exists()


def test_errors_are_typed(tmp_path: Path, image: Path) -> None:
    c = open_container(tmp_path)
    c.backup(image, volume_id="v", backup_id="b")
    with pytest.raises(volback.BackupNotFound) as nf:
        c.restore("nope", tmp_path / "x.img", is_new=True)
    assert nf.value.kind == "backup_not_found"
    with pytest.raises(volback.BackupExists):
        c.backup(image, volume_id="v", backup_id="b")
    with pytest.raises(volback.BackupNotFound):
        c.backup(image, volume_id="v", backup_id="c", parent_id="missing")
    with pytest.raises(volback.ConfigError):
        c.backup(image, volume_id="bad/id", backup_id="d")
    with pytest.raises(volback.VolumeError):
        c.restore("b", image, is_new=True)  # a new target must not exist
    with pytest.raises(volback.StorageError) as absent:
        volback.Container(str(tmp_path / "absent"))
    assert "absent" in str(absent.value)
    c.delete("b")
    with pytest.raises(volback.BackupDeleted):
        c.manifest("b")
    # Every kind maps to a class, and unknown kinds to the base class.
    for kind in volback.KINDS:
        assert issubclass(volback.error_class(kind), volback.VolbackError)
    assert volback.error_class("from-the-future") is volback.VolbackError


def test_damage_is_reported_by_name(tmp_path: Path, image: Path) -> None:
    c = open_container(tmp_path)
    c.backup(image, volume_id="v", backup_id="b")
    packs = sorted((tmp_path / "container" / "packs").rglob("*"), key=lambda p: -p.stat().st_size)
    pack = next(p for p in packs if p.is_file())
    raw = bytearray(pack.read_bytes())
    raw[100] ^= 0xFF
    pack.write_bytes(bytes(raw))
    report = c.verify(read_data=True)
    assert report["damaged_backups"] == ["b"]
    with pytest.raises(volback.DamageError) as e:
        c.restore("b", tmp_path / "out.img", is_new=True)
    assert pack.name in str(e.value)
    assert not (tmp_path / "out.img").exists()


def test_records_list_verify_gc(tmp_path: Path, image: Path) -> None:
    c = open_container(tmp_path)
    c.backup(image, volume_id="v", backup_id="b1")
    c.backup(image, volume_id="v", backup_id="b2", parent_id="b1")
    text = c.export_record("b2")
    record = json.loads(text)
    assert record["backup"]["id"] == "b2"
    assert "secret" not in text.lower()
    # Another process, same container: the record imports; a tampered one does not.
    other = volback.Container(c.url)
    assert other.import_record(text)["parent_id"] == "b1"
    tampered = text.replace(record["manifest_blake3"], "0" * 64)
    with pytest.raises(volback.RecordError):
        other.import_record(tampered)
    # A copy of the container, opened by the caller: the record (naming the original) imports
    # into the container the caller chose.
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "container", copy)
    assert volback.Container(str(copy)).import_record(text)["container"] == f"file://{copy}"
    assert [m["backup_id"] for m in c.list()] == ["b1", "b2"]
    assert c.verify(read_data=True)["damaged_backups"] == []
    c.delete("b1")
    gc = c.gc(clock_skew=0)
    assert gc["backups"] == 1
    out = tmp_path / "out.img"
    c.restore("b2", out, is_new=True)
    assert out.read_bytes() == image.read_bytes()


def test_native_work_releases_the_gil(tmp_path: Path) -> None:
    """A Python thread keeps running while a backup works (as a service's heartbeat must)."""
    c = open_container(tmp_path)
    vol = tmp_path / "big.img"
    make_image(vol, 4, mib=96)
    ticks = 0
    stop = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    started = time.monotonic()
    c.backup(vol, volume_id="v", backup_id="b")
    elapsed = time.monotonic() - started
    stop.set()
    t.join()
    # At 1 ms a tick, a thread that kept the GIL would have left the ticker a handful of ticks.
    assert ticks > 0.3 * elapsed * 1000 * 0.5, (ticks, elapsed)


def test_s3_settings_never_show_the_secret() -> None:
    s = volback.S3Settings(access_key_id="AKIA", secret_access_key="very-secret")
    assert "very-secret" not in repr(s)


def test_a_descriptor_is_read_from_its_start(tmp_path: Path, image: Path) -> None:
    c = open_container(tmp_path)
    fd = os.open(image, os.O_RDONLY)
    try:
        os.lseek(fd, 12345, os.SEEK_SET)
        r = c.backup(fd, volume_id="v", backup_id="b")
    finally:
        os.close(fd)
    assert r["size"] == image.stat().st_size


def test_a_cancel_token_stops_a_restore_from_another_thread(tmp_path: Path) -> None:
    c = open_container(tmp_path)
    vol = tmp_path / "big.img"
    make_image(vol, 5, mib=64)
    c.backup(vol, volume_id="v", backup_id="b")
    token = volback.CancelToken()
    token.cancel()
    assert token.cancelled
    out = tmp_path / "out.img"
    with pytest.raises(volback.Cancelled):
        c.restore("b", out, is_new=True, cancel=token)
    assert not out.exists()
    with pytest.raises(volback.Cancelled):
        c.backup(vol, volume_id="v", backup_id="c", cancel=token)
    assert [m["backup_id"] for m in c.list()] == ["b"]


def test_labels_and_prune(tmp_path: Path) -> None:
    c = open_container(tmp_path)
    vol = tmp_path / "v.img"
    for i in range(3):
        make_image(vol, 10 + i, mib=2)
        c.backup(vol, volume_id="v", backup_id=f"b{i}", labels={"vm": "web", "policy": "daily"})
    assert [b["labels"] for b in c.list()][0] == {"policy": "daily", "vm": "web"}
    with pytest.raises(volback.ConfigError):
        c.backup(vol, volume_id="v", backup_id="bad", labels={"no spaces": "x"})
    dry = c.prune(keep_last=1, dry_run=True)
    assert sorted(dry["removed"]) == ["b0", "b1"]
    assert len(c.list()) == 3
    r = c.prune(keep_last=1, labels={"vm": "web"})
    assert r["kept"] == 1 and r["gc"]["bytes_deleted"] > 0
    assert [b["backup_id"] for b in c.list()] == ["b2"]
    with pytest.raises(volback.ConfigError):
        c.prune()


def test_copies_into_a_second_container(tmp_path: Path) -> None:
    src = open_container(tmp_path)
    vol = tmp_path / "v.img"
    for i in range(2):
        make_image(vol, 20 + i, mib=2)
        src.backup(vol, volume_id="v", backup_id=f"b{i}", labels={"vm": "web"})
    dst = volback.Container(str(tmp_path / "second"), create=True, key=b"copy destination key")
    r = src.copy_to(dst, labels={"vm": "web"})
    assert [c["backup_id"] for c in r["copied"]] == ["b0", "b1"] and r["bytes_written"] > 0
    assert [b["labels"] for b in dst.list()] == [{"vm": "web"}, {"vm": "web"}]
    again = src.copy_to(dst)
    assert again["copied"] == [] and again["skipped"] == ["b0", "b1"]
    out = tmp_path / "out.img"
    dst.restore("b1", out, is_new=True)
    assert out.read_bytes() == vol.read_bytes()
    with pytest.raises(volback.BackupNotFound):
        src.copy_to(dst, backup_ids=["nope"])


def test_job_events_as_a_scheduler_consumes_them(tmp_path: Path) -> None:
    c = open_container(tmp_path)
    vol = tmp_path / "v.img"
    make_image(vol, 30, mib=24)
    events: list[dict[str, Any]] = []
    seen: list[int] = []
    r = c.backup(
        vol, volume_id="v", backup_id="b1", events=events.append, progress=lambda d, t: seen.append(d)
    )
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and "progress" in kinds, kinds
    assert all(e["op"] == "backup" for e in events)
    last = [e for e in events if e["event"] == "progress"][-1]
    assert last["bytes_done"] == last["bytes_total"] == vol.stat().st_size and last["percent"] == 100.0
    assert events[-1]["report"] == r and seen, "the caller's own progress is still called"
    events.clear()
    c.restore("b1", tmp_path / "out.img", is_new=True, events=events.append)
    assert [e["event"] for e in events][:: len(events) - 1] == ["started", "finished"]
    events.clear()
    with pytest.raises(volback.BackupNotFound):
        c.restore("nope", tmp_path / "out2.img", is_new=True, events=events.append)
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "backup_not_found", events
    calls: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("gc", lambda: c.gc(events=events.append)),
        ("verify", lambda: c.verify(events=events.append)),
    ]
    for op, call in calls:
        events.clear()
        call()
        assert [(e["event"], e["op"]) for e in events] == [("started", op), ("finished", op)]


def test_an_encrypted_container_round_trips_and_manages_its_keys(tmp_path: Path, image: Path) -> None:
    url = str(tmp_path / "enc")
    c = volback.Container(url, create=True, key=b"first secret")
    assert c.encrypted
    c.backup(image, volume_id="vol-1", backup_id="b1")
    stored = b"".join(p.read_bytes() for p in Path(url).rglob("*") if p.is_file())
    assert b"volume block backup chunk" not in stored
    assert b"vol-1" not in stored

    # A key from a file, added, opens the container; the first key is then removed.
    key_file = tmp_path / "key"
    key_file.write_text("second secret\n")
    new_id = c.add_key(f"file:{key_file}")
    first_id = next(k["id"] for k in c.key_slots() if k["current"])
    c2 = volback.Container(url, key=f"file:{key_file}")
    out = tmp_path / "out.img"
    c2.restore("b1", out, is_new=True)
    assert out.read_bytes() == image.read_bytes()
    c2.remove_key(first_id)
    with pytest.raises(volback.EncryptionKeyError) as wrong:
        volback.Container(url, key=b"first secret")
    assert wrong.value.kind == "wrong_key"
    with pytest.raises(volback.EncryptionKeyError) as last:
        c2.remove_key(new_id)
    assert last.value.kind == "key"

    # Without a key: only verification.
    locked = volback.Container(url)
    assert locked.encrypted
    for needs_key in (locked.list, locked.config):
        with pytest.raises(volback.EncryptionKeyError) as required:
            needs_key()
        assert required.value.kind == "key_required"
    assert c2.config()["chunker"]["avg"] == 32768
    report = locked.verify(read_data=True)
    assert report["without_key"] and report["backups_checked"] == 1
    assert not report["damaged_backups"] and not report["damaged_objects"]
    # A key for a plaintext container is refused: its data is not encrypted.
    volback.Container(str(tmp_path / "plain"), create=True)
    with pytest.raises(volback.EncryptionKeyError):
        volback.Container(str(tmp_path / "plain"), key=b"x")


def test_partial_reads_return_exactly_the_range(tmp_path: Path, image: Path) -> None:
    c = volback.Container(str(tmp_path / "c"), create=True)
    c.backup(str(image), backup_id="b1", volume_id="v")
    whole = image.read_bytes()
    for offset, length in ((0, 512), (12345, 1_000_000), (len(whole) - 7, 7), (5, 0)):
        assert c.read("b1", offset, length) == whole[offset : offset + length]
    with pytest.raises(volback.ConfigError):
        c.read("b1", len(whole) - 1, 2)
    with pytest.raises(volback.BackupNotFound):
        c.read("nope", 0, 1)


def test_a_backup_served_over_nbd_reads_back_through_qemu(tmp_path: Path, image: Path) -> None:
    c = volback.Container(str(tmp_path / "c"), create=True)
    c.backup(str(image), backup_id="b1", volume_id="v")
    sock = tmp_path / "b1.sock"
    with c.serve_nbd("b1", socket=sock, cache_mib=16) as server:
        assert server.uri == f"nbd+unix:///?socket={sock}"
        assert server.size == image.stat().st_size
        out = tmp_path / "copy.img"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", server.uri, str(out)], check=True)
        assert out.read_bytes() == image.read_bytes()
        stats = server.stats()
        assert stats["reads"] > 0 and stats["failed"] == 0
    # Stopped: the socket is gone and nothing answers.
    assert not sock.exists()
    assert (
        subprocess.run(["qemu-img", "info", f"nbd+unix:///?socket={sock}"], capture_output=True).returncode
        != 0
    )
    # TCP on a free port.
    with c.serve_nbd("b1", tcp="127.0.0.1:0") as server:
        assert server.uri.startswith("nbd://127.0.0.1:")
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", server.uri], check=True, capture_output=True, text=True
        )
        assert json.loads(info.stdout)["virtual-size"] == image.stat().st_size
    with pytest.raises(volback.BackupNotFound):
        c.serve_nbd("nope", socket=tmp_path / "x.sock")
    with pytest.raises(volback.ConfigError):
        c.serve_nbd("b1", socket=tmp_path / "y.sock", tcp="127.0.0.1:0")


def test_differential_restore_rewrites_only_what_differs(tmp_path: Path, image: Path) -> None:
    c = volback.Container(str(tmp_path / "c"), create=True)
    c.backup(str(image), backup_id="b1", volume_id="v")
    target = tmp_path / "target.img"
    shutil.copy(image, target)
    with open(target, "r+b") as f:
        f.seek(4096 * 10)
        f.write(pseudo_random(4096, 3))
    r = c.restore_differential("b1", target)
    assert target.read_bytes() == image.read_bytes()
    assert 0 < r["bytes_written"] <= 8192
    assert r["chunks_rewritten"] == 1
