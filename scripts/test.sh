#!/usr/bin/env bash
# Runs every test: unit, integration (filesystem), CLI and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked "$@"
