"""Incrementals given a change map through the Python package: only what the map names is
read, the backup restores byte for byte, and bad or wrong maps are typed errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import volback
from conftest import make_image, pseudo_random


def test_a_change_map_reads_only_what_changed(tmp_path: Path) -> None:
    c = volback.Container(str(tmp_path / "container"), create=True)
    vol = tmp_path / "vol.img"
    data = bytearray(make_image(vol, 3, mib=16))
    c.backup(vol, volume_id="v", backup_id="full")
    data[5 << 20 : (5 << 20) + 70_000] = pseudo_random(70_000, 4)
    vol.write_bytes(data)
    changes = volback.ChangeMap.extents([(5 << 20, 70_000)])
    r = c.backup(vol, volume_id="v", backup_id="incr", parent_id="full", changes=changes)
    assert r["bytes_read"] < 1 << 20
    m = c.manifest("incr")
    assert m["read"] == "change-map"
    assert m["change_map"]["changed_bytes"] == 70_000
    out = tmp_path / "out.img"
    c.restore("incr", out, is_new=True)
    assert out.read_bytes() == bytes(data)


def test_bad_and_wrong_maps_are_change_map_errors(tmp_path: Path) -> None:
    c = volback.Container(str(tmp_path / "container"), create=True)
    vol = tmp_path / "vol.img"
    data = bytearray(make_image(vol, 5, mib=4))
    c.backup(vol, volume_id="v", backup_id="full")
    with pytest.raises(volback.ChangeMapError) as e:
        c.backup(
            vol,
            volume_id="v",
            parent_id="full",
            changes=volback.ChangeMap.text("4096,10\n0,10\n", name="day.csv"),
        )
    assert e.value.kind == "change_map" and "day.csv" in str(e.value)
    # A change the map does not name, caught by reading back every chunk it left unread.
    data[100] ^= 0xFF
    vol.write_bytes(data)
    with pytest.raises(volback.ChangeMapError) as e:
        c.backup(
            vol,
            volume_id="v",
            parent_id="full",
            changes=volback.ChangeMap.extents([(3 << 20, 4096)]),
            map_sample=1.0,
        )
    assert e.value.kind == "change_map_missed"
    with pytest.raises(ValueError):
        volback.ChangeMap.file(tmp_path / "m", format="qcow2")
