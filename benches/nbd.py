#!/usr/bin/env python3
"""Instant recovery: a backup served over NBD (`volback serve`), read by QEMU's tools.

Two volumes: the benchmark's ext4 image (day 1, 1.8 GiB) and a 16 GiB volume holding four
copies of it, each with fresh random data in one 64 MiB stretch (so the 16 GiB backup has a
full-size extent list), backed up into a filesystem container and into an S3 container
(s3s-fs on 127.0.0.1). Measured, per container and volume:

- time to first byte: from starting `volback serve` to `qemu-io` having read the volume's
  first 4 KiB (process start, container open, handshake and read included);
- on day 1, alternating rounds: `qemu-img convert` of the whole export to a new file against
  `volback restore` of the same backup to a new file, and the server's peak RSS;
- the server's peak RSS while each volume is copied whole, with the default cache and with a
  quarter of it.

Every copy is compared with the image. Usage:
  python3 benches/nbd.py [--images DIR] [--rounds N] [--cache-mib N]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import start_s3  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "volback")


def make_big(day1: str, path: str) -> None:
    """16 GiB: day 1 at 0, 4, 8 and 12 GiB (holes between), 64 MiB of random data in each copy."""
    rng = random.Random(7)
    with open(path, "wb") as out:
        out.truncate(16 << 30)
        for k in range(4):
            with open(day1, "rb") as src:
                out.seek(k << 32)
                shutil.copyfileobj(src, out, 16 << 20)
            out.seek((k << 32) + (256 << 20) + k * (64 << 20))
            out.write(rng.randbytes(64 << 20))


def vb(env: dict, *args: str) -> dict:
    p = subprocess.run([BIN, *args, "--json"], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"volback {' '.join(args)}: {p.stderr}")
    return json.loads(p.stdout.splitlines()[-1])


class Server:
    def __init__(self, env: dict, container: str, backup: str, sock: str, cache_mib: int) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [BIN, "serve", "--container", container, "--backup-id", backup, "--socket", sock,
             "--cache-mib", str(cache_mib), "--json"],
            stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        self.uri = ready["uri"]

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        stats = json.loads(self.proc.stdout.readline())
        self.proc.wait()
        return stats


def first_byte(env: dict, container: str, backup: str, sock: str, cache_mib: int) -> float:
    s = Server(env, container, backup, sock, cache_mib)
    subprocess.run(["qemu-io", "-r", "-f", "raw", "-c", "read 0 4k", s.uri], check=True,
                   stdout=subprocess.DEVNULL)
    t = time.monotonic() - s.t0
    s.stop()
    return t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="/tmp/volback-bench-images")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache-mib", type=int, default=256)
    a = ap.parse_args()
    day1 = os.path.join(a.images, "day1.img")
    if not os.path.exists(day1):
        sys.exit(f"no image in {a.images}: python3 benches/make_images.py {a.images}")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "volback-cli"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="volback-nbd-")
    big = os.path.join(work, "big.img")
    make_big(day1, big)
    s3proc, s3 = start_s3(work)
    try:
        backends = {
            "filesystem": (dict(os.environ), os.path.join(work, "c")),
            "s3": ({**os.environ, **s3["env"]}, s3["url"]),
        }
        sock = os.path.join(work, "nbd.sock")
        rows = []
        for name, (env, c) in backends.items():
            vb(env, "backup", "--container", c, "--volume", day1, "--backup-id", "day1", "--volume-id", "v")
            vb(env, "backup", "--container", c, "--volume", big, "--backup-id", "big", "--volume-id", "big")
            for backup, size in (("day1", os.path.getsize(day1)), ("big", 16 << 30)):
                ttfb = [first_byte(env, c, backup, sock, a.cache_mib) for _ in range(a.rounds)]
                rows.append((name, backup, size, ttfb))
            convert, restore, rss = [], [], []
            for _ in range(a.rounds):
                out = os.path.join(work, "copy.img")
                s = Server(env, c, "day1", sock, a.cache_mib)
                t = time.monotonic()
                subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, out], check=True)
                convert.append(time.monotonic() - t)
                rss.append(s.peak_rss_mib())
                s.stop()
                assert filecmp.cmp(day1, out, shallow=False), "qemu-img convert copy differs"
                os.unlink(out)
                t = time.monotonic()
                vb(env, "restore", "--container", c, "--backup-id", "day1", "--target", out)
                restore.append(time.monotonic() - t)
                assert filecmp.cmp(day1, out, shallow=False), "restore differs"
                os.unlink(out)
            # Memory against the cache and the volume: one copy of each volume with the default
            # cache and with a quarter of it.
            for cache in (a.cache_mib, a.cache_mib // 4):
                for backup in ("day1", "big"):
                    out = os.path.join(work, "copy.img")
                    s = Server(env, c, backup, sock, cache)
                    t = time.monotonic()
                    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri, out], check=True)
                    took = time.monotonic() - t
                    rss_mib = s.peak_rss_mib()
                    s.stop()
                    os.unlink(out)
                    print(f"{name}: {backup} copied in {took:.1f} s; server peak RSS {rss_mib:.0f} MiB "
                          f"with a {cache} MiB cache")
            mc, mr = statistics.median(convert), statistics.median(restore)
            print(f"{name}: day1 ({os.path.getsize(day1) / 2**30:.2f} GiB), median of {a.rounds}: "
                  f"qemu-img convert over NBD {mc:.2f} s, volback restore {mr:.2f} s "
                  f"({100 * mr / mc:.0f} % of restore's speed); server peak RSS {max(rss):.0f} MiB "
                  f"with a {a.cache_mib} MiB cache")
        print("time to the first 4 KiB (server start to qemu-io done), median:")
        for name, backup, size, ttfb in rows:
            print(f"  {name:10s} {backup:5s} {size / 2**30:5.1f} GiB  {statistics.median(ttfb):.3f} s   "
                  f"{' '.join(f'{x:.3f}' for x in ttfb)}")
    finally:
        s3proc.terminate()
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
