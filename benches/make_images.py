#!/usr/bin/env python3
"""Builds realistic volume images for benchmarks, with no download.

  day1.img  ext4 made with `mke2fs -t ext4 -d TREE` from copies of real files on this machine
            (/usr/share and parts of /usr/lib); free space stays zero.
  day2.img  the "next day": ~2 % of the files changed in place, appended to, deleted, or added,
            then imaged again the same way (same size, same mke2fs).
  random.img  incompressible random data.
  thin.img    90 % zeros (10 % random data in 1 MiB runs).
  sparse.img  a sparse file: holes with 10 % data.

Usage: make_images.py OUTDIR [--tree-mib N] [--random-mib N] [--seed S]
Everything is deterministic for a given machine, seed and size.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys

SOURCES = ["/usr/share", "/usr/lib/python3", "/usr/lib/x86_64-linux-gnu", "/usr/lib/gcc", "/usr/lib/jvm", "/usr/lib"]


def copy_tree(dst, budget):
    """Copies regular files from SOURCES into dst until `budget` bytes are copied."""
    used = 0
    seen = set()
    for src in SOURCES:
        if not os.path.isdir(src):
            continue
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(root, f)
                if p in seen or os.path.islink(p) or not os.path.isfile(p):
                    continue
                seen.add(p)
                try:
                    size = os.path.getsize(p)
                except OSError:
                    continue
                if size > 64 << 20:
                    continue
                rel = os.path.relpath(p, "/")
                out = os.path.join(dst, rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                try:
                    shutil.copyfile(p, out)
                except OSError:
                    continue
                used += size
                if used >= budget:
                    return used
    return used


def all_files(tree):
    out = []
    for root, dirs, files in os.walk(tree):
        dirs.sort()
        for f in sorted(files):
            out.append(os.path.join(root, f))
    return out


def mutate(tree, rng, fraction=0.02):
    """Changes ~fraction of the files: in-place edits, appends, deletes, and new files."""
    files = all_files(tree)
    n = max(4, int(len(files) * fraction))
    picks = rng.sample(files, n)
    q = n // 4
    stats = {"edited": 0, "appended": 0, "deleted": 0, "added": 0, "bytes": 0}
    for p in picks[:q]:  # edit a few bytes in place
        size = os.path.getsize(p)
        if size == 0:
            continue
        with open(p, "r+b") as f:
            for _ in range(1 + size // (256 << 10)):
                off = rng.randrange(size)
                f.seek(off)
                data = rng.randbytes(min(512, size - off))
                f.write(data)
                stats["bytes"] += len(data)
        stats["edited"] += 1
    for p in picks[q:2 * q]:  # append
        with open(p, "ab") as f:
            data = rng.randbytes(rng.randrange(1, 64 << 10))
            f.write(data)
            stats["bytes"] += len(data)
        stats["appended"] += 1
    for p in picks[2 * q:3 * q]:  # delete
        os.remove(p)
        stats["deleted"] += 1
    for i, p in enumerate(picks[3 * q:]):  # add a modified copy of an existing file
        src = rng.choice(files)
        if not os.path.exists(src):
            continue
        dst = os.path.join(os.path.dirname(p), "new-%d-%s" % (i, os.path.basename(src)))
        shutil.copyfile(src, dst)
        with open(dst, "ab") as f:
            data = rng.randbytes(4096)
            f.write(data)
            stats["bytes"] += len(data)
        stats["added"] += 1
    return stats


def mke2fs(tree, img, size_mib):
    if os.path.exists(img):
        os.remove(img)
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-E", "root_owner=0:0,lazy_itable_init=0", "-U", "4f3c6b1a-0000-4000-8000-000000000001",
         "-d", tree, img, "%dM" % size_mib],
        check=True, env=dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000"),
    )


def random_file(path, mib, seed):
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(1 << 20))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--tree-mib", type=int, default=1200)
    ap.add_argument("--random-mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="day1,day2,random,thin,sparse")
    a = ap.parse_args()
    only = set(a.only.split(","))
    os.makedirs(a.outdir, exist_ok=True)
    rng = random.Random(a.seed)
    tree = os.path.join(a.outdir, "tree")
    img_mib = int(a.tree_mib * 1.4) + 128
    if "day1" in only or "day2" in only:
        if os.path.exists(tree):
            shutil.rmtree(tree)
        used = copy_tree(tree, a.tree_mib << 20)
        print("tree: %d MiB of files, image %d MiB" % (used >> 20, img_mib), file=sys.stderr)
        mke2fs(tree, os.path.join(a.outdir, "day1.img"), img_mib)
        stats = mutate(tree, rng)
        print("day2: %s" % stats, file=sys.stderr)
        mke2fs(tree, os.path.join(a.outdir, "day2.img"), img_mib)
        shutil.rmtree(tree)
    if "random" in only:
        random_file(os.path.join(a.outdir, "random.img"), a.random_mib, a.seed)
    if "thin" in only:
        p = os.path.join(a.outdir, "thin.img")
        r = random.Random(a.seed + 1)
        with open(p, "wb") as f:
            for i in range(a.random_mib):
                f.write(r.randbytes(1 << 20) if i % 10 == 0 else bytes(1 << 20))
    if "sparse" in only:
        p = os.path.join(a.outdir, "sparse.img")
        r = random.Random(a.seed + 2)
        with open(p, "wb") as f:
            f.truncate(a.random_mib << 20)
            for i in range(0, a.random_mib, 10):
                f.seek(i << 20)
                f.write(r.randbytes(1 << 20))


if __name__ == "__main__":
    main()
