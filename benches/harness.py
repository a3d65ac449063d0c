#!/usr/bin/env python3
"""Throughput harness: volback side by side with restic and BorgBackup on the same images.

Builds the images itself (benches/make_images.py, no download), then runs, in one go:
  - full backup of the filesystem image (day 1), next-day incremental (day 2), restore of day 2
    twice: durable (volback's default fsync; restic and borg followed by `sync FILE`, since they
    do not flush) and without a flush (volback --no-sync, whose whole blocks still bypass the
    page cache with direct I/O, its default; restic and borg as they are, through the page
    cache);
  - an unchanged-volume incremental (day 2 again): each tool as it comes, so all three skip the
    unchanged image file by its metadata; and volback's with --full-read, which reads, cuts and
    hashes every byte;
  - full backups of a random image, a 90 %-zero image and a sparse file;
and volback's primitives limits on the day-1 image (benches/primitives.rs), measured in each
round right after volback's read-in-full unchanged incremental, which is compared with them. restic (default
settings) and borg (--compression zstd,3, default chunker) run when installed (Debian packages
`restic`, `borgbackup`). Prints one Markdown table: wall s, MB/s, CPU s, peak RSS, stored bytes,
volback/peer ratios, and the share of the machine's CPU the hypervisor stole during each run
(a shared VM can lose half its CPU to neighbours: such a run's ratios say little). The
day-1/day-2 cases run in rounds (default 3), the tools interleaved within each round, and each
cell is the median round, with the range of wall times beside it: this machine's speed drifts
by tens of percent within minutes, and a single run per tool can land on either side of it.

Usage: python3 benches/harness.py [--images DIR] [--work DIR] [--tree-mib N] [--random-mib N]
                                  [--tools volback,restic,borg] [--s3] [--rounds N]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_ticks():
    """The machine's CPU time so far, from /proc/stat: (all ticks, stolen ticks), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[7]
    except (OSError, ValueError, IndexError):
        return None


# Share of the machine's CPU time the hypervisor took during the last run (None if unknown).
# A shared VM can lose half its CPU to neighbours; a run with a high share is not comparable.
LAST_STEAL = None
# The day-1/day-2 cases run again (every tool alike) when more than this share was stolen:
# volback keeps both cores busy, so a little steal costs it much (one full backup: 4.87 s at
# 8 % stolen, 3.28 s undisturbed), while borg leaves a core idle for the hypervisor to take.
STEAL_MAX = float(os.environ.get("HARNESS_STEAL_MAX", "0.05"))
TRIES = 3


def run(cmd, env=None, cwd=None, stdin=None):
    """Runs cmd; returns (wall s, cpu s, peak RSS bytes, stdout)."""
    global LAST_STEAL
    ticks = cpu_ticks()
    t = time.monotonic()
    out = tempfile.TemporaryFile()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.PIPE, stdin=stdin)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t
    after = cpu_ticks()
    LAST_STEAL = None
    if ticks and after and after[0] > ticks[0]:
        LAST_STEAL = (after[1] - ticks[1]) / (after[0] - ticks[0])
    err = p.stderr.read().decode(errors="replace")
    out.seek(0)
    text = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("%s failed: %s\n%s" % (" ".join(cmd), err[-2000:], text[-2000:]))
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, text


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def place(src, dst):
    """Copies an image to the fixed path every tool reads (sparse, not timed)."""
    if os.path.exists(dst):
        os.remove(dst)
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)
    settle()


