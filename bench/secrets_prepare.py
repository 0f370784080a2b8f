"""Prepares and drives bench/secrets.sh against a running `keyless up` and a
running OpenBao dev server, configured the same way on both sides.

    python bench/secrets_prepare.py setup KEYLESS_BIN DATA_DIR BASE_URL BAO_URL OUT_DIR
        KEYLESS_MANAGER_URL BAO_MANAGER_USER BAO_MANAGER_PASSWORD PG_HOSTPORT_DB GROUP_ROLE IDENTITIES
    python bench/secrets_prepare.py leases BASE_URL BAO_URL OUT_DIR COUNT

`setup`, on both sides: JWT auth for JWT-SVIDs (Keyless validates them
itself; OpenBao through Keyless's `/spiffe` OIDC discovery), a policy
`bench` allowing only `read` on `secret/data/bench/*` and
`database/creds/bench`, a JWT role `bench` bound to the bench workloads'
SPIFFE IDs, a policy `bench-admin` (`update` + `sudo` on
`sys/leases/revoke-prefix/*`) for one admin workload, one KV v2 secret
`secret/bench/item`, and a PostgreSQL connection with its own managing role
plus a database role `bench` whose creation statement is
`CREATE ROLE … LOGIN PASSWORD … VALID UNTIL …; GRANT GROUP_ROLE …`. Keyless
rotates its managing role's password on configure; OpenBao's is rotated with
`database/rotate-root` so neither side's is known afterwards. Then every
workload logs in on both sides with a JWT-SVID from the Workload API
(py-spiffe) and the tokens land in OUT_DIR/{keyless,bao}.tokens (one per
line) and OUT_DIR/{keyless,bao}.admin. Each request the load will repeat is
made once and checked, and a read outside the policy must be refused (403):
the tokens are policy-bound, not root.

Several workload identities share the load because Keyless caps live leases
per identity (1,000 by default); the tokens are used round-robin on both
sides so the two servers see the same requests.

`leases` creates COUNT database credentials (leases) on each side, four
requests in flight, tokens round-robin, and prints how long each side took.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from spiffe import SpiffeId, WorkloadApiClient

TD = "spiffe://example.org"
KEYLESS_AUD = "keyless-secrets"
BAO_AUD = "openbao"
TIMEOUT = 30

BENCH_POLICY = """
# bench workloads: read one KV subtree and issue one database role, nothing else
path "secret/data/bench/*" { capabilities = ["read"] }
path "database/creds/bench" { capabilities = ["read"] }
"""
ADMIN_POLICY = """
# bench admin: revoke-prefix (Vault requires sudo on it)
path "sys/leases/revoke-prefix/*" { capabilities = ["update", "sudo"] }
"""


def die(msg: str):
    print(f"secrets_prepare: {msg}", file=sys.stderr)
    sys.exit(1)


def cli(bin_: str, data_dir: str, *args: str) -> str:
    env = dict(os.environ)
    env.pop("SPIFFE_ENDPOINT_SOCKET", None)
    done = subprocess.run(
        [bin_, *args, "--data-dir", data_dir],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        die(f"`keyless {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


class Bao:
    """OpenBao's HTTP API with one token."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.s = requests.Session()
        self.s.headers["X-Vault-Token"] = token

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        r = self.s.request(method, f"{self.url}/v1/{path}", json=body, timeout=TIMEOUT)
        if r.status_code not in (200, 204):
            die(f"OpenBao {method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.status_code == 200 and r.content else {}


def jwt_svid(socket: str, spiffe_id: str, audience: str) -> str:
    # The registration entry may take a moment to reach the Workload API.
    last = None
    for _ in range(50):
        try:
            with WorkloadApiClient(socket_path=socket, default_timeout=10) as c:
                svid = c.fetch_jwt_svid({audience}, subject=SpiffeId(spiffe_id))
            if str(svid.spiffe_id) == spiffe_id:
                return svid.token
            last = f"got {svid.spiffe_id}"
        except Exception as e:  # noqa: BLE001 - retried, then reported
            last = str(e)
        time.sleep(0.1)
    die(f"no JWT-SVID for {spiffe_id}: {last}")
    return ""


def login(url: str, role: str, jwt: str) -> str:
    r = requests.post(f"{url}/v1/auth/jwt/login", json={"role": role, "jwt": jwt}, timeout=TIMEOUT)
    if r.status_code != 200:
        die(f"login at {url} (role {role}): {r.status_code} {r.text[:500]}")
    auth = r.json()["auth"]
    if "root" in auth["policies"]:
        die(f"login at {url} returned a root token")
    return auth["client_token"]


def get(url: str, path: str, token: str) -> requests.Response:
    return requests.get(f"{url}/v1/{path}", headers={"X-Vault-Token": token}, timeout=TIMEOUT)


def setup(argv: list[str]):
    (bin_, data_dir, base, bao_url, out, mgr_url, bao_user, bao_pw, pg_where, group, n) = argv
    out = Path(out)
    n = int(n)
    socket = f"unix://{Path(data_dir).resolve()}/workload.sock"
    workloads = [f"{TD}/bench/w{i}" for i in range(n)]
    admin = f"{TD}/benchadmin"
    uid = os.getuid()
    value = "v-" + secrets.token_urlsafe(24)
    create_sql = (
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; "
        f'GRANT "{group}" TO "{{{{name}}}}"'
    )

    # --- Keyless, through the admin CLI ------------------------------------
    for sid in [*workloads, admin]:
        cli(bin_, data_dir, "entry", "create", "--spiffe-id", sid, "--selector", f"unix:uid:{uid}")
    (out / "bench.hcl").write_text(BENCH_POLICY)
    (out / "bench-admin.hcl").write_text(ADMIN_POLICY)
    cli(bin_, data_dir, "secrets", "policy", "write", "bench", str(out / "bench.hcl"))
    cli(bin_, data_dir, "secrets", "policy", "write", "bench-admin", str(out / "bench-admin.hcl"))
    common = ["--bound-audience", KEYLESS_AUD, "--token-ttl", "1h"]
    cli(bin_, data_dir, "secrets", "role", "create", "bench", "--bound-subject", f"{TD}/bench/*",
        "--policy", "bench", *common)
    cli(bin_, data_dir, "secrets", "role", "create", "bench-admin", "--bound-subject", admin,
        "--policy", "bench-admin", *common)
    cli(bin_, data_dir, "secrets", "kv", "put", "secret/bench/item", "user=bench", f"password={value}")
    cli(bin_, data_dir, "secrets", "db", "configure", "--connection-url", mgr_url)
    (out / "create.sql").write_text(create_sql + "\n")
    cli(bin_, data_dir, "secrets", "db", "role", "create", "bench", "--creation-statements",
        str(out / "create.sql"), "--default-ttl", "5m", "--max-ttl", "1h")

    # --- OpenBao, through its HTTP API with the dev root token ----------------
    root = Bao(bao_url, "root")
    root.call("POST", "sys/auth/jwt", {"type": "jwt"})
    root.call("POST", "auth/jwt/config", {"oidc_discovery_url": f"{base}/spiffe"})
    root.call("PUT", "sys/policies/acl/bench", {"policy": BENCH_POLICY})
    root.call("PUT", "sys/policies/acl/bench-admin", {"policy": ADMIN_POLICY})
    role = {"role_type": "jwt", "bound_audiences": [BAO_AUD], "user_claim": "sub", "token_ttl": "1h",
            "token_type": "service"}
    root.call("POST", "auth/jwt/role/bench", {
        **role, "bound_claims_type": "glob", "bound_claims": {"sub": f"{TD}/bench/*"}, "token_policies": ["bench"]})
    root.call("POST", "auth/jwt/role/bench-admin", {**role, "bound_subject": admin, "token_policies": ["bench-admin"]})
    root.call("POST", "secret/data/bench/item", {"data": {"user": "bench", "password": value}})
    root.call("POST", "sys/mounts/database", {"type": "database"})
    root.call("POST", "database/config/bench-pg", {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@{pg_where}?sslmode=disable",
        "username": bao_user,
        "password": bao_pw,
        "allowed_roles": ["bench"],
        "verify_connection": True,
    })
    root.call("POST", "database/rotate-root/bench-pg", {})
    root.call("POST", "database/roles/bench", {
        "db_name": "bench-pg", "creation_statements": [create_sql], "default_ttl": "5m", "max_ttl": "1h"})

    # --- logins: every workload on both sides ----------------------------------
    k_tokens, b_tokens = [], []
    for sid in workloads:
        k_tokens.append(login(base, "bench", jwt_svid(socket, sid, KEYLESS_AUD)))
        b_tokens.append(login(bao_url, "bench", jwt_svid(socket, sid, BAO_AUD)))
    (out / "keyless.tokens").write_text("\n".join(k_tokens) + "\n")
    (out / "bao.tokens").write_text("\n".join(b_tokens) + "\n")
    (out / "keyless.admin").write_text(login(base, "bench-admin", jwt_svid(socket, admin, KEYLESS_AUD)))
    (out / "bao.admin").write_text(login(bao_url, "bench-admin", jwt_svid(socket, admin, BAO_AUD)))

    # --- each request once, checked; refusals prove the tokens are bound --------
    for name, url, token in (("Keyless", base, k_tokens[0]), ("OpenBao", bao_url, b_tokens[0])):
        r = get(url, "secret/data/bench/item", token)
        if r.status_code != 200 or r.json()["data"]["data"] != {"user": "bench", "password": value}:
            die(f"{name} KV read: {r.status_code} {r.text[:300]}")
        for path in ("secret/data/other/item", "database/creds/other", "sys/policies/acl/bench"):
            r = get(url, path, token)
            if r.status_code != 403:
                die(f"{name} {path} with the bench token: expected 403, got {r.status_code}")
        r = get(url, "database/creds/bench", token)
        body = r.json() if r.status_code == 200 else {}
        if not (body.get("lease_id", "").startswith("database/creds/bench/") and body["data"].get("username")):
            die(f"{name} database creds: {r.status_code} {r.text[:300]}")
        print(f"checked {name}: KV read 200, creds 200 ({body['data']['username']}, lease "
              f"{body['lease_duration']} s), out-of-policy reads 403")
    print(f"prepared: {n} workloads logged in on both sides (policy-bound service tokens)")


def leases(argv: list[str]):
    base, bao_url, out, count = argv
    out = Path(out)
    count = int(count)
    for name, url, kind in (("keyless", base, "keyless"), ("openbao", bao_url, "bao")):
        tokens = (out / f"{kind}.tokens").read_text().split()
        local = threading.local()
        failures = []

        def one(i: int) -> None:
            if not hasattr(local, "s"):
                local.s = requests.Session()
            r = local.s.get(
                f"{url}/v1/database/creds/bench", headers={"X-Vault-Token": tokens[i % len(tokens)]}, timeout=TIMEOUT)
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:200]}")

        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, range(count)))
        took = time.monotonic() - start
        if failures:
            die(f"{name}: {len(failures)} of {count} creds requests failed, first: {failures[0]}")
        print(f"leases {name} {count} {took:.2f}")


def main():
    if len(sys.argv) < 2:
        die(__doc__ or "usage")
    {"setup": setup, "leases": leases}.get(sys.argv[1], lambda _: die(f"unknown command {sys.argv[1]!r}"))(
        sys.argv[2:])


if __name__ == "__main__":
    main()
