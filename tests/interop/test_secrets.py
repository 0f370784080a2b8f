"""The secrets broker is Vault-compatible for real clients, unchanged:
hvac (HashiCorp's Python client) and OpenBao's own `bao` CLI log in with a
JWT-SVID fetched from the Workload API, read and write KV v2, look up their
token, renew and revoke a database lease, and wrap/unwrap once; and the
refusals are the ones Vault gives (400 with a reason, 403 permission denied)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
import requests
from spiffe import WorkloadApiClient

SPIFFE_ID = "spiffe://example.org/app/py"
AUDIENCE = "keyless-secrets"

APP_POLICY = """
# what the test workload may do
path "secret/data/app/*"     { capabilities = ["create", "read", "update", "delete"] }
path "secret/metadata/app/*" { capabilities = ["read", "list"] }
path "database/creds/ro"     { capabilities = ["read"] }
path "sys/leases/revoke"     { capabilities = ["update"] }
"""


def _setup(fabric, own_uid_selector, tmp_path: Path, *, single_use: bool = False) -> None:
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    policy = tmp_path / "app.hcl"
    policy.write_text(APP_POLICY)
    fabric.cli("secrets", "policy", "write", "app", str(policy)).ok()
    def role(name: str, *extra: str) -> None:
        fabric.cli(
            "secrets", "role", "create", name,
            "--bound-audience", AUDIENCE,
            "--bound-subject", "spiffe://example.org/app/*",
            "--policy", "app",
            "--token-ttl", "30m",
            *extra,
        ).ok()

    role("app")
    if single_use:
        role("once", "--single-use")


def _jwt(fabric, audience: str = AUDIENCE) -> str:
    """A JWT-SVID from the Workload API, with py-spiffe."""
    with WorkloadApiClient(socket_path=fabric.socket_uri, default_timeout=10) as client:
        svid = client.fetch_jwt_svid({audience})
    assert str(svid.spiffe_id) == SPIFFE_ID
    return svid.token


def _client(fabric) -> hvac.Client:
    return hvac.Client(url=fabric.base_url, timeout=15)


def test_hvac_logs_in_with_a_jwt_svid_and_uses_kv_v2(fabric, own_uid_selector, tmp_path):
    _setup(fabric, own_uid_selector, tmp_path)
    fabric.cli("secrets", "kv", "put", "secret/app/seeded", "user=alice", "pass=s3cr3t").ok()
    client = _client(fabric)
    login = client.auth.jwt.jwt_login(role="app", jwt=_jwt(fabric))
    auth = login["auth"]
    assert auth["client_token"].startswith("hvs.")
    assert auth["policies"] == ["default", "app"]
    assert auth["token_type"] == "service"
    assert auth["metadata"]["spiffe_id"] == SPIFFE_ID
    assert client.is_authenticated()

    # KV v2: the operator's secret, then our own versions.
    read = client.secrets.kv.v2.read_secret_version(path="app/seeded", mount_point="secret", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"user": "alice", "pass": "s3cr3t"}
    assert read["data"]["metadata"]["version"] == 1
    client.secrets.kv.v2.create_or_update_secret(path="app/db", secret={"password": "one"}, mount_point="secret")
    written = client.secrets.kv.v2.create_or_update_secret(path="app/db", secret={"password": "two"}, cas=1, mount_point="secret")
    assert written["data"]["version"] == 2
    latest = client.secrets.kv.v2.read_secret_version(path="app/db", mount_point="secret", raise_on_deleted_version=True)
    assert latest["data"]["data"] == {"password": "two"}
    first = client.secrets.kv.v2.read_secret_version(path="app/db", version=1, mount_point="secret", raise_on_deleted_version=True)
    assert first["data"]["data"] == {"password": "one"}
    meta = client.secrets.kv.v2.read_secret_metadata(path="app/db", mount_point="secret")
    assert meta["data"]["current_version"] == 2
    listed = client.secrets.kv.v2.list_secrets(path="app", mount_point="secret")
    assert sorted(listed["data"]["keys"]) == ["db", "seeded"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.kv.v2.read_secret_version(path="app/missing", mount_point="secret", raise_on_deleted_version=True)

    # lookup-self.
    me = client.auth.token.lookup_self()["data"]
    assert me["id"] == auth["client_token"]
    assert me["accessor"] == auth["accessor"]
    assert me["policies"] == ["default", "app"]
    assert 0 < me["ttl"] <= 1800

    # Response wrapping: once, and only once.
    wrapped = client.sys.wrap(payload={"handoff": "value"}, ttl=60)
    wrap_token = wrapped["wrap_info"]["token"]
    assert wrapped["wrap_info"]["ttl"] == 60
    unwrapped = client.sys.unwrap(token=wrap_token)
    assert unwrapped["data"] == {"handoff": "value"}
    with pytest.raises(hvac.exceptions.InvalidRequest) as second:
        client.sys.unwrap(token=wrap_token)
    assert "wrapping token is not valid or does not exist" in str(second.value)

    # revoke-self: the token is dead afterwards.
    client.auth.token.revoke_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.token.lookup_self()


def test_hvac_refusals_are_vaults(fabric, own_uid_selector, tmp_path):
    _setup(fabric, own_uid_selector, tmp_path, single_use=True)
    client = _client(fabric)

    with pytest.raises(hvac.exceptions.InvalidRequest) as bad_jwt:
        client.auth.jwt.jwt_login(role="app", jwt="not.a.jwt")
    assert "error validating token" in str(bad_jwt.value)

    with pytest.raises(hvac.exceptions.InvalidRequest) as unknown_role:
        client.auth.jwt.jwt_login(role="nope", jwt=_jwt(fabric))
    assert 'role "nope" could not be found' in str(unknown_role.value)

    with pytest.raises(hvac.exceptions.InvalidRequest) as wrong_aud:
        client.auth.jwt.jwt_login(role="app", jwt=_jwt(fabric, audience="somebody-else"))
    assert "error validating token" in str(wrong_aud.value)

    # A single-use role refuses the same JWT-SVID twice.
    jwt = _jwt(fabric)
    client.auth.jwt.jwt_login(role="once", jwt=jwt)
    with pytest.raises(hvac.exceptions.InvalidRequest) as replay:
        client.auth.jwt.jwt_login(role="once", jwt=jwt)
    assert "already used" in str(replay.value)

    # Denied path and unknown token: 403 permission denied.
    client.auth.jwt.jwt_login(role="app", jwt=_jwt(fabric))
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(path="other/x", mount_point="secret", raise_on_deleted_version=True)
    stranger = hvac.Client(url=fabric.base_url, token="hvs.unknown", timeout=15)
    with pytest.raises(hvac.exceptions.Forbidden):
        stranger.secrets.kv.v2.read_secret_version(path="app/x", mount_point="secret", raise_on_deleted_version=True)
    r = requests.get(f"{fabric.base_url}/v1/secret/data/app/x", headers={"X-Vault-Token": "hvs.unknown"}, timeout=10)
    assert r.status_code == 403 and r.json() == {"errors": ["permission denied"]}


def _psql(url: str, sql: str) -> None:
    psql = shutil.which("psql")
    if not psql:
        pytest.skip("psql not found (needed to create the managing role)")
    subprocess.run([psql, url, "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.fixture
def postgres_manager():
    """A managing role (CREATEROLE) on the test PostgreSQL, dropped afterwards."""
    url = os.environ.get("KEYLESS_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    name = f"kl_mgr_{uuid.uuid4().hex[:10]}"
    try:
        _psql(url, f"CREATE ROLE {name} WITH LOGIN CREATEROLE PASSWORD 'initial'")
    except subprocess.CalledProcessError as e:
        pytest.skip(f"PostgreSQL unavailable at {url}: {e.stderr.decode(errors='replace').strip()}")
    host_part = url.split("@", 1)[1]
    yield f"postgres://{name}:initial@{host_part}", url
    subprocess.run(
        [shutil.which("psql") or "psql", url, "-c",
         f"DO $$ DECLARE r record; BEGIN FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'kl\\_ro\\_%' LOOP EXECUTE format('DROP ROLE IF EXISTS %I', r.rolname); END LOOP; END $$; DROP ROLE IF EXISTS {name}"],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def test_hvac_renews_and_revokes_a_database_lease(fabric, own_uid_selector, tmp_path, postgres_manager):
    manager_url, _ = postgres_manager
    _setup(fabric, own_uid_selector, tmp_path)
    fabric.cli("secrets", "db", "configure", "--connection-url", manager_url).ok()
    sql = tmp_path / "create.sql"
    sql.write_text(
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';\n"
    )
    fabric.cli("secrets", "db", "role", "create", "ro", "--creation-statements", str(sql), "--default-ttl", "5m", "--max-ttl", "1h").ok()

    client = _client(fabric)
    client.auth.jwt.jwt_login(role="app", jwt=_jwt(fabric))
    creds = client.read("database/creds/ro")
    lease_id = creds["lease_id"]
    assert lease_id.startswith("database/creds/ro/")
    assert creds["renewable"] is True and creds["lease_duration"] == 300
    assert creds["data"]["username"] and creds["data"]["password"]

    metrics = fabric.get("/metrics").text
    assert 'keyless_secrets_leases{engine="database"} 1' in metrics
    assert "keyless_secrets_revocation_backlog 0" in metrics

    looked = client.sys.read_lease(lease_id=lease_id)
    assert looked["data"]["id"] == lease_id
    renewed = client.sys.renew_lease(lease_id=lease_id, increment=600)
    assert renewed["lease_id"] == lease_id and 590 <= renewed["lease_duration"] <= 600
    # Past the max TTL: capped, with a warning.
    capped = client.sys.renew_lease(lease_id=lease_id, increment=10 * 3600)
    assert capped["lease_duration"] <= 3600
    assert any("capped" in w for w in capped["warnings"])

    r = client.sys.revoke_lease(lease_id=lease_id)
    assert r.status_code == 204
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.read_lease(lease_id=lease_id)


def _bao(bao: str, home: Path, addr: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update({"HOME": str(home), "VAULT_ADDR": addr})
    if token:
        env["VAULT_TOKEN"] = token
    return subprocess.run([bao, *args], capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)


def test_bao_cli_logs_in_and_uses_kv(fabric, own_uid_selector, tmp_path):
    bao = os.environ.get("KEYLESS_TEST_BAO")
    if not bao or not Path(bao).is_file():
        pytest.skip("KEYLESS_TEST_BAO does not name the OpenBao binary (scripts/test downloads it)")
    _setup(fabric, own_uid_selector, tmp_path)
    home = tmp_path / "bao-home"
    home.mkdir()
    addr = fabric.base_url

    # `bao login -method=jwt` has no CLI handler in OpenBao (JWT login is
    # API-only there too): log in with `bao write`, then `bao login TOKEN`.
    r = _bao(bao, home, addr, "write", "-format=json", "auth/jwt/login", "role=app", f"jwt={_jwt(fabric)}")
    assert r.returncode == 0, r.stderr
    token = json.loads(r.stdout)["auth"]["client_token"]
    r = _bao(bao, home, addr, "login", "-no-print", token)
    assert r.returncode == 0, r.stderr

    r = _bao(bao, home, addr, "kv", "put", "secret/app/cli", "color=blue")
    assert r.returncode == 0, r.stderr
    r = _bao(bao, home, addr, "kv", "get", "-format=json", "secret/app/cli")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["data"]["data"] == {"color": "blue"}
    r = _bao(bao, home, addr, "kv", "get", "-field=color", "secret/app/cli")
    assert r.returncode == 0 and r.stdout.strip() == "blue", r.stderr

    r = _bao(bao, home, addr, "token", "lookup", "-format=json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)["data"]
    assert data["policies"] == ["default", "app"]
    assert data["meta"]["spiffe_id"] == SPIFFE_ID

    r = _bao(bao, home, addr, "kv", "get", "secret/elsewhere/x")
    assert r.returncode != 0 and "permission denied" in r.stderr


def test_secrets_cli_refuses_bad_input_and_changes_nothing(fabric, tmp_path):
    bad = tmp_path / "bad.hcl"
    bad.write_text('path "secret/data/x" {\n  capabilities = ["read", "fly"]\n}\n')
    r = fabric.cli("secrets", "policy", "write", "p", str(bad))
    assert r.code == 2, r.stderr
    assert "line 2" in r.stderr and "unknown capability `fly`" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    r = fabric.cli("secrets", "policy", "write", "p", str(tmp_path / "missing.hcl"))
    assert r.code == 2 and "cannot read" in r.stderr

    r = fabric.cli("secrets", "role", "create", "r", "--bound-subject", SPIFFE_ID)
    assert r.code == 2, "a role without an audience must be refused"
    r = fabric.cli("secrets", "role", "create", "r", "--bound-audience", "a", "--bound-subject", SPIFFE_ID, "--token-ttl", "soon")
    assert r.code == 2 and "invalid --token-ttl" in r.stderr
    r = fabric.cli("secrets", "role", "create", "r", "--bound-audience", "a", "--bound-subject", SPIFFE_ID, "--policy", "root")
    assert r.code == 2, r.stderr

    r = fabric.cli("secrets", "kv", "put", "secret/app/x", "novalue")
    assert r.code == 2 and "KEY=VALUE" in r.stderr

    # Nothing but what `up` itself registers: the default policy, and the
    # agent host's policy and role (it reads its model provider's key).
    assert fabric.cli("secrets", "policy", "list").ok().stdout.split() == ["default", "keyless-agent-host"]
    assert fabric.cli("secrets", "role", "list").ok().stdout.split() == ["keyless-agent-host"]


def _pg_rows(url: str, sql: str) -> list[str]:
    out = subprocess.run(
        [shutil.which("psql") or "psql", url, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    return [line for line in out.stdout.splitlines() if line]


def test_dynamic_postgres_credential_end_to_end_with_psql(fabric, own_uid_selector, tmp_path, postgres_manager):
    """A dynamic credential logs in with psql and reads exactly what its role
    grants; revoking its lease drops the role and kills its open session; a
    lease that expires while Keyless is stopped is revoked at the next start."""
    manager_url, admin_url = postgres_manager
    manager = manager_url.split("://", 1)[1].split(":", 1)[0]
    table = f"kl_e2e_{uuid.uuid4().hex[:8]}"
    _psql(admin_url, f"CREATE TABLE {table} (v TEXT); INSERT INTO {table} VALUES ('granted'); "
                     f"GRANT SELECT ON {table} TO {manager} WITH GRANT OPTION")
    try:
        fabric.create_entry(SPIFFE_ID, own_uid_selector)
        policy = tmp_path / "db.hcl"
        policy.write_text('path "database/creds/*" { capabilities = ["read"] }\n'
                          'path "sys/leases/revoke" { capabilities = ["update"] }\n')
        fabric.cli("secrets", "policy", "write", "db", str(policy)).ok()
        fabric.cli("secrets", "role", "create", "app", "--bound-audience", AUDIENCE,
                   "--bound-subject", "spiffe://example.org/app/*", "--policy", "db").ok()
        fabric.cli("secrets", "db", "configure", "--connection-url", manager_url).ok()
        sql = tmp_path / "create.sql"
        sql.write_text(
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';\n"
            f"GRANT SELECT ON {table} TO \"{{{{name}}}}\";\n"
        )
        fabric.cli("secrets", "db", "role", "create", "ro", "--creation-statements", str(sql),
                   "--default-ttl", "5m", "--max-ttl", "1h").ok()
        fabric.cli("secrets", "db", "role", "create", "short", "--creation-statements", str(sql),
                   "--default-ttl", "2s", "--max-ttl", "1h").ok()

        client = _client(fabric)
        client.auth.jwt.jwt_login(role="app", jwt=_jwt(fabric))
        creds = client.read("database/creds/ro")
        user, password = creds["data"]["username"], creds["data"]["password"]
        host_part = admin_url.split("@", 1)[1]
        user_url = f"postgres://{user}:{password}@{host_part}"
        # psql, as the credential: reads what it was granted, nothing more.
        assert _pg_rows(user_url, f"SELECT v FROM {table}") == ["granted"]
        denied = subprocess.run([shutil.which("psql") or "psql", user_url, "-c", f"INSERT INTO {table} VALUES ('x')"],
                                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert denied.returncode != 0 and "permission denied" in denied.stderr
        # An open session of the credential...
        session = subprocess.Popen([shutil.which("psql") or "psql", user_url, "-c", "SELECT pg_sleep(60)"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if _pg_rows(admin_url, f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'") != ["0"]:
                    break
                time.sleep(0.05)
            assert client.sys.revoke_lease(lease_id=creds["lease_id"]).status_code == 204
            # ...is terminated, and the role is gone.
            session.wait(timeout=15)
            assert session.returncode != 0
        finally:
            if session.poll() is None:
                session.kill()
        assert _pg_rows(admin_url, f"SELECT count(*) FROM pg_roles WHERE rolname = '{user}'") == ["0"]

        # Expires while Keyless is down: revoked at the next start.
        short = client.read("database/creds/short")
        short_user = short["data"]["username"]
        assert _pg_rows(admin_url, f"SELECT count(*) FROM pg_roles WHERE rolname = '{short_user}'") == ["1"]
        fabric.stop()
        # Still there with Keyless down (so the start-up pass is what drops it).
        assert _pg_rows(admin_url, f"SELECT count(*) FROM pg_roles WHERE rolname = '{short_user}'") == ["1"]
        time.sleep(3)
        fabric.start(port=fabric.port)
        gone = False
        for _ in range(150):
            if _pg_rows(admin_url, f"SELECT count(*) FROM pg_roles WHERE rolname = '{short_user}'") == ["0"]:
                gone = True
                break
            time.sleep(0.1)
        assert gone, "the lease that expired while Keyless was stopped was not revoked at start-up"
    finally:
        _psql(admin_url, f"DROP TABLE IF EXISTS {table}")
