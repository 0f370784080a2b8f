#!/usr/bin/env bash
# Secrets broker vs OpenBao (issue 5), side by side: same machine, same run,
# same load tool (wrk), both servers started here, configured the same way by
# bench/secrets_prepare.py (JWT-SVID login to a policy-bound service token,
# one KV v2 secret, one PostgreSQL database role per side with its own
# managing role on the same local PostgreSQL).
#
#   1. KV v2 read (GET /v1/secret/data/bench/item), wrk -t1 -c2 and -t2 -c4.
#   2. Dynamic PostgreSQL credentials (GET /v1/database/creds/bench), wrk
#      -t1 -c2 for min(SECONDS, 5) s each; then revoke-prefix on both sides.
#   3. Mass revocation: 1,000 database leases per side, then one timed
#      PUT /v1/sys/leases/revoke-prefix/database/creds/bench on each.
#   4. VmRSS of both servers idle and after the runs.
# Loopback only, bounded durations, every process stopped and every
# PostgreSQL role created by the run dropped on exit (leftovers reported).
#
#   bench/secrets.sh [SECONDS]        (default 10 per KV wrk run)
#
# KEYLESS_BIN=PATH uses that binary instead of building target/release/keyless.
# KEYLESS_BENCH_PERF=DIR records perf profiles of keyless (KV and creds runs).
# KEYLESS_BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test)
# must be a superuser URL; the run creates and drops roles bench_*_SUFFIX.
# Needs target/venv and target/openbao/bao (run ./scripts/test once), wrk, psql.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
secs=${1:-10}
creds_secs=$((secs < 5 ? secs : 5))
mass=1000
identities=8
py=$PWD/target/venv/bin/python
bao=$PWD/target/openbao/bao
pg=${KEYLESS_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
pg_where=${pg#*@}

[ -x "$py" ] || { echo "no $py: run ./scripts/test once (it creates the venv)"; exit 1; }
[ -x "$bao" ] || { echo "no $bao: run ./scripts/test once (it installs OpenBao)"; exit 1; }
command -v psql >/dev/null || { echo "psql not found: apt-get install postgresql-client"; exit 1; }
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then timeout 300 apt-get install -y -q wrk >/dev/null; fi
  command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk"; exit 1; }
fi
sql() { psql "$pg" -v ON_ERROR_STOP=1 -Atqc "$1" < /dev/null; }
sql 'SELECT 1' >/dev/null || { echo "PostgreSQL unreachable at $pg"; exit 1; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $(sql 'SELECT version()' | cut -d, -f1)"
if [ -n "${KEYLESS_BIN:-}" ]; then
  bin=$KEYLESS_BIN
else
  # Another build may hold the target dir: cargo waits for its lock.
  cargo build --release -q -p keyless
  case $target in /*) bin=$target/release/keyless ;; *) bin=$PWD/$target/release/keyless ;; esac
fi
echo "== keyless binary $bin (built $(date -u -r "$bin" '+%F %T') UTC)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir=$(mktemp -d)
suffix=$(python3 -c 'import secrets; print(secrets.token_hex(4))')
group=bench_readers_$suffix kmgr=bench_kl_mgr_$suffix bmgr=bench_bao_mgr_$suffix
kpid= bpid= perf_pid=
# Every role this run may have created: the three above and every member of
# the group (each credential either side issues is GRANTed the group).
ours="SELECT m.rolname FROM pg_auth_members a JOIN pg_roles m ON m.oid = a.member
      JOIN pg_roles g ON g.oid = a.roleid WHERE g.rolname = '$group'"
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ] && [ -d "$dir" ]; then
    echo "== exit $rc; last server log lines:"
    tail -n 15 "$dir/up.err" "$dir/bao.log" 2>/dev/null | cut -c1-400 || true
  fi
  for p in $kpid $bpid; do kill "$p" 2>/dev/null || true; done
  for p in $kpid $bpid; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  local left
  left=$(sql "SELECT count(*) FROM ($ours) x" 2>/dev/null || echo '?')
  sql "DO \$\$ DECLARE r record; BEGIN FOR r IN $ours LOOP
         EXECUTE format('DROP ROLE IF EXISTS %I', r.rolname); END LOOP; END \$\$;
       DROP ROLE IF EXISTS $group, $kmgr, $bmgr" >/dev/null 2>&1 || true
  local after
  after=$(sql "SELECT string_agg(rolname, ' ') FROM pg_roles WHERE rolname LIKE '%\\_$suffix'
               OR rolname IN ($ours)" 2>/dev/null || echo '?')
  echo "== cleanup: dropped $left credential roles still present at exit and the run's 3 roles;" \
    "pg_roles leftovers: ${after:-none}"
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sql "CREATE ROLE $group NOLOGIN;
     CREATE ROLE $kmgr LOGIN CREATEROLE PASSWORD 'initial-$suffix';
     CREATE ROLE $bmgr LOGIN CREATEROLE PASSWORD 'initial-$suffix'"

rss() { awk '/VmRSS/ {printf "%.1f MB", $2/1024}' "/proc/$1/status"; }

# --- Keyless -----------------------------------------------------------------
kport=$(free_port)
base=http://127.0.0.1:$kport
env -u SPIFFE_ENDPOINT_SOCKET "$bin" up --data-dir "$dir/data" --listen "127.0.0.1:$kport" \
  --trust-domain example.org > "$dir/up.log" 2> "$dir/up.err" &
kpid=$!
for _ in $(seq 1 300); do grep -q '^ready' "$dir/up.log" && break; sleep 0.1; done
grep -q '^ready' "$dir/up.log" || { echo "keyless up did not become ready"; tail -20 "$dir/up.err"; exit 1; }
k_idle=$(rss $kpid)
echo "== keyless up on $base (pid $kpid), RSS idle $k_idle"

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
b_idle=$(rss $bpid)
echo "== $("$bao" version | head -n1) on $bao_url (pid $bpid), RSS idle $b_idle"

env -u SPIFFE_ENDPOINT_SOCKET "$py" bench/secrets_prepare.py setup "$bin" "$dir/data" "$base" "$bao_url" "$dir" \
  "postgres://$kmgr:initial-$suffix@$pg_where" "$bmgr" "initial-$suffix" "$pg_where" "$group" "$identities"
ktok=$(head -n1 "$dir/keyless.tokens") btok=$(head -n1 "$dir/bao.tokens")

# --- load: wrk --------------------------------------------------------------------
# Database creds: the workloads' tokens round-robin (Keyless caps live leases
# per identity at 1,000; OpenBao gets the same requests).
creds_lua() { # TOKENFILE -> script path
  local s=$dir/$(basename "$1").lua
  cat > "$s" <<EOF
local tokens = {}
for line in io.lines("$1") do if #line > 0 then tokens[#tokens + 1] = line end end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", nil, { ["X-Vault-Token"] = tokens[i] })
end
EOF
  echo "$s"
}
# wrk prints latencies as 812.00us / 1.23ms / 1.02s: normalise to ms.
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) ; else if (v ~ /m$/) n*=60000; else if (v ~ /s$/) n*=1000; printf "%.2f", n }'; }
rows=()
declare -A rate
run() { # LABEL THREADS CONNS SECONDS URL WRK-ARGS...
  local label=$1 t=$2 c=$3 d=$4 url=$5 out rps p50 p99 bad total errs
  shift 5
  out=$(wrk -t"$t" -c"$c" -d"${d}s" --latency "$@" "$url")
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); bad=${bad:-0}
  errs=$(awk '/Socket errors/ {print $0}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  rate["$label -t$t -c$c"]=$rps
  rows+=("| $label | -t$t -c$c ${d}s | $(printf "%'.0f" "$rps") | $p50 ms | $p99 ms | $total | $bad |")
  echo "== $label, wrk -t$t -c$c ${d}s: $rps req/s, p50 $p50 ms, p99 $p99 ms, $total requests, non-2xx $bad ${errs:+($errs)}"
}
# KEYLESS_BENCH_PERF=DIR: CPU profiles (perf record -g) of keyless during
# its KV -t1 -c2 and database creds runs, DIR/{kv,creds}.perf.data.
perf_start() { # NAME SECONDS
  [ -n "${KEYLESS_BENCH_PERF:-}" ] || return 0
  mkdir -p "$KEYLESS_BENCH_PERF"
  perf record -q -g -o "$KEYLESS_BENCH_PERF/$1.perf.data" -p "$kpid" -- sleep "$2" >/dev/null 2>&1 &
  perf_pid=$!
}
perf_wait() { [ -z "$perf_pid" ] || wait "$perf_pid" || true; perf_pid=; }
kv=secret/data/bench/item
for tc in "1 2" "2 4"; do
  set -- $tc
  [ "$1" != 1 ] || perf_start kv "$secs"
  run "Keyless KV v2 read" "$1" "$2" "$secs" "$base/v1/$kv" -H "X-Vault-Token: $ktok"
  perf_wait
  run "OpenBao KV v2 read" "$1" "$2" "$secs" "$bao_url/v1/$kv" -H "X-Vault-Token: $btok"
done

members() { sql "SELECT count(*) FROM ($ours) x WHERE rolname $1"; }
kl_like="LIKE 'kl\\_%'" bao_like="NOT LIKE 'kl\\_%'"
# OpenBao first: PostgreSQL's catalog grows with every role created and
# dropped, so going second is not an advantage.
run "OpenBao database creds" 1 2 "$creds_secs" "$bao_url/v1/database/creds/bench" -s "$(creds_lua "$dir/bao.tokens")"
perf_start creds "$creds_secs"
run "Keyless database creds" 1 2 "$creds_secs" "$base/v1/database/creds/bench" -s "$(creds_lua "$dir/keyless.tokens")"
perf_wait
echo "== PostgreSQL login roles now issued: Keyless $(members "$kl_like"), OpenBao $(members "$bao_like")"

# --- revoke-prefix -----------------------------------------------------------------------
declare -A took code
revoke_prefix() { # NAME URL ADMIN-TOKEN-FILE
  local res
  res=$(curl -s -o "$dir/revoke.out" -w '%{http_code} %{time_total}' --max-time 600 -X PUT \
    -H "X-Vault-Token: $(cat "$3")" "$2/v1/sys/leases/revoke-prefix/database/creds/bench")
  code[$1]=${res% *} took[$1]=${res#* }
  case ${code[$1]} in
    200|204) ;;
    *) echo "== $1 revoke-prefix answered ${code[$1]} after ${took[$1]} s: $(head -c 300 "$dir/revoke.out")" ;;
  esac
}
declare -A clean
wait_clean() { # NAME LIKE TARGET: seconds from now until the side's roles are down to TARGET (max 120 s)
  local start=$EPOCHREALTIME n
  for _ in $(seq 1 1200); do
    n=$(members "$2")
    [ "$n" -le "$3" ] && break
    sleep 0.1
  done
  clean[$1]=$(awk -v a="$start" -v b="$EPOCHREALTIME" -v n="$n" -v t="$3" 'BEGIN { if (n > t) print "not within 120"; else printf "%.2f", b - a }')
}
leases_left() { # -> "keyless N, openbao M" (the servers' own lease counts)
  local k b
  k=$(curl -sf "$base/metrics" | awk '/^keyless_secrets_leases\{engine="database"\}/ {n=$2} END {print n+0}') || k='?'

  b=$(curl -s -X LIST -H 'X-Vault-Token: root' "$bao_url/v1/sys/leases/lookup/database/creds/bench/" \
    | "$py" -c 'import json,sys; d=json.load(sys.stdin); print(len((d.get("data") or {}).get("keys") or []))')
  echo "Keyless $k, OpenBao $b"
}
before_k=$(members "$kl_like") before_b=$(members "$bao_like")
revoke_prefix keyless "$base" "$dir/keyless.admin"
revoke_prefix openbao "$bao_url" "$dir/bao.admin"
# A failed revocation stays queued and is retried: wait for that, bounded,
# but only as long as leases remain (unleased roles never go).
for _ in $(seq 1 600); do case "$(leases_left)" in "Keyless 0, OpenBao 0") break ;; esac; sleep 0.2; done
orphans_k=$(members "$kl_like") orphans_b=$(members "$bao_like")
echo "== revoke-prefix after the creds runs: Keyless $before_k roles in ${took[keyless]} s (${code[keyless]})," \
  "OpenBao $before_b roles in ${took[openbao]} s (${code[openbao]});" \
  "left in PostgreSQL: Keyless $orphans_k, OpenBao $orphans_b; leases left: $(leases_left)"
# A role left behind with no lease left is a credential nothing will revoke
# (only its VALID UNTIL ends it): say so.
[ "$orphans_k$orphans_b" = 00 ] || echo "== WARNING: PostgreSQL roles issued without a surviving lease:" \
  "Keyless $orphans_k, OpenBao $orphans_b (requests cut off when wrk stopped; see RESULTS.md)"

# --- mass revocation: 1,000 database leases per side ---------------------------------------
# Roles already there (credentials without a lease, see above) stay out of the count.
pre_k=$(members "$kl_like") pre_b=$(members "$bao_like")
made=$("$py" bench/secrets_prepare.py leases "$base" "$bao_url" "$dir" "$mass")
echo "$made" | sed 's/^/== /'
made_k=$(($(members "$kl_like") - pre_k)) made_b=$(($(members "$bao_like") - pre_b))
echo "== PostgreSQL login roles issued: Keyless $made_k, OpenBao $made_b; leases: $(leases_left)"
[ "$made_k" = "$mass" ] && [ "$made_b" = "$mass" ] || { echo "expected $mass new roles per side"; exit 1; }
revoke_prefix keyless "$base" "$dir/keyless.admin"
wait_clean keyless "$kl_like" "$orphans_k"
revoke_prefix openbao "$bao_url" "$dir/bao.admin"
wait_clean openbao "$bao_like" "$orphans_b"
left_k=$(members "$kl_like") left_b=$(members "$bao_like")
left_leases=$(leases_left)
echo "== revoke-prefix of $mass leases: Keyless ${took[keyless]} s (${code[keyless]}; all $mass roles gone" \
  "${clean[keyless]} s after it returned), OpenBao ${took[openbao]} s (${code[openbao]}; ${clean[openbao]} s after);" \
  "left in PostgreSQL: Keyless $left_k, OpenBao $left_b; leases left: $left_leases"

# --- summary ---------------------------------------------------------------------------------
k_after=$(rss $kpid) b_after=$(rss $bpid)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a/b }'; }
echo
echo "| operation | wrk | req/s | p50 | p99 | requests | non-2xx |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
for tc in "-t1 -c2" "-t2 -c4"; do
  echo "ratio ($tc) KV v2 read Keyless / OpenBao: $(ratio "${rate["Keyless KV v2 read $tc"]}" "${rate["OpenBao KV v2 read $tc"]}")"
done
echo "ratio (-t1 -c2) database creds Keyless / OpenBao: $(ratio "${rate["Keyless database creds -t1 -c2"]}" "${rate["OpenBao database creds -t1 -c2"]}")"
echo "revoke-prefix of $mass database leases: Keyless ${took[keyless]} s (HTTP ${code[keyless]}, +${clean[keyless]} s until every role was gone)," \
  "OpenBao ${took[openbao]} s (HTTP ${code[openbao]}, +${clean[openbao]} s)" \
  "; PostgreSQL roles left: Keyless $left_k, OpenBao $left_b" \
  "(of which unleased since the creds runs: Keyless $orphans_k, OpenBao $orphans_b)"
# Goals are judged on the unrounded rates (never rounded in our favour).
goal() { # KEYLESS-RATE OPENBAO-RATE FACTOR
  awk -v a="$1" -v b="$2" -v g="$3" 'BEGIN { print (a >= g * b) ? "met" : "NOT met" }'
}
kv1=$(goal "${rate["Keyless KV v2 read -t1 -c2"]}" "${rate["OpenBao KV v2 read -t1 -c2"]}" 2)
kv2=$(goal "${rate["Keyless KV v2 read -t2 -c4"]}" "${rate["OpenBao KV v2 read -t2 -c4"]}" 2)
db1=$(goal "${rate["Keyless database creds -t1 -c2"]}" "${rate["OpenBao database creds -t1 -c2"]}" 2)
echo "goal KV v2 read >= 2x: -t1 -c2 $kv1, -t2 -c4 $kv2"
echo "goal database creds >= 2x: $db1"
case ${code[keyless]} in
  200|204) echo "goal revoke-prefix of $mass <= 1 s: $(awk -v t="${took[keyless]}" 'BEGIN { print (t <= 1.0) ? "met" : "NOT met" }')" ;;
  *) echo "goal revoke-prefix of $mass <= 1 s: NOT met (the call failed: HTTP ${code[keyless]})" ;;
esac
echo "RSS (VmRSS) idle: keyless $k_idle, bao $b_idle; after the run: keyless $k_after, bao $b_after"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
