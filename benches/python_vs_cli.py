#!/usr/bin/env python3
"""The Python package and the Cinder driver against the CLI on the same image, in one run: does
the binding cost time or memory?

Backs up an image into a fresh filesystem container and restores it, alternating for a few
rounds:
- `cli`: the `volback` binary;
- `python`: the `volback` package's `Container` (the volume an open file, the target a file
  opened 'wb', handed over by descriptor);
- `driver`: `volback.cinder.VolbackBackupDriver.backup()` / `.restore()` with the device opened
  as Cinder's backup manager opens it (`open(path, 'rb')` / `open(path, 'wb')`);
- `driver-stream`: the same with the device as a file object without `fileno()` (read, write,
  seek and tell only, as os-brick's RBD wrapper is): read and written in blocks through Python.
Each run is a process of its own, timed with wall clock and peak RSS (`getrusage` of the
child). Prints the medians and the ratio to the CLI.

Usage: python3 benches/python_vs_cli.py [--image PATH] [--rounds N] [--python VENV_PYTHON]
Needs a release build (`cargo build --release`) and the package built with
`maturin build --release` installed in the venv whose python is given (`scripts/python-env.sh`
makes one with Cinder 29 in it; the driver runs are skipped without Cinder).
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each Python run times its volback call itself and prints "CALL <seconds> <RSS KiB before>":
# the interpreter's start and imports (Cinder's take ~1.5 s and ~100 MiB) are not volback's, and
# a service pays them once.
CALL = """
import time
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
def timed_call(fn):
    before, t = rss_kib(), time.monotonic()
    fn()
    print("CALL", time.monotonic() - t, before)
"""
PY_BACKUP = CALL + """
import sys, volback
c = volback.Container(sys.argv[1], create=True)
with open(sys.argv[2], "rb") as f:
    timed_call(lambda: c.backup(f, volume_id="v", backup_id="b"))
"""
PY_RESTORE = CALL + """
import sys, volback
c = volback.Container(sys.argv[1])
with open(sys.argv[2], "wb") as f:
    timed_call(lambda: c.restore("b", f.fileno(), is_new=True))
"""

# The Cinder driver outside a service: a backup object with the fields the driver reads, the
# volume metadata and notifications stubbed (no database, no message bus); everything else is
# the driver's own code.
PY_DRIVER = CALL + """
import os, sys
from unittest import mock
from oslo_config import cfg
import volback.cinder as vc

cfg.CONF([], project="cinder", default_config_files=[])
cfg.CONF.set_override("backup_volback_container", sys.argv[2])
cfg.CONF.set_override("backup_timer_interval", 1)
cfg.CONF.set_override("connection", "sqlite://", group="database")  # untouched, but opened


class Backup:
    id = "b"
    volume_id = "v"
    parent_id = None
    data_timestamp = None
    size = (os.path.getsize(sys.argv[3]) + (1 << 30) - 1) >> 30 if sys.argv[1] == "backup" else 0
    status = "creating" if sys.argv[1] == "backup" else "restoring"

    def as_read_deleted(self):
        return mock.MagicMock()

    def refresh(self):
        pass


class Device:
    \"\"\"A device without fileno(), as os-brick's RBD wrapper is.\"\"\"

    def __init__(self, f):
        self.f = f

    def read(self, n):
        return self.f.read(n)

    def write(self, b):
        return self.f.write(b)

    def seek(self, off, whence=0):
        return self.f.seek(off, whence)

    def tell(self):
        return self.f.tell()

    def seekable(self):
        return True


stream = sys.argv[4] == "stream"
with mock.patch.object(vc.VolbackBackupDriver, "get_metadata", return_value="{}"), \\
        mock.patch.object(vc.VolbackBackupDriver, "put_metadata"), \\
        mock.patch.object(vc.volume_utils, "notify_about_backup_usage"):
    d = vc.VolbackBackupDriver(mock.MagicMock())
    if sys.argv[1] == "backup":
        with open(sys.argv[3], "rb") as f:
            timed_call(lambda: d.backup(Backup(), Device(f) if stream else f))
    else:
        with open(sys.argv[3], "wb") as f:
            timed_call(lambda: d.restore(Backup(), "v", Device(f) if stream else f, True))
