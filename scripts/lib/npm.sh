# shellcheck shell=bash
# Node packages the interop tests drive (tests/interop/package.json: the MCP
# Inspector CLI, the MCP conformance suite and a Node 22 binary for them).
# Sourced, not executed; returns non-zero on failure and says why on stderr,
# so the caller decides whether that fails the run (test_gateway.py skips
# the Node clients when they are missing, and says so).

# Seconds `npm ci` may take: a cold cache downloads ~330 MB (half of it the
# Node binary); a hung registry must not hang CI.
NPM_CI_TIMEOUT=${NPM_CI_TIMEOUT:-600}

# Runs `npm ci --no-audit --no-fund` in $1 when its node_modules is missing
# or older than its package-lock.json: a stamp in node_modules holds the
# lock's hash (mtimes lie after a fresh checkout), so an unchanged lock costs
# nothing. Then checks that the Node binary from the `node` package runs
# (its preinstall script fetches it; a blocked install script leaves none).
ensure_npm_packages() {
    local dir=$1
    local lock=$dir/package-lock.json stamp=$dir/node_modules/.keyless-lock.sha256
    if ! command -v npm >/dev/null 2>&1; then
        echo "npm packages in $dir not installed: npm not found (install Node.js with npm)" >&2
        return 1
    fi
    if [ ! -f "$lock" ]; then
        echo "npm packages in $dir not installed: no package-lock.json" >&2
        return 1
    fi
    local want have="" why=""
    want=$(sha256sum "$lock" | cut -d' ' -f1)
    [ -f "$stamp" ] && have=$(cat "$stamp")
    if [ ! -d "$dir/node_modules" ]; then
        why="node_modules is missing"
    elif [ "$want" != "$have" ]; then
        why="node_modules is older than package-lock.json"
    fi
    if [ -n "$why" ]; then
        echo "npm ci in $dir: $why"
        local log rc=0
        log=$(mktemp)
        (cd "$dir" && timeout --kill-after=30 "$NPM_CI_TIMEOUT" npm ci --no-audit --no-fund </dev/null) >"$log" 2>&1 || rc=$?
        if [ "$rc" -ne 0 ]; then
            if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
                echo "npm ci in $dir timed out after ${NPM_CI_TIMEOUT} s; its last lines:" >&2
            else
                echo "npm ci in $dir failed (exit $rc); its last lines:" >&2
            fi
            tail -n 30 "$log" >&2
            rm -f "$log"
            return 1
        fi
        rm -f "$log"
    fi
    local node=$dir/node_modules/.bin/node version
    if ! version=$("$node" --version 2>/dev/null); then
        echo "npm packages in $dir: $node does not run (the \`node\` package's preinstall script fetches it: was it blocked? see allowScripts in package.json)" >&2
        rm -f "$stamp"
        return 1
    fi
    echo "$want" >"$stamp"
    echo "node $version in $dir/node_modules/.bin"
}
