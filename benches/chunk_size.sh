#!/usr/bin/env bash
# Stored bytes of a next-day incremental, and metadata per TiB, by average chunk size.
# Usage: benches/chunk_size.sh IMAGEDIR [AVG_KIB ...]
# IMAGEDIR holds day1.img and day2.img (benches/make_images.py makes them).
set -euo pipefail
cd "$(dirname "$0")/.."
imgs=${1:?image dir}
shift
sizes=${*:-16 32 64 128}
cargo build --release --quiet
vb=$PWD/target/release/volback
work=$(mktemp -d /tmp/volback-chunk.XXXXXX)
trap 'rm -rf "$work"' EXIT
vol=$(stat -c %s "$imgs/day1.img")
printf '| avg chunk | chunks in day 1 | day-1 stored MiB | day-2 new MiB (data + metadata) | manifest KiB | index segments MiB | metadata per TiB of volume (full backup) |\n'
printf '|---|---|---|---|---|---|---|\n'
for kib in $sizes; do
  c=$work/c$kib
  j1=$($vb backup --container "$c" --volume "$imgs/day1.img" --backup-id d1 --volume-id v --chunk-avg $((kib * 1024)) --json)
  j2=$($vb backup --container "$c" --volume "$imgs/day2.img" --backup-id d2 --volume-id v --parent d1 --json)
  python3 - "$j1" "$j2" "$c" "$kib" "$vol" <<'EOF'
import json, os, sys
j1, j2 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
c, kib, vol = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
man = os.path.getsize(os.path.join(c, "backups", "d1"))
idx = sum(os.path.getsize(os.path.join(c, "index", f)) for f in os.listdir(os.path.join(c, "index")))
# metadata of the full backup: index entries + extent-list chunks (~35 B per chunk) + manifest
meta_full = j1["chunks_total"] * (52 + 35) + man
per_tib = meta_full * (1 << 40) / vol
print("| %d KiB | %d | %.1f | %.1f | %.1f | %.1f | %.2f GiB (%.2f %%) |" % (
    kib, j1["chunks_total"], j1["bytes_new"] / 2**20, j2["bytes_new"] / 2**20, man / 1024,
    idx / 2**20, per_tib / 2**30, 100 * meta_full / vol))
EOF
done
