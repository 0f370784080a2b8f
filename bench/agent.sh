#!/usr/bin/env bash
# Agent host and console (issue 8): `keyless up` start → `ready` on a new
# and on an existing data dir, RSS idle, and RSS after N chat turns with the
# scripted model through /api/chat (each turn: a tool call through the
# gateway with a token exchange, the answer streamed over SSE).
#
#   bench/agent.sh [TURNS] [STARTS]     (default 1000 turns, 5 starts each)
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
exec env -u SPIFFE_ENDPOINT_SOCKET "$py" bench/agent.py "$bin" "${1:-1000}" "${2:-5}"
