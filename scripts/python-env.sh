#!/usr/bin/env bash
# Makes the Python environment the tests and linters use: a venv (default target/venv, or
# $VOLBACK_VENV) with maturin, pytest, ruff and mypy from PyPI, a stock Cinder 29 with the
# packages its own unit tests need and boto3 for its S3 driver (the driver is tested on Cinder's backup-manager test base),
# and the `volback` package built from crates/volback-python and installed into it. Safe to run
# again: it rebuilds the package.
# Prints the venv's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VOLBACK_VENV:-$PWD/target/venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv" >&2
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  'maturin>=1.16,<2' 'pytest>=8' 'ruff>=0.8' 'mypy>=1.13' \
  'cinder==29.0.0' fixtures testtools ddt oslotest boto3
echo "== building the volback Python package (maturin)" >&2
rm -rf target/wheels
(cd crates/volback-python && "$venv/bin/maturin" build --quiet -o ../../target/wheels) >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps \
  target/wheels/volback-*.whl
echo "$venv"
