#!/usr/bin/env python3
"""Change maps: an incremental that reads only what changed, side by side with a full-read
incremental, restic and rustic on the same 16 GiB volume image.

The volume: nine copies of the benchmark's ext4 image (day 1) end to end, cut at 16 GiB, written
densely (no holes). The day's change: 1 % of its 4 KiB blocks, in scattered runs of 16 KiB to
1 MiB of fresh random data, written in place; the generic change map (JSON extents) lists the
runs. Every incremental starts with the volume's pages dropped from the page cache
(`posix_fadvise(DONTNEED)`), as a nightly backup finds them, after `sync` (so no tool pays for
the previous one's writeback), and its disk reads are counted (`ru_inblock`).

Cases, each tool from the same parent (the day-1 backup of the volume):
- changed: volback with the map; volback `--full-read` (into a copy of the container, so both
  store the same); restic and rustic (the file's times changed, so both read it all);
- unchanged: volback with an empty map, volback with no map (the file's stamp matches its
  parent's: not read), restic and rustic (their metadata skip).

Checked: the mapped and full-read incrementals have the same extent list (the same extent-list
chunk ids in their manifests) and store the same bytes; the mapped one restores byte for byte.
Usage: python3 benches/change_maps.py [--images DIR] [--work DIR] [--days N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "volback")
SIZE = 16 << 30
BLOCK = 4096


def rustic_bin() -> str:
    return shutil.which("rustic") or "/tmp/rustic-install/bin/rustic"


def make_volume(day1: str, path: str) -> None:
    with open(path, "wb") as out:
        while out.tell() < SIZE:
            with open(day1, "rb") as src:
                while out.tell() < SIZE:
                    b = src.read(min(16 << 20, SIZE - out.tell()))
                    if not b:
                        break
                    out.write(b)
        out.flush()
        os.fsync(out.fileno())


def edit(path: str, seed: int, fraction: float = 0.01) -> list[tuple[int, int]]:
    """Writes fresh random runs over `fraction` of the blocks; returns them, sorted."""
    rng = random.Random(seed)
    want = int(SIZE * fraction)
    runs: list[tuple[int, int]] = []
    taken = 0
    used: set[int] = set()
    while taken < want:
        n = rng.randrange(4, 257) * BLOCK
        at = rng.randrange(0, (SIZE - n) // BLOCK) * BLOCK
        mib = range(at >> 20, ((at + n) >> 20) + 1)
        if any(m in used for m in mib):
            continue
        used.update(mib)
        runs.append((at, n))
        taken += n
    runs.sort()
    with open(path, "r+b") as f:
        for at, n in runs:
            f.seek(at)
            f.write(rng.randbytes(n))
        f.flush()
        os.fsync(f.fileno())
    return runs


def drop_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """Runs cmd; wall s, CPU s, peak RSS MiB, disk bytes read (ru_inblock), stdout."""
    t = time.monotonic()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)}: {err.decode(errors='replace')[-2000:]}")
    return {
        "wall": wall,
        "cpu": ru.ru_utime + ru.ru_stime,
        "rss": ru.ru_maxrss / 1024,
        "disk": ru.ru_inblock * 512,
        "out": out.decode(errors="replace"),
    }


def du(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total


def manifest(container: str, backup_id: str) -> dict:
    with open(os.path.join(container, "backups", backup_id)) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="/tmp/volback-bench-images")
    ap.add_argument("--work", default="/tmp/volback-bench-maps")
    ap.add_argument("--days", type=int, default=3, help="days of changes (each a round)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the unchanged cases")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    vol = os.path.join(a.work, "vol.img")
    print("making the 16 GiB volume ...", file=sys.stderr)
    make_volume(os.path.join(a.images, "day1.img"), vol)
    for d in ("a", "b", "restic", "rustic", "rustic-cache", "restic-cache"):
        shutil.rmtree(os.path.join(a.work, d), ignore_errors=True)
    ca, cb = os.path.join(a.work, "a"), os.path.join(a.work, "b")
    renv = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=os.path.join(a.work, "restic"),
                RESTIC_CACHE_DIR=os.path.join(a.work, "restic-cache"))
    rustic = [rustic_bin(), "-r", os.path.join(a.work, "rustic"), "--password", "bench", "--no-progress",
              "--cache-dir", os.path.join(a.work, "rustic-cache")]
    subprocess.run(["restic", "init", "-q"], env=renv, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*rustic, "init"], check=True, capture_output=True)

    def vb(*args: str) -> dict:
        r = run_measured([BIN, *args, "--json"])
        r["report"] = json.loads(r["out"].splitlines()[-1])
        return r

    # Day 1: the parent, in every tool.
    print("day 1 backups ...", file=sys.stderr)
    vb("backup", "--container", ca, "--volume", vol, "--backup-id", "day1")
    run_measured(["restic", "backup", "-q", "vol.img"], env=renv, cwd=a.work)
    run_measured([*rustic, "backup", "vol.img"], cwd=a.work)
    shutil.copytree(ca, cb)

    rows: dict[str, list[dict]] = {}
    stored: dict[str, list[int]] = {}
    changed_runs: list[int] = []

    def case(name: str, fn, where: str | None = None) -> None:
        # Each case starts on a quiet disk: the previous tool's writes flushed, the volume cold.
        os.sync()
        drop_cache(vol)
        before = du(where) if where else 0
        r = fn()
        if where:
            stored.setdefault(name, []).append(du(where) - before)
        rows.setdefault(name, []).append(r)
        print(f"  {name}: {r['wall']:.2f} s, read {r['disk'] / 2**20:.0f} MiB", file=sys.stderr)

    # Each day: fresh changes written in place, then every tool backs the volume up from its
    # previous backup (the file's times moved, so restic and rustic read it all).
    prev = "day1"
    for day in range(2, 2 + a.days):
        runs = edit(vol, seed=day)
        changed_runs.append(len(runs))
        map_path = os.path.join(a.work, f"changes-{day}.json")
        with open(map_path, "w") as f:
            json.dump({"block_size": BLOCK, "volume_size": SIZE,
                       "extents": [{"offset": o, "length": n} for o, n in runs]}, f)
        print(f"day {day}: {len(runs)} runs, {sum(n for _, n in runs) / 2**20:.1f} MiB changed", file=sys.stderr)
        this = f"day{day}"
        case("volback, change map", lambda: vb(
            "backup", "--container", ca, "--volume", vol, "--backup-id", this, "--parent", prev,
            "--changes", map_path), ca)
        case("volback, full read", lambda: vb(
            "backup", "--container", cb, "--volume", vol, "--backup-id", this, "--parent", prev,
            "--full-read"), cb)
        case("restic", lambda: run_measured(["restic", "backup", "-q", "vol.img"], env=renv, cwd=a.work),
             renv["RESTIC_REPOSITORY"])
        case("rustic", lambda: run_measured([*rustic, "backup", "vol.img"], cwd=a.work),
             os.path.join(a.work, "rustic"))
        ma, mb = manifest(ca, this), manifest(cb, this)
        assert ma["extents"] == mb["extents"], f"{this}: mapped and full-read extent lists differ"
        assert ma["stats"]["bytes_new"] == mb["stats"]["bytes_new"], (ma["stats"], mb["stats"])
        prev = this

    # Unchanged: a backup of the last day that recorded its stamp, then the same file again.
    empty_map = os.path.join(a.work, "empty.json")
    with open(empty_map, "w") as f:
        f.write("[]")
    vb("backup", "--container", ca, "--volume", vol, "--backup-id", "u0", "--parent", prev, "--full-read")
    run_measured(["restic", "backup", "-q", "vol.img"], env=renv, cwd=a.work)
    run_measured([*rustic, "backup", "vol.img"], cwd=a.work)
    for rnd in range(a.rounds):
        case("unchanged: volback, empty map", lambda: vb(
            "backup", "--container", ca, "--volume", vol, "--backup-id", f"e{rnd}", "--parent", "u0",
            "--changes", empty_map))
        case("unchanged: volback, same stamp", lambda: vb(
            "backup", "--container", ca, "--volume", vol, "--backup-id", f"s{rnd}", "--parent", "u0"))
        case("unchanged: restic", lambda: run_measured(["restic", "backup", "-q", "vol.img"], env=renv, cwd=a.work))
        case("unchanged: rustic", lambda: run_measured([*rustic, "backup", "vol.img"], cwd=a.work))

    # The mapped backup restores byte for byte (streamed: the disk has no room for a copy).
    cat = subprocess.Popen([BIN, "cat", "--container", ca, "--backup-id", prev], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    with open(vol, "rb") as f:
        while True:
            want = f.read(8 << 20)
            got = cat.stdout.read(len(want)) if want else cat.stdout.read(1)
            assert got == want, f"restore of the mapped backup differs near byte {f.tell()}"
            if not want:
                break
    assert cat.wait() == 0

    base = statistics.median(r["wall"] for r in rows["volback, change map"])
    read = statistics.median(r["report"]["bytes_read"] for r in rows["volback, change map"])
    print(f"\n16 GiB volume, {a.days} days of 1 % changed blocks ({statistics.median(changed_runs):.0f} runs, "
          f"164 MiB a day), cold page cache; median of the days (unchanged: of {a.rounds} rounds). "
          f"The mapped backup read {read / 2**20:.0f} MiB of the volume ({100 * read / SIZE:.2f} %).\n")
    print("| case | wall s | disk read MiB | CPU s | peak RSS MiB | stored MiB a day | wall vs mapped |")
    print("|---|---|---|---|---|---|---|")
    for name, rs in rows.items():
        wall = statistics.median(r["wall"] for r in rs)
        disk = statistics.median(r["disk"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        rss = max(r["rss"] for r in rs)
        st = f"{statistics.median(stored[name]) / 2**20:.1f}" if name in stored else ""
        ratio = f"{wall / base:.1f}x" if not name.startswith("unchanged") else ""
        print(f"| {name} | {wall:.2f} | {disk / 2**20:.0f} | {cpu:.2f} | {rss:.0f} | {st} | {ratio} |")


if __name__ == "__main__":
    main()
