"""Job events: what a long operation reports to a service that streams or polls job state.

The same JSON objects the command line writes with ``--events``, given to a callback::

    {"event": "started", "op": "backup", "unix": 1764900000}
    {"event": "progress", "op": "backup", "bytes_done": …, "bytes_total": …, "percent": …,
     "bytes_per_sec": …, "eta_s": …}
    {"event": "finished", "op": "backup", "elapsed_s": …, "report": {…the method's report…}}
    {"event": "error", "op": "backup", "elapsed_s": …, "kind": "…", "message": "…"}

Progress comes at most once a second (and at the end); ``bytes_total``, ``percent`` and
``eta_s`` are ``None`` when the size is not known. Operations without byte progress (``copy_to``,
``verify``, ``gc``, ``prune``) give ``started`` and ``finished`` or ``error``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from volback.errors import VolbackError

#: ``events(event)``: called with each event, on the thread running the operation.
EventCallback = Callable[[dict[str, Any]], None]
_Progress = Callable[[int, int], Optional[bool]]


class _Job:
    def __init__(self, op: str, events: EventCallback) -> None:
        self.op = op
        self.events = events
        self.started = time.monotonic()
        self.last: float | None = None

    def emit(self, event: dict[str, Any]) -> None:
        event["op"] = self.op
        self.events(event)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        complete = total > 0 and done >= total
        if not complete and self.last is not None and now - self.last < 1.0:
            return
        self.last = now
        secs = now - self.started
        rate = done / secs if secs > 0 else 0.0
        known = total if total > 0 else None
        self.emit(
            {
                "event": "progress",
                "bytes_done": done,
                "bytes_total": known,
                "percent": None if known is None else round(min(done, known) * 100 / known, 1),
                "bytes_per_sec": round(rate),
                "eta_s": None if known is None or rate <= 0 else round(max(known - done, 0) / rate, 1),
            }
        )


def run_job(
    op: str,
    events: EventCallback | None,
    progress: _Progress | None,
    work: Callable[[_Progress | None], dict[str, Any]],
) -> dict[str, Any]:
    """Runs ``work(progress)``, reporting it to ``events`` (if given) as job ``op``; the caller's
    own ``progress`` callback is still called, and its ``False`` still stops the operation."""
    if events is None:
        return work(progress)
    job = _Job(op, events)
    job.emit({"event": "started", "unix": int(time.time())})

    def both(done: int, total: int) -> bool | None:
        job.progress(done, total)
        return None if progress is None else progress(done, total)

    try:
        report = work(both)
    except VolbackError as e:
        job.emit({"event": "error", "elapsed_s": job.elapsed(), "kind": e.kind, "message": e.message})
        raise
    job.emit({"event": "finished", "elapsed_s": job.elapsed(), "report": report})
    return report
