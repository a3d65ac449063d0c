#!/usr/bin/env python3
"""Restoring a backup written by Cinder's own driver: Cinder's restore against volback's, side by
side in one run, and what adopting the chain stores.

Cinder 29's posix driver (from the test venv, driven on Cinder's own test base: an in-memory
database) backs up the benchmark's ext4 image (day 1, zlib, Cinder's default compression) and
then day 2 as an incremental. Then, alternating, for ``--rounds`` rounds:

- Cinder's driver restores day 1 into a new file (what `cinder backup-restore` runs);
- `volback cinder restore` restores the same backup into a new file.

Both outputs are compared with the image. Then `volback cinder adopt` adopts the chain into a
new volback container, and `volback backup` backs the two images up into another: their stored
bytes are printed side by side.

Objects are ``--object-mib`` MiB (default 50: the S3 and Swift drivers' default object size;
the posix driver's default is 1907 MiB).

Both restores write into the work directory, or into ``--target-dir`` (``/dev/shm`` takes the
disk out of the comparison: what is left is each restore's own work).

Usage: python3 benches/cinder_restore.py [--images DIR] [--rounds N] [--object-mib N] [--target-dir DIR]
Needs the test venv (bash scripts/python-env.sh) and a release build of the CLI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, "target", "venv", "bin", "python")

# Runs inside the venv, as a unittest test case on Cinder's test base (it provides the
# database the driver needs). Writes its timings as JSON to $BENCH_OUT.
CINDER_SIDE = r'''
import cinder.tests.unit  # noqa: F401  (eventlet's monkey patching first)
import io, json, os, sys, time, unittest
from cinder.backup.drivers import posix
from cinder.objects import fields
from cinder.tests.unit.backup import test_backup

ARGS = json.loads(os.environ["BENCH_ARGS"])


class Bench(test_backup.BaseBackupTest):
    def test_bench(self):
        self.override_config("backup_posix_path", ARGS["posix"])
        self.override_config("backup_file_size", ARGS["object_bytes"])
        self.override_config("backup_compression_algorithm", "zlib")
        self.override_config("backup_enable_progress_timer", False)
        driver = posix.PosixBackupDriver(self.ctxt)
        vol = self._create_volume_db_entry(size=2)
        out = {"backups": [], "cinder_restore_s": []}
        parent = None
        for image in ARGS["images"]:
            b = self._create_backup_db_entry(volume_id=vol, container=None, size=2,
                                             parent_id=parent.id if parent else None)
            t = time.monotonic()
            with open(image, "rb") as f:
                driver.backup(b, f)
            b.refresh()
            b.status = fields.BackupStatus.AVAILABLE
            b.save()
            out["backups"].append({"id": b.id, "backup_s": time.monotonic() - t})
            parent = b
        from cinder import objects
        full = objects.Backup.get_by_id(self.ctxt, out["backups"][0]["id"])
        for r in range(ARGS["rounds"]):
            # volback's turn first (the caller runs it when told), then Cinder's.
            sys.stdout.write("VOLBACK %d\n" % r); sys.stdout.flush()
            sys.stdin.readline()
            target = ARGS["target"]
            full.status = fields.BackupStatus.RESTORING
            full.save()
            t = time.monotonic()
            with open(target, "wb") as f:
                driver.restore(full, vol, f, True)
                f.truncate(os.path.getsize(ARGS["images"][0]))
            out["cinder_restore_s"].append(time.monotonic() - t)
            full.status = fields.BackupStatus.AVAILABLE
            full.save()
            sys.stdout.write("CINDER %d\n" % r); sys.stdout.flush()
            sys.stdin.readline()
        with open(os.environ["BENCH_OUT"], "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    unittest.main(argv=["bench", "Bench.test_bench"])
'''


def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(8 << 20):
            h.update(b)
    return h.hexdigest()


def stored(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def volback(binary: str, *args: str) -> tuple[float, dict]:
    t = time.monotonic()
    p = subprocess.run([binary, *args, "--json"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"volback {' '.join(args)}: {p.stderr}")
    return time.monotonic() - t, json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="/tmp/volback-bench-images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--object-mib", type=int, default=50)
    ap.add_argument("--work", default=None)
    ap.add_argument("--target-dir", default=None, help="restore here (e.g. /dev/shm: no disk in the way)")
    ap.add_argument("--volback", default=os.path.join(ROOT, "target", "release", "volback"))
    a = ap.parse_args()
    images = [os.path.join(a.images, n) for n in ("day1.img", "day2.img")]
    if not all(os.path.exists(i) for i in images):
        sys.exit(f"no images in {a.images}: python3 benches/make_images.py {a.images}")
    if not os.path.exists(VENV_PY):
        sys.exit("no test venv: bash scripts/python-env.sh")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "volback-cli"], cwd=ROOT, check=True)
    work = a.work or tempfile.mkdtemp(prefix="volback-cinder-bench-")
    posix_root = os.path.join(work, "backup_posix_path")
    os.makedirs(posix_root, exist_ok=True)
    target = os.path.join(a.target_dir or work, "restored.img")
    args = {
        "posix": posix_root,
        "object_bytes": a.object_mib << 20,
        "images": images,
        "rounds": a.rounds,
        "target": target,
    }
    script = os.path.join(work, "cinder_side.py")
    with open(script, "w") as f:
        f.write(CINDER_SIDE)
    env = dict(os.environ, BENCH_ARGS=json.dumps(args), BENCH_OUT=os.path.join(work, "cinder.json"))
    want = sha(images[0])
    print(f"Cinder 29 posix driver, zlib, {a.object_mib} MiB objects: backing up day 1 and day 2 ...")
    cinder = subprocess.Popen(
        [VENV_PY, script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert cinder.stdin and cinder.stdout
    volback_s = []
    backups_listed = None
    for line in cinder.stdout:
        if line.startswith("VOLBACK"):
            if backups_listed is None:
                _, backups_listed = volback(a.volback, "cinder", "list", "--source", posix_root)
            full = next(b for b in backups_listed if b["parent_id"] is None)
            if os.path.exists(target):
                os.unlink(target)
            subprocess.run(["sync"])
            s, _ = volback(
                a.volback, "cinder", "restore", "--source", posix_root, "--backup-id", full["backup_id"], "--target", target
            )
            volback_s.append(s)
            if sha(target) != want:
                sys.exit("volback's restore differs from the image")
            os.unlink(target)
            subprocess.run(["sync"])
        elif line.startswith("CINDER"):
            if sha(target) != want:
                sys.exit("Cinder's restore differs from the image")
            os.unlink(target)
            subprocess.run(["sync"])
        else:
            continue
        cinder.stdin.write("\n")
        cinder.stdin.flush()
    if cinder.wait() != 0:
        sys.exit("the Cinder side failed")
    with open(os.path.join(work, "cinder.json")) as f:
        c = json.load(f)
    cm, vm = statistics.median(c["cinder_restore_s"]), statistics.median(volback_s)
    print(f"Cinder backups: full {c['backups'][0]['backup_s']:.2f} s, incremental {c['backups'][1]['backup_s']:.2f} s")
    print(f"restore of the full, median of {a.rounds}:")
    print(f"  Cinder's driver   {cm:6.2f} s   {' '.join(f'{x:.2f}' for x in c['cinder_restore_s'])}")
    print(f"  volback           {vm:6.2f} s   {' '.join(f'{x:.2f}' for x in volback_s)}")
    print(f"  ratio             {cm / vm:6.2f}x")

    adopted = os.path.join(work, "adopted")
    s, r = volback(a.volback, "cinder", "adopt", "--source", posix_root, "--container", adopted, "--all")
    own = os.path.join(work, "own")
    volback(a.volback, "backup", "--container", own, "--volume", images[0], "--backup-id", "d1", "--volume-id", "v")
    volback(
        a.volback, "backup", "--container", own, "--volume", images[1], "--backup-id", "d2", "--volume-id", "v",
        "--parent", "d1",
    )
    print(f"adopt of the chain: {s:.2f} s")
    print(f"stored: Cinder {stored(posix_root) / 2**20:.1f} MiB, adopted {stored(adopted) / 2**20:.1f} MiB, "
          f"volback's own backups {stored(own) / 2**20:.1f} MiB")
    if not a.work:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
