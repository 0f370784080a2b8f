#!/usr/bin/env bash
# Identity benchmarks (issue 2): X509-SVID minting rate, JWT-/X509-SVID fetch
# latency over the Workload API socket at 1 and 8 clients, RSS of `keyless up`
# idle and with 1,000 registration entries. Loopback only, bounded durations.
#
#   bench/identity.sh [SECONDS_PER_RUN]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
secs=${1:-10}

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo build --release -q -p keyless --bin keyless --example workload_load
bin=$target/release/keyless
load=$target/release/examples/workload_load

echo "== X509-SVID / JWT-SVID minting (criterion, in-process, one core)"
cargo bench -q -p keyless-identity --bench mint 2>&1 | grep -E "^[a-z_/ 0-9-]+time:|time:" || true

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" up --data-dir "$dir" --listen "127.0.0.1:$port" > "$dir/up.log" 2> "$dir/up.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q '^ready' "$dir/up.log" && break; sleep 0.1; done
grep -q '^ready' "$dir/up.log" || { echo "keyless up did not become ready"; cat "$dir/up.err"; exit 1; }
rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' /proc/$pid/status; }
echo "== RSS idle: $(rss)"

"$bin" entry create --data-dir "$dir" --spiffe-id spiffe://keyless.local/bench --selector "unix:uid:$(id -u)" > /dev/null
sock="unix://$dir/workload.sock"
for kind in jwt x509; do
  for c in 1 8; do
    echo "== Workload API $kind fetch, $c client(s), ${secs}s: $("$load" "$sock" "$kind" "$c" "$secs")"
  done
done

echo "== creating 1,000 registration entries through the admin socket"
for i in $(seq 1 1000); do
  curl -s --unix-socket "$dir/admin.sock" -H 'content-type: application/json' \
    -d "{\"spiffe_id\":\"spiffe://keyless.local/bench/$i\",\"selectors\":[\"unix:uid:$((100000 + i))\"]}" \
    http://keyless-admin/v1/entries > /dev/null
done
echo "== entries: $("$bin" entry list --data-dir "$dir" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
echo "== RSS with 1,000 entries: $(rss)"
echo "== Workload API jwt fetch with 1,001 entries, 8 clients: $("$load" "$sock" jwt 8 "$secs")"
echo "== RSS after load: $(rss)"
