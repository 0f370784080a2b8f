#!/usr/bin/env bash
# Audit-log benchmarks (issue 3): durable appends/s with group commit on
# SQLite, inclusion/consistency proof generation and verification at
# 1,000,000 entries, bytes stored per event, and `verify` over N stored
# entries (KEYLESS_BENCH_VERIFY_N, default 100,000; 1,000,000 for the record).
#
#   bench/audit.sh            # quick
#   KEYLESS_BENCH_VERIFY_N=1000000 bench/audit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo bench -p keyless-audit --bench log 2>&1 | grep -vE "^(Benchmarking|Gnuplot|Warning|\s*$)"
