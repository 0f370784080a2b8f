#!/usr/bin/env bash
# Token exchange vs OpenBao JWT login (issue 4), side by side: same machine,
# same run, same load tool (wrk). Keyless: RFC 8693 token exchange at
# POST /oauth2/token (user access token + agent JWT-SVID actor token, tier-1
# directory_read detail, resource `directory`: RAR + Cedar + consent + ES256
# signing + durable audit). OpenBao: POST /v1/auth/jwt/login with a JWT-SVID
# validated through Keyless's /spiffe OIDC discovery, service and batch tokens.
# Loopback only, bounded durations, every process stopped on exit.
#
#   bench/sts.sh [SECONDS]        (default 10 per wrk run)
#
# Needs target/venv and target/openbao/bao: run ./scripts/test once first.
# Needs wrk (Debian package `wrk`; installed here when missing and root).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
secs=${1:-10}
py=$PWD/target/venv/bin/python
bao=$PWD/target/openbao/bao
agent=spiffe://example.org/agent/bench

[ -x "$py" ] || { echo "no $py: run ./scripts/test once (it creates the venv)"; exit 1; }
[ -x "$bao" ] || { echo "no $bao: run ./scripts/test once (it installs OpenBao)"; exit 1; }
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then timeout 300 apt-get install -y -q wrk >/dev/null; fi
  command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk"; exit 1; }