class Volback:
    name = "volback"

    def __init__(self, work, s3=None, binary=None, name=None, encrypted=False):
        """`binary` and `name`: another build of volback (--baseline), run in the same rounds.
        `encrypted`: an encrypted container whose key is a 256-bit key in a file, as a key
        manager hands out (--encrypted)."""
        self.bin = binary or os.path.join(ROOT, "target", "release", "volback")
        if name:
            self.name = name
        self.key = []
        if encrypted:
            key_file = os.path.join(work, self.name + ".key")
            with open(key_file, "w") as f:
                f.write(os.urandom(32).hex() + "\n")
            self.key = ["--key", "file:" + key_file]
        self.env = dict(os.environ)
        if s3:
            self.container = s3["url"]
            self.env.update(s3["env"])
            self.store = s3["dir"]
        else:
            self.container = os.path.join(work, self.name + "-repo")
            self.store = self.container

    def reset(self):
        """Removes the container (its directory, or its prefix's directory in the S3 server's
        bucket); the next backup creates it again."""
        shutil.rmtree(self.store, ignore_errors=True)

    def backup(self, vol, tag, parent=None, extra=()):
        cmd = [self.bin, "backup", "--container", self.container, "--volume", vol, "--backup-id", tag, "--json"]
        if parent:
            cmd += ["--parent", parent]
        return run(cmd + self.key + list(extra), env=self.env)

    def restore(self, tag, target, durable):
        cmd = [self.bin, "restore", "--container", self.container, "--backup-id", tag, "--target", target, "--json"]
        cmd += self.key
        return run(cmd + ([] if durable else ["--no-sync"]), env=self.env)

    def stored(self):
        return du(self.store)


