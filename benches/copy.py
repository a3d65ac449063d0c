#!/usr/bin/env python3
"""What `volback copy` writes: a container of ten daily backups of the benchmark's ext4 image
(day 1, day 2, then eight more days of 16 MiB of scattered writes each, every one an
incremental of the day before) copied into a second, empty container, then copied again.

Prints the source's and the destination's stored bytes (every object, as `du -b` counts them),
the bytes each copy wrote and read, and the wall time of each.

Usage: python3 benches/copy.py [--images DIR] [--work DIR]
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stored(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def volback(binary, *args):
    t = time.monotonic()
    p = subprocess.run([binary, *args, "--json"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"volback {' '.join(args)}: {p.stderr}")
    return time.monotonic() - t, json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="/tmp/volback-bench-images")
    ap.add_argument("--work", default=None)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "volback-cli"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "volback")
    day1, day2 = (os.path.join(a.images, f"day{d}.img") for d in (1, 2))
    if not os.path.exists(day1):
        subprocess.run([sys.executable, os.path.join(ROOT, "benches", "make_images.py"), a.images], check=True)
    work = tempfile.mkdtemp(prefix="volback-copy-", dir=a.work)
    src, dst, vol = (os.path.join(work, n) for n in ("src", "dst", "vol.img"))
    volback(binary, "backup", "--container", src, "--volume", day1, "--backup-id", "d01", "--volume-id", "v")
    volback(binary, "backup", "--container", src, "--volume", day2, "--backup-id", "d02",
            "--volume-id", "v", "--parent", "d01")
    shutil.copyfile(day2, vol)
    rng = random.Random(10)
    size = os.path.getsize(vol)
    for day in range(3, 11):
        with open(vol, "r+b") as f:
            for _ in range(8):
                f.seek(rng.randrange(0, size - (2 << 20)) & ~4095)
                f.write(rng.randbytes(2 << 20))
        volback(binary, "backup", "--container", src, "--volume", vol, "--backup-id", f"d{day:02}",
                "--volume-id", "v", "--parent", f"d{day - 1:02}", "--full-read")
    first_s, first = volback(binary, "copy", "--from", src, "--to", dst, "--all")
    second_s, second = volback(binary, "copy", "--from", src, "--to", dst, "--all")
    s, d = stored(src), stored(dst)
    print("| | bytes | vs source stored |")
    print("|---|---|---|")
    print(f"| source stored (10 backups) | {s:,} | 1.000 |")
    print(f"| destination stored after the copy | {d:,} | {d / s:.3f} |")
    print(f"| first copy: written ({len(first['copied'])} backups, {first_s:.1f} s) "
          f"| {first['bytes_written']:,} | {first['bytes_written'] / s:.3f} |")
    print(f"| first copy: volume bytes read | {first['bytes_read']:,} | |")
    print(f"| second copy: written ({len(second['copied'])} copied, {len(second['skipped'])} "
          f"skipped, {second_s:.2f} s) | {second['bytes_written']:,} | {second['bytes_written'] / s:.4f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
