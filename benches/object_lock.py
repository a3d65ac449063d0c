#!/usr/bin/env python3
"""What Object Lock retention costs: the benchmark's ext4 images backed up into two containers
on one Ceph RADOS Gateway (scripts/ceph-rgw.sh, 127.0.0.1), one plain and one with Object Lock
(compliance, 30 days), in the same run: a full backup of day 1, the day-2 incremental, and a
delete attempt. Prints wall seconds, requests by kind and objects retained, per container.

The gateway keeps objects in memory (memstore): the numbers are request overheads on loopback,
not a remote store's latency, which scales the retention requests like every other.

Usage: python3 benches/object_lock.py [--images DIR] [--rounds N]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY, SECRET = "volbacktest", "volbacktestsecret"


def run(volback, endpoint, args):
    env = dict(
        os.environ,
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_REGION="us-east-1",
    )
    t = time.monotonic()
    p = subprocess.run([volback, *args, "--json"], env=env, capture_output=True, text=True)
    return time.monotonic() - t, p


def bucket(endpoint, name, lock):
    headers = ["-H", "x-amz-content-sha256: " + hashlib.sha256(b"").hexdigest()]
    if lock:
        headers += ["-H", "x-amz-bucket-object-lock-enabled: true"]
    subprocess.run(
        ["curl", "-sf", "-X", "PUT", *headers, "--aws-sigv4", "aws:amz:us-east-1:s3"]
        + ["--user", f"{KEY}:{SECRET}", f"{endpoint}/{name}"],
        check=True,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="/tmp/volback-bench-images")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "volback-cli"], cwd=ROOT, check=True)
    volback = os.path.join(ROOT, "target", "release", "volback")
    day1, day2 = (os.path.join(a.images, f"day{d}.img") for d in (1, 2))
    if not os.path.exists(day1):
        subprocess.run([sys.executable, os.path.join(ROOT, "benches", "make_images.py"), a.images], check=True)
    work = tempfile.mkdtemp(prefix="volback-lock-bench-")
    # Each round stores two containers of ~0.5 GiB in the gateway's memory.
    env = dict(os.environ, CEPH_MEMSTORE_BYTES=str((1 + a.rounds) << 31))
    endpoint = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "ceph-rgw.sh"), "start", work, str(os.getpid())],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    rows = []
    for r in range(a.rounds):
        for lock in (False, True):
            name = f"{'locked' if lock else 'plain'}-{r}"
            bucket(endpoint, name, lock)
            url = f"s3://{name}/c"
            extra = ["--object-lock-days", "30"] if lock else []
            for step, image, parent in (("full", day1, []), ("incremental", day2, ["--parent", "d1"])):
                bid = "d1" if step == "full" else "d2"
                secs, p = run(volback, endpoint, ["backup", "--container", url, "--volume", image]
                              + ["--backup-id", bid, *parent, *extra])
                if p.returncode != 0:
                    sys.exit(f"{name} {step}: {p.stderr}")
                rep = json.loads(p.stdout)
                rows.append((name, step, secs, rep["requests"], rep.get("objects_retained", 0)))
            secs, p = run(volback, endpoint, ["delete", "--container", url, "--backup-id", "d1"])
            rows.append((name, "delete d1", secs, {"exit": p.returncode}, 0))
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "ceph-rgw.sh"), "stop", work], check=True)
    print("| container | step | wall s | PUT | GET | HEAD | LIST | DELETE | retained |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, step, secs, req, retained in rows:
        if "exit" in req:
            print(f"| {name} | {step} | {secs:.2f} | exit {req['exit']} | | | | | |")
            continue
        print(
            f"| {name} | {step} | {secs:.2f} | {req['put']} | {req['get']} | {req['head']} "
            f"| {req['list']} | {req['delete']} | {retained} |"
        )


if __name__ == "__main__":
    main()
