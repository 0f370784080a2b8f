#!/usr/bin/env bash
# The MCP gateway's added latency (issue 6), side by side in one run: a
# tier-1 `tools/call` of directory.list_applications through the gateway's
# full pipeline (agent JWT-SVID + user token authentication with a live
# session, pin check, limits, RFC 8693 exchange with RAR + Cedar + consent,
# the upstream's own token verification and single-use consumption, audit)
# vs the same call sent straight to the demo upstream with an OBO token
# minted beforehand (its verification and consumption included).
# Same machine, same load tool (wrk, one thread), loopback only.
#
#   bench/gateway.sh [SECONDS]        (default 10 per wrk run)
#
# Needs target/venv (run ./scripts/test once) and wrk (Debian package `wrk`,
# installed here when missing and root).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
secs=${1:-10}
py=$PWD/target/venv/bin/python
agent=spiffe://example.org/agent/bench

[ -x "$py" ] || { echo "no $py: run ./scripts/test once (it creates the venv)"; exit 1; }
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then timeout 300 apt-get install -y -q wrk >/dev/null; fi
  command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk"; exit 1; }
fi

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
cargo build --release -q -p keyless
case $target in /*) bin=$target/release/keyless ;; *) bin=$PWD/$target/release/keyless ;; esac

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
kpid=
cleanup() {
  if [ -n "$kpid" ]; then
    kill "$kpid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$kpid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$kpid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

kport=$(free_port)
base=http://127.0.0.1:$kport
# The demo catalog, with the loop breaker out of the way: the load repeats
# one identical call thousands of times, which it would (rightly) stop.
sed "s|{base}|$base|g" crates/keyless-gateway/demo.toml > "$dir/gateway.toml"
printf '\n[limits]\nloop_max_repeats = 100000000\n' >> "$dir/gateway.toml"
env -u SPIFFE_ENDPOINT_SOCKET "$bin" up --data-dir "$dir/data" --listen "127.0.0.1:$kport" \
  --trust-domain example.org --gateway-config "$dir/gateway.toml" > "$dir/up.log" 2> "$dir/up.err" &
kpid=$!
for _ in $(seq 1 300); do grep -q '^ready' "$dir/up.log" && break; sleep 0.1; done
grep -q '^ready' "$dir/up.log" || { echo "keyless up did not become ready"; tail -20 "$dir/up.err"; exit 1; }
rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$1/status"; }
echo "== keyless up on $base (pid $kpid), RSS idle $(rss "$kpid")"
password=$(awk '$1 == "alice@example.com" {print $2}' "$dir/up.log")
env -u SPIFFE_ENDPOINT_SOCKET "$py" bench/gateway_prepare.py "$bin" "$dir/data" "$base" "$agent" "$password" "$dir"

# wrk: POST the body with the given header lines; a reply that is not a
# successful tool result (JSON-RPC error or isError) counts as bad.
lua() { # BODYFILE HEADERFILE [TOKENFILE] -> script path
  local s=$dir/$(basename "$1")-$RANDOM.lua
  cat > "$s" <<EOF
local f = assert(io.open("$1", "rb")); local body = f:read("*a"); f:close()
local headers = { ["Content-Type"] = "application/json",
  ["Accept"] = "application/json, text/event-stream", ["MCP-Protocol-Version"] = "2025-06-18" }
for line in io.lines("$2") do
  local k, v = line:match("^([^:]+):%s*(.*)$"); if k then headers[k] = v end
end
local tokens, n = {}, 0
if "$3" ~= "" then for t in io.lines("$3") do tokens[#tokens + 1] = t end end
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function request()
  if #tokens > 0 then
    n = n + 1; headers["Authorization"] = "Bearer " .. tokens[((n - 1) % #tokens) + 1]
  end
  return wrk.format("POST", nil, headers, body)
end
function response(status, hdrs, b)
  if status ~= 200 or not b:find('"result"', 1, true) or b:find('"isError":true', 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write("BAD " .. total .. "\n")
end
EOF
  echo "$s"
}
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) ; else if (v ~ /m$/) n*=60000; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'; }
rows=()
declare -A p50s rates
run() { # LABEL URL BODY HEADERS TOKENS CONNS
  local out rps p50 p99 bad total
  out=$(wrk -t1 -c"$6" -d"${secs}s" --latency -s "$(lua "$3" "$4" "$5")" "$2")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  bad=$(awk '$1=="BAD" {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  p50s["$1 $6"]=$p50; rates["$1 $6"]=$rps
  rows+=("| $1 | -c$6 | $(printf "%'.0f" "$rps") | $p50 ms | $p99 ms | $total | $bad |")
  echo "== $1, wrk -t1 -c$6 ${secs}s: $rps calls/s, p50 $p50 ms, p99 $p99 ms, $total calls, bad $bad"
}

: > "$dir/none.headers"
for c in 2 8; do
  # Fresh single-use tokens for the direct run: more than it can spend at
  # ~3,000 calls/s (a replayed token counts as a failed call), but not many
  # more: tier-1 OBO tokens live 60 s, minting takes a while, and an expired
  # token would count as a failed call too.
  "$py" bench/gateway_prepare.py mint "$base" "$dir" $(( 3500 * secs )) "$dir/tokens"
  run "direct to the demo upstream (pre-minted OBO token)" "$base/demo/directory/mcp" \
    "$dir/direct.body" "$dir/none.headers" "$dir/tokens" "$c"
  run "through the gateway (full pipeline)" "$base/mcp" "$dir/gateway.body" "$dir/gateway.headers" "" "$c"
done
echo "== RSS after the runs: $(rss "$kpid")"

echo
echo "| path | conns | calls/s | p50 | p99 | calls | bad |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
for c in 2 8; do
  d=${p50s["direct to the demo upstream (pre-minted OBO token) $c"]}
  g=${p50s["through the gateway (full pipeline) $c"]}
  echo "-c$c: added p50 $(awk -v g="$g" -v d="$d" 'BEGIN {printf "%.2f", g-d}') ms; gateway ${rates["through the gateway (full pipeline) $c"]} calls/s (goal: <= 1 ms added p50, >= 1,500 calls/s)"
done
