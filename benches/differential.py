#!/usr/bin/env python3
"""Differential restore against a full restore, side by side in one run.

The benchmark's ext4 image (day 1) is backed up into a fresh filesystem container. Each round
copies the image to a target and damages 1 % of it in scattered 4 KiB blocks (seeded), then
times, alternating:

- `restore --existing --differential` onto the damaged copy;
- `restore --existing` onto another damaged copy (every byte rewritten);
- `restore` into a new file.

Every target is compared with the image afterwards. Prints medians, and the bytes the
differential restore wrote and zeroed. With --cold (root only), the page cache is dropped
before each restore, so the target and the container are read from the disk.

Usage: python3 benches/differential.py [--images DIR] [--rounds N] [--damage PERCENT] [--cold]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def volback(binary: str, *args: str) -> tuple[float, dict]:
    t = time.monotonic()
    p = subprocess.run([binary, *args, "--json"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"volback {' '.join(args)}: {p.stderr}")
    return time.monotonic() - t, json.loads(p.stdout)


def damaged_copy(image: str, target: str, percent: float, seed: int) -> None:
    shutil.copyfile(image, target)
    size = os.path.getsize(image)
    rng = random.Random(seed)
    blocks = int(size * percent / 100 / 4096)
    with open(target, "r+b") as f:
        for _ in range(blocks):
            f.seek(rng.randrange(size // 4096) * 4096)
            f.write(rng.randbytes(4096))
    subprocess.run(["sync"], check=True)


def drop_caches(cold: bool) -> None:
    subprocess.run(["sync"], check=True)
    if cold:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="/tmp/volback-bench-images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--damage", type=float, default=1.0)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--volback", default=os.path.join(ROOT, "target", "release", "volback"))
    a = ap.parse_args()
    image = os.path.join(a.images, "day1.img")
    if not os.path.exists(image):
        sys.exit(f"no image in {a.images}: python3 benches/make_images.py {a.images}")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "volback-cli"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="volback-differential-")
    c = os.path.join(work, "c")
    volback(a.volback, "backup", "--container", c, "--volume", image, "--backup-id", "b1", "--volume-id", "v")
    target = os.path.join(work, "target.img")
    times: dict[str, list[float]] = {"differential": [], "existing": [], "new": []}
    last: dict = {}
    for r in range(a.rounds):
        damaged_copy(image, target, a.damage, r)
        drop_caches(a.cold)
        s, last = volback(a.volback, "restore", "--container", c, "--backup-id", "b1", "--target", target,
                          "--existing", "--differential")
        times["differential"].append(s)
        assert filecmp.cmp(image, target, shallow=False), "differential restore differs"
        damaged_copy(image, target, a.damage, r)
        drop_caches(a.cold)
        s, _ = volback(a.volback, "restore", "--container", c, "--backup-id", "b1", "--target", target, "--existing")
        times["existing"].append(s)
        assert filecmp.cmp(image, target, shallow=False), "restore --existing differs"
        os.unlink(target)
        drop_caches(a.cold)
        s, _ = volback(a.volback, "restore", "--container", c, "--backup-id", "b1", "--target", target)
        times["new"].append(s)
        assert filecmp.cmp(image, target, shallow=False), "restore differs"
        os.unlink(target)
    size = os.path.getsize(image)
    print(f"{os.path.basename(image)}, {size / 2**20:.0f} MiB, {a.damage} % damaged in 4 KiB blocks, "
          f"{'cold' if a.cold else 'warm'} page cache, median of {a.rounds}:")
    for k, v in times.items():
        print(f"  restore {k:13s} {statistics.median(v):6.2f} s   {' '.join(f'{x:.2f}' for x in v)}")
    print(f"  differential wrote {last['bytes_written']} bytes ({100 * last['bytes_written'] / size:.2f} %), "
          f"zeroed {last['bytes_zeroed']}, rewrote {last['chunks_rewritten']} chunks, "
          f"compared {last['bytes_compared']} bytes")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