class Restic:
    name = "restic"

    def __init__(self, work):
        self.repo = os.path.join(work, "restic-repo")
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=self.repo,
                        RESTIC_CACHE_DIR=os.path.join(work, "restic-cache"))
        self.work = work
        self.reset()

    def reset(self):
        shutil.rmtree(self.repo, ignore_errors=True)
        subprocess.run(["restic", "init", "-q"], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def backup(self, vol, tag, parent=None):
        return run(["restic", "backup", "-q", "--tag", tag, os.path.basename(vol)], env=self.env, cwd=os.path.dirname(vol))

    def restore(self, tag, target, durable):
        d = target + ".d"
        shutil.rmtree(d, ignore_errors=True)
        cmd = ["restic", "restore", "-q", "latest", "--tag", tag, "--target", d]
        return run(then_sync(cmd, os.path.join(d, "vol.img"), durable), env=self.env)

    def stored(self):
        return du(self.repo)


class Borg:
    name = "borg"

    def __init__(self, work):
        self.repo = os.path.join(work, "borg-repo")
        self.env = dict(os.environ, BORG_BASE_DIR=os.path.join(work, "borg-base"),
                        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        self.reset()

    def reset(self):
        shutil.rmtree(self.repo, ignore_errors=True)
        subprocess.run(["borg", "init", "-e", "none", self.repo], env=self.env, check=True)

    def backup(self, vol, tag, parent=None):
        return run(["borg", "create", "--compression", "zstd,3", "%s::%s" % (self.repo, tag), os.path.basename(vol)],
                   env=self.env, cwd=os.path.dirname(vol))

    def restore(self, tag, target, durable):
        d = target + ".d"
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        cmd = ["borg", "extract", "--sparse", "%s::%s" % (self.repo, tag)]
        return run(then_sync(cmd, os.path.join(d, "vol.img"), durable), env=self.env, cwd=d)

    def stored(self):
        return du(self.repo)


def then_sync(cmd, restored, durable):
    """restic and borg return before their restored file is on disk; a durable restore of
    theirs is timed as the restore followed by `sync FILE` (an fsync of that file)."""
    if not durable:
        return cmd
    return ["sh", "-c", '"$@" && sync "%s"' % restored, "sh"] + cmd


def settle():
    """Writes back earlier runs' dirty pages, untimed, so they do not slow the next run."""
    subprocess.run(["sync"], check=True)
    time.sleep(2)


def start_s3(work):
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    p = port.getsockname()[1]
    port.close()
    root = os.path.join(work, "s3")
    os.makedirs(os.path.join(root, "bench"), exist_ok=True)
    s3s = shutil.which("s3s-fs") or os.path.expanduser("~/.cargo/bin/s3s-fs")
    proc = subprocess.Popen([s3s, "--host", "127.0.0.1", "--port", str(p), "--access-key", "bench",
                             "--secret-key", "bench-secret", root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", p), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:%d" % p, "AWS_REGION": "us-east-1"}
    return proc, {"url": "s3://bench/c", "env": env, "dir": os.path.join(root, "bench", "c")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="/tmp/volback-bench-images")
    ap.add_argument("--work", default=None)
    ap.add_argument("--tree-mib", type=int, default=1200)
    ap.add_argument("--random-mib", type=int, default=1024)
    ap.add_argument("--tools", default="volback,restic,borg")
    ap.add_argument("--s3", action="store_true", help="volback against a local S3 server (s3s-fs)")
    ap.add_argument("--baseline", default=None, metavar="BIN",
                    help="another volback binary (an earlier build) run in the same rounds, as 'volback-base'")
    ap.add_argument("--encrypted", action="store_true",
                    help="also volback on an encrypted container (a 256-bit key from a file), as 'volback-enc', "
                         "in the same rounds (filesystem only)")
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("HARNESS_ROUNDS", "3")),
                    help="rounds of the day-1/day-2 cases, tools interleaved; each cell is the median")
    a = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "volback-benches", "--bench", "primitives"],
                   cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    imgs = a.images
    need = [n for n in ("day1", "day2", "random", "thin", "sparse") if not os.path.exists(os.path.join(imgs, n + ".img"))]
    if need:
        subprocess.run([sys.executable, os.path.join(ROOT, "benches", "make_images.py"), imgs, "--tree-mib", str(a.tree_mib),
                        "--random-mib", str(a.random_mib), "--only", ",".join(need)], check=True)
    work = a.work or tempfile.mkdtemp(prefix="volback-bench-")
    vol = os.path.join(work, "vol.img")
    server = None
    tools = []
    for t in a.tools.split(","):
        if t == "volback":
            s3 = None
            if a.s3:
                server, s3 = start_s3(work)
            tools.append(Volback(work, s3))
            if a.baseline:
                tools.append(Volback(work, s3, binary=os.path.abspath(a.baseline), name="volback-base"))
            if a.encrypted and not a.s3:
                tools.append(Volback(work, name="volback-enc", encrypted=True))
        elif shutil.which(t):
            tools.append({"restic": Restic, "borg": Borg}[t](work))
        else:
            print("note: %s is not installed; skipped" % t, file=sys.stderr)

    rows = {}  # (case, tool) -> dict: the median run
    samples = {}  # (case, tool) -> every run, one per round

    def record(case, tool, r, size, stored=None, steal=None):
        wall, cpu, rss, out = r
        samples.setdefault((case, tool.name), []).append(
            {"wall": wall, "cpu": cpu, "rss": rss, "mbps": size / 1e6 / wall, "stored": stored, "out": out, "steal": steal})
        runs = sorted(samples[(case, tool.name)], key=lambda x: x["wall"])
        rows[(case, tool.name)] = dict(runs[(len(runs) - 1) // 2], walls=[x["wall"] for x in runs])

    def steady(case, tool, attempt):
        """Runs attempt() (whose last run() is the timed one) until the hypervisor took less than
        STEAL_MAX of the machine during it, at most TRIES times; keeps the least disturbed try.
        Every tool gets the same rule, so no tool's figure is a lucky or unlucky draw alone."""
        best = None
        for i in range(TRIES):
            got = attempt(i)
            steal = LAST_STEAL
            if best is None or (steal or 0) < (best[1] or 0):
                best = (got, steal)
            if steal is None or steal < STEAL_MAX:
                break
            print("note: %s, %s: %.0f %% stolen; run again" % (case, tool.name, 100 * steal), file=sys.stderr)
        return best

    day1 = os.path.join(imgs, "day1.img")
    day2 = os.path.join(imgs, "day2.img")
    size1 = os.path.getsize(day1)
    primitives = os.path.join(ROOT, "target", "release", "deps", find_primitives())

    def limits():
        lim = json.loads(run([primitives, day1])[3])
        lim["cdc_b3"] = 1 / (1 / lim["fastcdc_mibps"] + 1 / lim["blake3_mibps"])
        return lim

    # The machine's limits are measured in every round right after volback's unchanged
    # incremental, which is compared with them: this machine's speed drifts by tens of percent
    # within minutes, so limits measured at another time would compare two different machines.
    limit_rounds = []  # (volback unchanged MiB/s / FastCDC+BLAKE3 limit, limits) per round
    # Rounds interleave the tools, so a slow spell of this shared machine falls on all of them;
    # each cell is the median round (lower median for an even count).
    for rnd in range(max(1, a.rounds)):
        for tool in tools:
            def full(i):
                if rnd or i:  # an empty repository for every round and every try
                    tool.reset()
                place(day1, vol)
                return tool.backup(vol, "day1"), tool.stored()

            (r, stored), steal = steady("full backup", tool, full)
            record("full backup (fs image)", tool, r, size1, stored, steal)

            def incremental(i):
                if i:  # back to a repository holding day 1 only
                    tool.reset()
                    place(day1, vol)
                    tool.backup(vol, "day1")
                before = tool.stored()
                place(day2, vol)
                return tool.backup(vol, "day2", "day1"), tool.stored() - before

            (r, stored), steal = steady("next-day incremental", tool, incremental)
            record("next-day incremental", tool, r, size1, stored, steal)

            def unchanged(i):
                before = tool.stored()
                settle()
                return tool.backup(vol, "day2-again-%d" % i, "day2"), tool.stored() - before

            (r, stored), steal = steady("unchanged incremental", tool, unchanged)
            record("unchanged incremental", tool, r, size1, stored, steal)
            if isinstance(tool, Volback):
                def unchanged_read(i):
                    before = tool.stored()
                    settle()
                    r = tool.backup(vol, "day2-read-%d" % i, "day2", ["--full-read"])
                    return r, tool.stored() - before

                (r, stored), steal = steady("unchanged incremental, read in full", tool, unchanged_read)
                record("unchanged incremental, read in full", tool, r, size1, stored, steal)
            if tool.name == "volback":
                lim = limits()
                limit_rounds.append((size1 / 2**20 / r[0] / lim["cdc_b3"], lim))
            target = os.path.join(work, "restored-%s.img" % tool.name)
            for case, durable in (("restore (day 2), durable", True), ("restore (day 2), no flush", False)):
                def restore(i):
                    if os.path.exists(target):
                        os.remove(target)
                    shutil.rmtree(target + ".d", ignore_errors=True)
                    settle()
                    return tool.restore("day2", target, durable)

                r, steal = steady(case, tool, restore)
                record(case, tool, r, size1, None, steal)
                if os.path.exists(target):
                    os.remove(target)
                shutil.rmtree(target + ".d", ignore_errors=True)
    for tool in tools:
        rows[("stored after full + incremental", tool.name)] = {"stored": None}
    for case, img in (("full backup (random)", "random"), ("full backup (90 % zeros)", "thin"), ("full backup (sparse file)", "sparse")):
        p = os.path.join(imgs, img + ".img")
        for tool in tools:
            place(p, vol)
            before = tool.stored()
            r = tool.backup(vol, img)
            record(case, tool, r, os.path.getsize(p), tool.stored() - before, LAST_STEAL)

    if not limit_rounds:  # volback not among the tools: the limits alone
        limit_rounds.append((None, limits()))
    limit_rounds.sort(key=lambda x: -1 if x[0] is None else x[0])
    share, lim = limit_rounds[(len(limit_rounds) - 1) // 2]

    names = [t.name for t in tools]
    print("\nmachine: %s, %d cores; images: %s (day1 %.0f MiB)" % (cpu_model(), os.cpu_count(), imgs, size1 / 2**20))
    print("\nday-1/day-2 cases: median of %d rounds, tools interleaved (wall range in brackets)" % max(1, a.rounds))
    print("\n| case | tool | wall s | MB/s | CPU s | peak RSS MiB | stored MiB | wall vs volback | steal % |")
    print("|---|---|---|---|---|---|---|---|---|")
    cases = []
    for (c, _) in rows:
        if c not in cases:
            cases.append(c)
    for c in cases:
        base = rows.get((c, "volback"))
        for n in names:
            r = rows.get((c, n))
            if not r or "wall" not in r:
                continue
            ratio = "" if n == "volback" or not base else "%.1fx" % (r["wall"] / base["wall"])
            stored = "" if r.get("stored") is None else "%.1f" % (r["stored"] / 2**20)
            steal = "" if r.get("steal") is None else "%.0f" % (100 * r["steal"])
            walls = r.get("walls", [])
            wall = "%.2f" % r["wall"] + (" (%.2f–%.2f)" % (walls[0], walls[-1]) if len(walls) > 1 else "")
            print("| %s | %s | %s | %.0f | %.2f | %.0f | %s | %s | %s |"
                  % (c, n, wall, r["mbps"], r["cpu"], r["rss"] / 2**20, stored, ratio, steal))
    for n in names:
        full = rows[("full backup (fs image)", n)]["stored"]
        inc = rows[("next-day incremental", n)]["stored"]
        print("\nstored after full + incremental, %s: %.1f MiB" % (n, (full + inc) / 2**20), end="")
    print()
    print("\nlimits on day1.img, 2 threads (MiB/s): read %(read_mibps)s, BLAKE3 %(blake3_mibps)s, FastCDC %(fastcdc_mibps)s, "
          "zstd-%(zstd_level)s %(zstd_mibps)s (ratio %(zstd_ratio)s)" % lim)
    if share is not None:
        print("FastCDC+BLAKE3 combined limit %.0f MiB/s; volback unchanged incremental read in full %.0f MiB/s = %.0f %% of it "
              "(median round; limits measured in each round right after volback's run; all rounds: %s)"
              % (lim["cdc_b3"], share * lim["cdc_b3"], 100 * share,
                 ", ".join("%.0f %%" % (100 * x[0]) for x in limit_rounds)))
    full = rows.get(("full backup (fs image)", "volback"))
    if full:
        # A full backup needs all three primitives on every byte; on 2 cores their combined limit
        # is what the pipeline could reach with perfect overlap and nothing else to do.
        limit = 1 / (1 / lim["fastcdc_mibps"] + 1 / lim["blake3_mibps"] + 1 / lim["zstd_mibps"])
        mibps = size1 / 2**20 / full["wall"]
        print("FastCDC+BLAKE3+zstd combined limit %.0f MiB/s; volback full backup %.0f MiB/s = %.0f %% of it "
              "(zero runs and holes cost volback little, while the limits are measured over every byte)"
              % (limit, mibps, 100 * mibps / limit))
    rnd, thin = rows.get(("full backup (random)", "volback")), rows.get(("full backup (90 % zeros)", "volback"))
    if rnd and thin:
        print("90 %%-zero image backup takes %.0f %% of the random image's time" % (100 * thin["wall"] / rnd["wall"]))
    if server:
        server.kill()
        for c in ("full backup (fs image)", "restore (day 2), durable"):
            j = json.loads(rows[(c, "volback")]["out"])
            req = j.get("requests", {})
            gib = size1 / 2**30
            print("S3 %s: %d put, %d get per GiB" % (c, req.get("put", 0) / gib, req.get("get", 0) / gib))
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


def find_primitives():
    d = os.path.join(ROOT, "target", "release", "deps")
    cands = [f for f in os.listdir(d) if f.startswith("primitives-") and os.access(os.path.join(d, f), os.X_OK) and "." not in f]
    cands.sort(key=lambda f: os.path.getmtime(os.path.join(d, f)))
    return cands[-1]


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
