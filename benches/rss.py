#!/usr/bin/env python3
"""Peak RSS by volume size: does volback's memory stay flat as the volume grows?

For each size (GiB, default 4 and 16) it streams a volume of unique, incompressible data
through stdin into a fresh filesystem container (the worst case for memory: every chunk is new,
every pack fills), backs the same stream up again as an incremental of the first (every chunk
found in the parent), and restores the full backup durably to a new file. Prints peak RSS, wall
and CPU of each, and each size's peak against the smallest size's (the goal: at most
256 MiB, and within 10 % from 4 to 16 GiB).

The volume is generated, not stored: 64 MiB of seeded random bytes with a counter written into
every 4 KiB block, so no two chunks are alike, at a few GB/s from one Python thread. The
container and the restored file need about twice the largest size in free space under --work.

Usage: python3 benches/rss.py [--sizes 4,16] [--work DIR] [--bin PATH]
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = 64 << 20


def volume(size, seed):
    """Yields `size` bytes of unique, incompressible data in 64 MiB blocks."""
    buf = bytearray(random.Random(seed).randbytes(BLOCK))
    done, k = 0, 0
    while done < size:
        base = k * (BLOCK // 4096)
        for i, off in enumerate(range(0, BLOCK, 4096)):
            buf[off:off + 8] = (base + i).to_bytes(8, "little")
        n = min(BLOCK, size - done)
        yield memoryview(buf)[:n]
        done += n
        k += 1


def run(cmd, feed=None):
    """Runs cmd, with the volume `feed` = (size, seed) on its stdin; returns (wall s, cpu s,
    peak RSS bytes). Raises on failure with the tail of its stderr.

    The volume comes from a producer process of its own: a child's peak RSS starts at its
    parent's size when it is spawned (the kernel keeps the high-water mark across exec), so
    this process must not hold the 64 MiB block itself."""
    err = tempfile.TemporaryFile()
    producer = None
    if feed:
        producer = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--emit", "%d,%d" % feed],
                                    stdout=subprocess.PIPE)
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdin=producer.stdout if producer else subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=err)
    if producer:
        producer.stdout.close()  # volback holds the pipe's read end now
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t
    if producer:
        producer.wait()
    if os.waitstatus_to_exitcode(status) != 0:
        err.seek(0)
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), err.read().decode(errors="replace")[-2000:]))
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4,16", help="volume sizes in GiB, comma-separated")
    ap.add_argument("--work", default=None, help="where the container and restored file go")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "volback"))
    ap.add_argument("--emit", default=None, help=argparse.SUPPRESS)  # SIZE,SEED: write the volume to stdout
    a = ap.parse_args()
    if a.emit:
        size, seed = (int(x) for x in a.emit.split(","))
        try:
            for part in volume(size, seed):
                sys.stdout.buffer.write(part)
        except BrokenPipeError:
            pass  # the reader failed; its exit status says why
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.bin == os.path.join(ROOT, "target", "release", "volback"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = a.work or tempfile.mkdtemp(prefix="volback-rss-")
    rows = []
    for gib in sizes:
        size = gib << 30
        c = os.path.join(work, "c-%d" % gib)
        target = os.path.join(work, "restored-%d.img" % gib)
        shutil.rmtree(c, ignore_errors=True)
        if os.path.exists(target):
            os.remove(target)
        base = [a.bin, "backup", "--container", c, "--volume", "-", "--json"]
        full = run(base + ["--backup-id", "full"], (size, gib))
        incr = run(base + ["--backup-id", "again", "--parent", "full"], (size, gib))
        rest = run([a.bin, "restore", "--container", c, "--backup-id", "full", "--target", target, "--json"])
        rows.append((gib, full, incr, rest))
        shutil.rmtree(c, ignore_errors=True)
        os.remove(target)
        print("%d GiB done" % gib, file=sys.stderr)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)

    first = rows[0]
    print("\n| volume | full backup | unchanged incremental | restore (durable) |")
    print("|---|---|---|---|")
    for gib, *runs in rows:
        cells = []
        for k, (wall, cpu, rss) in enumerate(runs):
            grow = "" if gib == first[0] else " (%+.0f %%)" % (100 * (rss / first[k + 1][2] - 1))
            cells.append("%.1f MiB%s, %.1f s, %.1f CPU-s" % (rss / 2**20, grow, wall, cpu))
        print("| %d GiB | %s |" % (gib, " | ".join(cells)))
    peak = max(r[2] for _, *runs in rows for r in runs)
    print("\nlargest peak: %.1f MiB (target: at most 256 MiB)" % (peak / 2**20))


if __name__ == "__main__":
    main()
