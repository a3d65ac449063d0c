"""Change maps: what changed in a volume since the snapshot its parent backup was made from.

An incremental given one reads only the changed ranges (and a few chunks around each); the rest
reuses the parent's chunks without being read. See ``docs/change-maps.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

FORMATS = ("auto", "extents", "rbd-diff", "thin-delta")


@dataclass(frozen=True)
class ChangeMap:
    """A change map's source, handed to :meth:`volback.Container.backup` as ``changes=``.
    Build one with :meth:`file`, :meth:`text`, :meth:`extents` or :meth:`nbd_dirty_bitmap`;
    it is read and checked when the backup starts, before anything is written."""

    spec: dict[str, str]

    @classmethod
    def file(cls, path: str | os.PathLike[str], format: str = "auto") -> ChangeMap:
        """A map file: a list of extents (JSON or CSV), ``rbd diff --format json`` output or
        ``thin_delta`` XML (``format``: one of :data:`FORMATS`; ``auto`` tells them apart)."""
        _check_format(format)
        return cls({"file": os.fspath(path), "format": format})

    @classmethod
    def text(cls, text: str, format: str = "auto", name: str = "<text>") -> ChangeMap:
        """A map's text, as :meth:`file` would read it; ``name`` is used in errors."""
        _check_format(format)
        return cls({"text": text, "name": name, "format": format})

    @classmethod
    def extents(cls, changed: Iterable[tuple[int, int]], zeroed: Iterable[tuple[int, int]] = ()) -> ChangeMap:
        """Changed ``(offset, length)`` ranges, and ranges that now read as zeros (those are not
        read). Ranges must not overlap."""
        rows = [(o, n, False) for o, n in changed] + [(o, n, True) for o, n in zeroed]
        rows.sort()
        text = "".join(f"{o},{n},{'true' if z else 'false'}\n" for o, n, z in rows)
        return cls({"text": text, "name": "<extents>", "format": "extents"})

    @classmethod
    def nbd_dirty_bitmap(cls, uri: str, bitmap: str) -> ChangeMap:
        """A QEMU dirty bitmap read over NBD: ``uri`` is ``nbd+unix:///EXPORT?socket=PATH``
        or ``nbd://HOST:PORT/EXPORT`` (``qemu-nbd -B BITMAP``)."""
        return cls({"nbd": uri, "bitmap": bitmap})


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"change map format {format!r}: one of {', '.join(FORMATS)}")
