"""A backup served over NBD: instant recovery for VMs and copy tools."""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

from volback import _volback
from volback.errors import from_native


class NbdServer:
    """A read-only NBD export of one backup, served on a background thread until
    :meth:`stop` (or the end of a ``with`` block). Chunks are fetched on demand, checked
    against their BLAKE3 ids and cached; zero extents are reported through block status.
    Point QEMU at :attr:`uri` (``qemu-img convert``, a qcow2 overlay's backing file)."""

    def __init__(self, native: _volback.NativeNbdServer) -> None:
        self._native = native

    @property
    def uri(self) -> str:
        """``nbd+unix:///?socket=PATH`` or ``nbd://HOST:PORT/``."""
        return self._native.uri

    @property
    def size(self) -> int:
        """The volume's size in bytes."""
        return self._native.size

    def stats(self) -> dict[str, Any]:
        """Requests served, bytes read, chunks fetched, cache hits, failed requests."""
        return dict(json.loads(self._native.stats()))

    def stop(self) -> None:
        """Stops accepting clients, disconnects the connected ones and waits for the server."""
        try:
            self._native.stop()
        except _volback.VolbackError as e:
            raise from_native(e) from None

    def __enter__(self) -> NbdServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NbdServer({self.uri!r}, size={self.size})"