"""


def timed(cmd):
    """(seconds of the volback call, peak RSS MiB, CPU s, RSS MiB before the call) of `cmd`;
    for a process that does not time its call (the CLI), the whole process and 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rss_before = 0.0
    for line in out.splitlines():
        if line.startswith("CALL "):
            wall, rss_before = float(line.split()[1]), int(line.split()[2]) / 1024
    # ru_maxrss of children is the largest of any child so far: run the tools in separate
    # measuring processes to keep it per run.
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, after.ru_maxrss / 1024, cpu, rss_before


def measure(cmd):
    """Runs `cmd` under a fresh Python that reports what `timed` measures."""
    code = "import sys,json;sys.path.insert(0,%r);import python_vs_cli as m;print(json.dumps(m.timed(%r)))" % (
        os.path.dirname(os.path.abspath(__file__)), cmd)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    import json
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="/tmp/volback-bench-images/day1.img")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--python", default=os.path.join(ROOT, "target", "venv", "bin", "python"))
    a = ap.parse_args()
    cli = os.path.join(ROOT, "target", "release", "volback")
    work = tempfile.mkdtemp(prefix="volback-py-")
    results = {}
    tools = ["cli", "python"]
    if subprocess.run([a.python, "-c", "import volback.cinder"], capture_output=True).returncode == 0:
        tools += ["driver", "driver-stream"]
    else:
        print("no Cinder in %s: driver runs skipped" % a.python, file=sys.stderr)
    try:
        for _ in range(a.rounds):
            for tool in tools:
                c = os.path.join(work, "c-" + tool)
                out = os.path.join(work, "out-" + tool + ".img")
                shutil.rmtree(c, ignore_errors=True)
                if os.path.exists(out):
                    os.remove(out)
                if tool == "cli":
                    b = [cli, "backup", "--container", c, "--volume", a.image, "--backup-id", "b", "--json"]
                    r = [cli, "restore", "--container", c, "--backup-id", "b", "--target", out, "--json"]
                elif tool == "python":
                    b = [a.python, "-c", PY_BACKUP, c, a.image]
                    open(out, "wb").close()
                    r = [a.python, "-c", PY_RESTORE, c, out]
                else:
                    how = "stream" if tool == "driver-stream" else "fd"
                    b = [a.python, "-c", PY_DRIVER, "backup", c, a.image, how]
                    r = [a.python, "-c", PY_DRIVER, "restore", c, out, how]
                results.setdefault((tool, "backup"), []).append(measure(b))
                results.setdefault((tool, "restore"), []).append(measure(r))
                if subprocess.run(["cmp", "-s", a.image, out]).returncode != 0:
                    sys.exit("%s restored different bytes" % tool)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| operation | tool | wall s (median, range) | process CPU s | peak RSS MiB | of it, before the call | vs CLI |")
    print("|---|---|---|---|---|---|---|")
    for op in ("backup", "restore"):
        base = statistics.median(x[0] for x in results[("cli", op)])
        for tool in tools:
            xs = results[(tool, op)]
            wall = statistics.median(x[0] for x in xs)
            print("| %s | %s | %.2f (%.2f–%.2f) | %.2f | %.0f | %.0f | %s |" % (
                op, tool, wall, min(x[0] for x in xs), max(x[0] for x in xs),
                statistics.median(x[2] for x in xs), statistics.median(x[1] for x in xs),
                statistics.median(x[3] for x in xs),
                "" if tool == "cli" else "%.2fx" % (wall / base)))


if __name__ == "__main__":
    main()
