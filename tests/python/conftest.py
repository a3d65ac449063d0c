"""Shared fixtures for the Python package's tests: deterministic volume images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def pseudo_random(n: int, seed: int) -> bytes:
    """``n`` deterministic bytes (SHA-256 in counter mode)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d-%d" % (seed, counter)).digest()
        counter += 1
    return bytes(out[:n])


def make_image(path: Path, seed: int, mib: int = 8) -> bytes:
    """An image of random data, text-like data and zero runs; returns its bytes."""
    parts = []
    for k in range(mib):
        if k % 3 == 0:
            parts.append(pseudo_random(1 << 20, seed * 100 + k))
        elif k % 3 == 1:
            parts.append((b"volume block backup chunk " * 40330)[: 1 << 20])
        else:
            parts.append(bytes(1 << 20))
    data = b"".join(parts)
    path.write_bytes(data)
    return data


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "vol.img"
    make_image(p, 1)
    return p
