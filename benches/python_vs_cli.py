#!/usr/bin/env python3
"""The Python package against the CLI on the same image, in one run: does the binding cost time
or memory?

Backs up an image into a fresh filesystem container and restores it, alternating the `volback`
binary and the `volback` Python package (the volume handed over as an open file object, as
Cinder's backup manager hands it to its driver), for a few rounds. Each run is a process of its
own, timed with wall clock and peak RSS (`getrusage` of the child). Prints the medians and the
ratio Python / CLI.

Usage: python3 benches/python_vs_cli.py [--image PATH] [--rounds N] [--python VENV_PYTHON]
Needs a release build (`cargo build --release`) and the package built with
`maturin build --release` installed in the venv whose python is given.
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

PY_BACKUP = """
import sys, volback
c = volback.Container(sys.argv[1], create=True)
with open(sys.argv[2], "rb") as f:
    c.backup(f, volume_id="v", backup_id="b")
"""
PY_RESTORE = """
import sys, volback
c = volback.Container(sys.argv[1])
with open(sys.argv[2], "wb") as f:
    c.restore("b", f.fileno(), is_new=True)
"""


def timed(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss of children is the largest of any child so far: run the tools in separate
    # measuring processes to keep it per run.
    return wall, after.ru_maxrss / 1024, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def measure(cmd):
    """Runs `cmd` under a fresh Python that reports its child's wall, peak RSS (MiB), CPU."""
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
    try:
        for _ in range(a.rounds):
            for tool in ("cli", "python"):
                c = os.path.join(work, "c-" + tool)
                out = os.path.join(work, "out-" + tool + ".img")
                shutil.rmtree(c, ignore_errors=True)
                if os.path.exists(out):
                    os.remove(out)
                if tool == "cli":
                    b = [cli, "backup", "--container", c, "--volume", a.image, "--backup-id", "b", "--json"]
                    r = [cli, "restore", "--container", c, "--backup-id", "b", "--target", out, "--json"]
                else:
                    b = [a.python, "-c", PY_BACKUP, c, a.image]
                    open(out, "wb").close()
                    r = [a.python, "-c", PY_RESTORE, c, out]
                results.setdefault((tool, "backup"), []).append(measure(b))
                results.setdefault((tool, "restore"), []).append(measure(r))
                if subprocess.run(["cmp", "-s", a.image, out]).returncode != 0:
                    sys.exit("%s restored different bytes" % tool)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("| operation | tool | wall s (median, range) | CPU s | peak RSS MiB | vs CLI |")
    print("|---|---|---|---|---|---|")
    for op in ("backup", "restore"):
        base = statistics.median(x[0] for x in results[("cli", op)])
        for tool in ("cli", "python"):
            xs = results[(tool, op)]
            wall = statistics.median(x[0] for x in xs)
            print("| %s | %s | %.2f (%.2f–%.2f) | %.2f | %.0f | %s |" % (
                op, tool, wall, min(x[0] for x in xs), max(x[0] for x in xs),
                statistics.median(x[2] for x in xs), statistics.median(x[1] for x in xs),
                "" if tool == "cli" else "%.2fx" % (wall / base)))


if __name__ == "__main__":
    main()
