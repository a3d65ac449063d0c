#!/usr/bin/env bash
# The main job, end to end: build volback, make a sample volume image, back it up into a
# filesystem container, change it, back it up again incrementally, restore both backups and
# compare them byte for byte with the images they came from.
set -euo pipefail
cd "$(dirname "$0")/.."
# The work directory (~760 MiB: a copy of /usr/share/doc, images, restores, the container) is
# removed after a successful run unless VOLBACK_DEMO_DIR names one to keep.
if [ -n "${VOLBACK_DEMO_DIR:-}" ]; then
  work=$VOLBACK_DEMO_DIR
  keep=1
else
  work=$(mktemp -d /tmp/volback-demo.XXXXXX)
  keep=0
fi
mkdir -p "$work"
echo "== building volback (release)"
cargo build --release --quiet
vb=target/release/volback

echo "== making a 256 MiB ext4 volume image from /usr/share (free space stays zero)"
img=$work/volume.img
tree=$work/tree
rm -rf "$tree" "$img" "$work/container"
mkdir -p "$tree"
cp -r /usr/share/doc /usr/share/common-licenses "$tree/" 2>/dev/null || true
head -c 20M /dev/urandom > "$tree/random.bin"
if command -v mke2fs >/dev/null; then
  mke2fs -q -t ext4 -d "$tree" "$img" 256M
else
  # No e2fsprogs: a synthetic image with data, zeros and a sparse tail.
  truncate -s 256M "$img"
  dd if="$tree/random.bin" of="$img" conv=notrunc status=none
fi

echo "== full backup"
$vb backup --container "$work/container" --volume "$img" --backup-id day1 --volume-id demo
cp --sparse=always "$img" "$work/day1.img"

echo "== changing 4 MiB of the volume and backing it up incrementally"
dd if=/dev/urandom of="$img" bs=1M count=4 seek=100 conv=notrunc status=none
$vb backup --container "$work/container" --volume "$img" --backup-id day2 --volume-id demo --parent day1

echo "== restoring both backups and comparing"
rm -f "$work/r1.img" "$work/r2.img"
$vb restore --container "$work/container" --backup-id day1 --target "$work/r1.img"
$vb restore --container "$work/container" --backup-id day2 --target "$work/r2.img"
cmp "$work/day1.img" "$work/r1.img"
cmp "$img" "$work/r2.img"
$vb list --container "$work/container"
echo "container: $(du -sh "$work/container" | cut -f1) on disk for two backups of a $(du -h --apparent-size "$img" | cut -f1) volume"
if [ "$keep" = 1 ]; then
  echo "OK: both restores are byte-identical (files kept in $work)"
else
  rm -rf "$work"
  echo "OK: both restores are byte-identical (set VOLBACK_DEMO_DIR=DIR to keep the files)"
fi