fi

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Another build may hold the target dir: cargo waits for its lock.
cargo build --release -q -p keyless
case $target in /*) bin=$target/release/keyless ;; *) bin=$PWD/$target/release/keyless ;; esac

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
kpid= bpid=
cleanup() {
  for p in $kpid $bpid; do kill "$p" 2>/dev/null || true; done
  for p in $kpid $bpid; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Keyless -----------------------------------------------------------------
kport=$(free_port)
base=http://127.0.0.1:$kport
env -u SPIFFE_ENDPOINT_SOCKET "$bin" up --data-dir "$dir/data" --listen "127.0.0.1:$kport" \
  --trust-domain example.org > "$dir/up.log" 2> "$dir/up.err" &
kpid=$!
for _ in $(seq 1 300); do grep -q '^ready' "$dir/up.log" && break; sleep 0.1; done
grep -q '^ready' "$dir/up.log" || { echo "keyless up did not become ready"; tail -20 "$dir/up.err"; exit 1; }
rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$1/status"; }
echo "== keyless up on $base (pid $kpid), RSS idle $(rss $kpid)"

env -u SPIFFE_ENDPOINT_SOCKET "$py" bench/sts_prepare.py "$bin" "$dir/data" "$base" "$agent" "$dir"
bao_jwt=$(env -u SPIFFE_ENDPOINT_SOCKET "$bin" svid fetch --audience openbao --data-dir "$dir/data")

# --- OpenBao -------------------------------------------------------------------
bport=$(free_port)
bao_url=http://127.0.0.1:$bport
mkdir -p "$dir/bao-home"
env -u VAULT_ADDR -u VAULT_TOKEN -u BAO_ADDR -u BAO_TOKEN HOME="$dir/bao-home" \
  "$bao" server -dev -dev-root-token-id=root -dev-listen-address="127.0.0.1:$bport" -dev-no-store-token \
  > "$dir/bao.log" 2>&1 < /dev/null &
bpid=$!
for _ in $(seq 1 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$bao_url/v1/sys/health")" = 200 ] && break; sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$bao_url/v1/sys/health")" = 200 ] \
  || { echo "OpenBao did not become healthy"; tail -20 "$dir/bao.log"; exit 1; }
echo "== $("$bao" version | head -n1) on $bao_url (pid $bpid), RSS idle $(rss $bpid)"
bao_call() { # METHOD PATH JSON
  local code
  code=$(curl -s -o "$dir/bao.out" -w '%{http_code}' -X "$1" -H 'X-Vault-Token: root' \
    -H 'content-type: application/json' -d "$3" "$bao_url/v1/$2")
  case $code in 200|204) ;; *) echo "OpenBao $1 $2: $code $(cat "$dir/bao.out")"; exit 1 ;; esac
}
bao_call POST sys/auth/jwt '{"type":"jwt"}'
bao_call POST auth/jwt/config "{\"oidc_discovery_url\":\"$base/spiffe\"}"
for role in service batch; do
  bao_call POST "auth/jwt/role/agent-$role" "{\"role_type\":\"jwt\",\"bound_audiences\":[\"openbao\"],
    \"user_claim\":\"sub\",\"bound_subject\":\"$agent\",\"token_policies\":[\"default\"],
    \"token_ttl\":\"5m\",\"token_type\":\"$role\"}"
  printf '{"role":"agent-%s","jwt":"%s"}' "$role" "$bao_jwt" > "$dir/login-$role.body"
done

# --- one request each, checked ---------------------------------------------------
once() { # NAME URL BODYFILE CONTENT-TYPE
  local code
  code=$(curl -s -o "$dir/once.out" -w '%{http_code}' -H "content-type: $4" --data-binary "@$3" "$2")
  [ "$code" = 200 ] || { echo "$1: $code $(head -c 600 "$dir/once.out")"; return 1; }
}
form=application/x-www-form-urlencoded
once "token exchange" "$base/oauth2/token" "$dir/exchange.body" $form || exit 1
for role in service batch; do
  once "OpenBao JWT login ($role)" "$bao_url/v1/auth/jwt/login" "$dir/login-$role.body" application/json || exit 1
done
echo "== each request returns 200 once"

# --- load: wrk, fixed POST body ------------------------------------------------------
lua() { # BODYFILE CONTENT-TYPE -> script path
  local s=$dir/$(basename "$1").lua
  cat > "$s" <<EOF
local f = assert(io.open("$1", "rb")); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "$2"
EOF
  echo "$s"
}
# wrk prints latencies as 812.00us / 1.23ms / 1.02s: normalise to ms.
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) ; else if (v ~ /m$/) n*=60000; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'; }
rows=()
declare -A rate
declare -A served
run() { # LABEL URL BODYFILE CONTENT-TYPE THREADS CONNS
  local out rps p50 p99 bad
  out=$(wrk -t"$5" -c"$6" -d"${secs}s" --latency -s "$(lua "$3" "$4")" "$2")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); bad=${bad:-0}
  local total; total=$(awk '/requests in/ {print $1}' <<<"$out")
  rate["$1 -t$5 -c$6"]=$rps
  served["$2"]=$(( ${served["$2"]:-0} + total ))
  rows+=("| $1 | -t$5 -c$6 | $(printf "%'.0f" "$rps") | $p50 ms | $p99 ms | $total | $bad |")
  echo "== $1, wrk -t$5 -c$6 ${secs}s: $rps req/s, p50 $p50 ms, p99 $p99 ms, $total requests, non-2xx $bad"
}
for tc in "1 2" "2 4"; do
  set -- $tc
  run "Keyless token exchange" "$base/oauth2/token" "$dir/exchange.body" $form "$1" "$2"
  run "OpenBao JWT login, service token" "$bao_url/v1/auth/jwt/login" "$dir/login-service.body" application/json "$1" "$2"
  run "OpenBao JWT login, batch token" "$bao_url/v1/auth/jwt/login" "$dir/login-batch.body" application/json "$1" "$2"
done

# Memory: keep both servers busy until each has served 100,000 requests
# (exchanges; service-token logins), then read their RSS.
grow() { # URL BODYFILE CONTENT-TYPE
  local out total
  while [ "${served["$1"]:-0}" -lt 100000 ]; do
    out=$(wrk -t2 -c4 -d10s -s "$(lua "$2" "$3")" "$1")
    total=$(awk '/requests in/ {print $1}' <<<"$out")
    [ "${total:-0}" -gt 0 ] || { echo "no progress on $1"; break; }
    served["$1"]=$(( ${served["$1"]:-0} + total ))
  done
}
grow "$base/oauth2/token" "$dir/exchange.body" $form
grow "$bao_url/v1/auth/jwt/login" "$dir/login-service.body" application/json
echo "== RSS after ${served["$base/oauth2/token"]} Keyless exchanges: $(rss $kpid); after ${served["$bao_url/v1/auth/jwt/login"]} OpenBao logins (service and batch): $(rss $bpid)"

# Still accepted after the load? (user access tokens last 10 minutes; rate limits)
if once "token exchange after the load" "$base/oauth2/token" "$dir/exchange.body" $form; then
  echo "== token exchange still returns 200 after the load"
fi

echo
echo "| operation | wrk | req/s | p50 | p99 | requests | non-2xx |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
for tc in "-t1 -c2" "-t2 -c4"; do
  k=${rate["Keyless token exchange $tc"]}
  for kind in service batch; do
    o=${rate["OpenBao JWT login, $kind token $tc"]}
    echo "ratio ($tc) Keyless exchange / OpenBao $kind login: $(awk -v a="$k" -v b="$o" 'BEGIN { printf "%.2f×", a/b }')"
  done
done
echo "RSS after the run: keyless $(rss $kpid), bao $(rss $bpid)"
