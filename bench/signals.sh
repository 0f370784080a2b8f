#!/usr/bin/env bash
# Shared Signals (issue 7): W5 decision → revocation at two receivers (a
# Python push endpoint verifying with PyJWT, and a second `keyless up`),
# p50/p99 over RUNS ladders; SETs/s through push and through poll (N each).
# Two real `keyless up` processes on loopback; see bench/signals.py.
#
#   bench/signals.sh [RUNS] [N]      (default 20 runs, 2000 SETs)
#
# Needs target/venv (run ./scripts/test once).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
py=$PWD/target/venv/bin/python
[ -x "$py" ] || { echo "no $py: run ./scripts/test once (it creates the venv)"; exit 1; }
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo build --release -q -p keyless
case $target in /*) bin=$target/release/keyless ;; *) bin=$PWD/$target/release/keyless ;; esac
exec env -u SPIFFE_ENDPOINT_SOCKET "$py" bench/signals.py "$bin" "${1:-20}" "${2:-2000}"
