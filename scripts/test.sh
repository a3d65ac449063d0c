#!/usr/bin/env bash
# Runs every test: unit, integration (filesystem and S3), CLI and doc tests, and the Python
# package's tests (a venv with maturin and pytest is made under target/ on the first run).
#
# The S3 tests start their own S3-compatible server (s3s-fs) on 127.0.0.1 at a free port; this
# script installs it first if it is missing, so one command runs everything on a fresh machine.
# s3s-fs: SigV4-checking, stores objects as plain files (tests can damage them), starts in
# milliseconds. 0.14.1 is the newest release that builds with this toolchain (rustc 1.95).
# The Object Lock tests start Ceph's RADOS Gateway instead (installed below).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "== installing s3s-fs 0.14.1 (S3-compatible test server)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet
fi
# Ceph's RADOS Gateway: the Object Lock tests need a server that enforces retention (s3s-fs has
# no Object Lock). Debian's packages; tests/object_lock.rs starts it (scripts/ceph-rgw.sh).
if ! command -v radosgw >/dev/null 2>&1 || ! command -v uuidgen >/dev/null 2>&1; then
  echo "== installing Ceph (monitor, OSD, RADOS Gateway) from Debian"
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends \
    ceph-mon ceph-osd radosgw ceph-common uuid-runtime curl >/dev/null
fi
# QEMU's tools (Debian's qemu-utils): tests/nbd.rs reads backups served over NBD with qemu-img
# and qemu-io, the reference NBD client.
if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
  echo "== installing qemu-utils (NBD client tests) from Debian"
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
fi
# dm-thin's tools (Debian's thin-provisioning-tools): tests/change_maps.rs builds thin-pool
# metadata with thin_restore and reads the change map thin_delta prints for it.
if ! command -v thin_delta >/dev/null 2>&1 && ! [ -x /usr/sbin/thin_delta ]; then
  echo "== installing thin-provisioning-tools (change-map tests) from Debian"
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends thin-provisioning-tools >/dev/null
fi
export PATH="$PATH:/usr/sbin"
cargo test --locked "$@"

# The Python package: built with maturin into a venv, then its tests (pytest), then the Cinder
# driver under a stock Cinder 29 backup manager (Cinder's TestCase runs under unittest).
venv="$(bash scripts/python-env.sh | tail -n 1)"
"$venv/bin/python" -m pytest -q tests/python
"$venv/bin/python" -m unittest discover -s tests/cinder -t tests/cinder
