"""The secrets broker with the OpenBao backend (`--secrets-backend openbao`):
KV v2 reads and writes and database credentials come from a real OpenBao,
which Keyless logs in to with its own JWT-SVID
(`spiffe://example.org/keyless/secrets-broker`) through OpenBao's JWT auth
pointed at Keyless's OIDC discovery. Callers still log in to Keyless and
pass Keyless's ACL; OpenBao's token never touches Keyless's disk."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from conftest import wait_until
from test_openbao import Bao, openbao  # noqa: F401  (the OpenBao dev-server fixture)
from test_secrets import APP_POLICY, _client, _jwt, _setup

BROKER_ID = "spiffe://example.org/keyless/secrets-broker"
BROKER_ROLE = "keyless-broker"

BROKER_BAO_POLICY = """
path "secret/data/*"     { capabilities = ["create", "read", "update"] }
path "secret/metadata/*" { capabilities = ["read"] }
path "database/creds/*"  { capabilities = ["read"] }
path "sys/leases/renew"  { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
"""


def _ok(r) -> None:
    assert r.status_code in (200, 204), f"{r.status_code} {r.text}"


def _start_with_openbao(fabric_factory, bao: Bao, monkeypatch):
    """A fabric whose secrets backend is `bao` (configured through the
    KEYLESS_* environment, as a deployment would)."""
    fabric = fabric_factory(start=False)
    monkeypatch.setenv("KEYLESS_SECRETS_BACKEND", "openbao")
    monkeypatch.setenv("KEYLESS_OPENBAO_ADDR", bao.url)
    monkeypatch.setenv("KEYLESS_OPENBAO_ROLE", BROKER_ROLE)
    fabric.start()
    assert any(f"secrets backend: openbao at {bao.url}" in line for line in fabric.lines), fabric.logs()
    return fabric


def _configure_openbao(bao: Bao, fabric) -> None:
    _ok(bao.call("POST", "sys/auth/jwt", {"type": "jwt"}))
    _ok(bao.call("POST", "auth/jwt/config", {"oidc_discovery_url": fabric.spiffe_issuer}))
    _ok(bao.call("POST", f"sys/policies/acl/{BROKER_ROLE}", {"policy": BROKER_BAO_POLICY}))
    _ok(bao.call(
        "POST",
        f"auth/jwt/role/{BROKER_ROLE}",
        {
            "role_type": "jwt",
            "bound_audiences": ["openbao"],
            "user_claim": "sub",
            "bound_subject": BROKER_ID,
            "token_policies": [BROKER_ROLE],
            "token_ttl": "5m",
        },
    ))


def _broker_tokens(bao: Bao) -> list[dict]:
    """OpenBao's live tokens issued to Keyless's broker (looked up by accessor, as root)."""
    r = bao.call("LIST", "auth/token/accessors")
    _ok(r)
    out = []
    for accessor in r.json()["data"]["keys"]:
        info = bao.call("POST", "auth/token/lookup-accessor", {"accessor": accessor}).json().get("data") or {}
        if (info.get("meta") or {}).get("role") == BROKER_ROLE:
            out.append(info)
    return out


# An OpenBao token as OpenBao 2 prints them (`s.` + 24 base62 characters;
# `hvs.` + more in Vault), standing alone (not a piece of a JWT or base64).
BAO_TOKEN = re.compile(rb"(?<![A-Za-z0-9_.+/-])(?:hvs|s)\.[A-Za-z0-9]{24,}(?![A-Za-z0-9_.+/=-])")


def _assert_no_bao_token_on_disk(data_dir: Path) -> None:
    for path in data_dir.rglob("*"):
        if path.is_file() and not path.is_socket():
            found = BAO_TOKEN.search(path.read_bytes())
            assert found is None, f"an openbao token shape in {path}"


def test_kv_comes_from_openbao_through_keyless_acl(fabric_factory, own_uid_selector, openbao, tmp_path, monkeypatch):
    fabric = _start_with_openbao(fabric_factory, openbao, monkeypatch)
    _configure_openbao(openbao, fabric)
    # What an OpenBao token looks like here (the shape searched for on disk below).
    mine = openbao.call("POST", "auth/token/create", {"ttl": "1m"}).json()["auth"]["client_token"]
    assert BAO_TOKEN.fullmatch(mine.encode()), mine
    _ok(openbao.call("POST", "secret/data/app/db", {"data": {"password": "from-openbao"}}))
    _ok(openbao.call("POST", "secret/data/other/x", {"data": {"k": "hidden"}}))

    _setup(fabric, own_uid_selector, tmp_path)
    client = _client(fabric)
    login = client.auth.jwt.jwt_login(role="app", jwt=_jwt(fabric))
    assert login["auth"]["client_token"].startswith("hvs.")  # Keyless's own token

    # A read is served by OpenBao (nothing of it exists in Keyless's store).
    read = client.secrets.kv.v2.read_secret_version(path="app/db", mount_point="secret", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"password": "from-openbao"}
    assert read["data"]["metadata"]["version"] == 1
    logins = _broker_tokens(openbao)
    assert len(logins) == 1, logins
    assert logins[0]["meta"]["role"] == BROKER_ROLE
    assert logins[0]["policies"] == ["default", BROKER_ROLE]

    # A write lands in OpenBao; a version read works too.
    written = client.secrets.kv.v2.create_or_update_secret(path="app/db", secret={"password": "two"}, mount_point="secret")
    assert written["data"]["version"] == 2
    r = openbao.call("GET", "secret/data/app/db")
    assert r.json()["data"]["data"] == {"password": "two"}
    first = client.secrets.kv.v2.read_secret_version(path="app/db", version=1, mount_point="secret", raise_on_deleted_version=True)
    assert first["data"]["data"] == {"password": "from-openbao"}
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.kv.v2.read_secret_version(path="app/missing", mount_point="secret", raise_on_deleted_version=True)

    # Keyless's ACL still decides: the secret exists in OpenBao, the caller may not see it.
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(path="other/x", mount_point="secret", raise_on_deleted_version=True)
    # And a caller without a Keyless token gets nothing.
    with pytest.raises(hvac.exceptions.Forbidden):
        hvac.Client(url=fabric.base_url, token="hvs.unknown", timeout=15).secrets.kv.v2.read_secret_version(
            path="app/db", mount_point="secret", raise_on_deleted_version=True)

    # OpenBao revokes Keyless's token behind its back: the next read logs in again.
    _ok(openbao.call("POST", "auth/token/revoke-accessor", {"accessor": logins[0]["accessor"]}))
    again = client.secrets.kv.v2.read_secret_version(path="app/db", mount_point="secret", raise_on_deleted_version=True)
    assert again["data"]["data"] == {"password": "two"}
    assert len(_broker_tokens(openbao)) == 1  # a new one, the old one is gone
    assert _broker_tokens(openbao)[0]["accessor"] != logins[0]["accessor"]

    # Every read was recorded by Keyless.
    entries = fabric.get("/audit/entries").text
    assert "secret.read" in entries

    # No OpenBao token ever reached Keyless's data dir (store, WAL, keys).
    fabric.stop()
    _assert_no_bao_token_on_disk(fabric.data_dir)


def test_bad_openbao_flags_are_usage_errors(fabric_factory, tmp_path):
    fabric = fabric_factory(start=False)
    fabric.data_dir.mkdir(parents=True, exist_ok=True)
    cases = [
        (["--secrets-backend", "openbao", "--openbao-role", "r"], "needs --openbao-addr"),
        (["--secrets-backend", "openbao", "--openbao-addr", "http://127.0.0.1:1"], "needs --openbao-role"),
        (["--openbao-addr", "http://127.0.0.1:1"], "need --secrets-backend openbao"),
        (["--secrets-backend", "vault"], "unknown secrets backend `vault`"),
        (["--secrets-backend", "openbao", "--openbao-addr", "https://127.0.0.1:1", "--openbao-role", "r"], "only http://"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLESS_")}
    from conftest import keyless_bin

    for args, why in cases:
        data = tmp_path / f"d-{uuid.uuid4().hex[:6]}"
        r = subprocess.run(
            [str(keyless_bin()), "up", "--data-dir", str(data), "--listen", "127.0.0.1:0", *args],
            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 2, f"{args}: {r.returncode} {r.stderr}"
        assert why in r.stderr, f"{args}: {r.stderr}"
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        # Nothing was created.
        assert not data.exists() or not (data / "keyless.db").exists(), args


def _psql(url: str, sql: str) -> str:
    psql = shutil.which("psql")
    if not psql:
        pytest.skip("psql not found")
    return subprocess.run([psql, url, "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL).stdout.strip()


def test_database_credentials_come_from_openbao(fabric_factory, own_uid_selector, openbao, tmp_path, monkeypatch):
    pg = os.environ.get("KEYLESS_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    try:
        _psql(pg, "SELECT 1")
    except subprocess.CalledProcessError as e:
        pytest.skip(f"PostgreSQL unavailable at {pg}: {e.stderr.strip()}")
    fabric = _start_with_openbao(fabric_factory, openbao, monkeypatch)
    _configure_openbao(openbao, fabric)
    _ok(openbao.call("POST", "sys/mounts/database", {"type": "database"}))
    host_part = pg.split("://", 1)[1].split("@", 1)[1]
    _ok(openbao.call("POST", "database/config/pg", {
        "plugin_name": "postgresql-database-plugin",
        "connection_url": f"postgresql://{{{{username}}}}@{host_part}?sslmode=disable",
        "username": "postgres",
        "allowed_roles": "ro",
        "verify_connection": True,
    }))
    _ok(openbao.call("POST", "database/roles/ro", {
        "db_name": "pg",
        "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
        "default_ttl": "5m",
        "max_ttl": "1h",
    }))

    _setup(fabric, own_uid_selector, tmp_path)
    client = _client(fabric)
    client.auth.jwt.jwt_login(role="app", jwt=_jwt(fabric))
    creds = client.read("database/creds/ro")
    lease_id = creds["lease_id"]
    user = creds["data"]["username"]
    # Keyless's lease (its own id), not OpenBao's.
    assert lease_id.startswith("database/creds/ro/")
    assert 0 < creds["lease_duration"] <= 300
    assert _psql(pg, f"SELECT count(*) FROM pg_roles WHERE rolname = '{user}'") == "1"
    bao_leases = openbao.call("LIST", "sys/leases/lookup/database/creds/ro/").json()["data"]["keys"]
    assert len(bao_leases) == 1

    # Renewing Keyless's lease renews OpenBao's.
    renewed = client.sys.renew_lease(lease_id=lease_id, increment=900)
    assert renewed["lease_id"] == lease_id and 890 <= renewed["lease_duration"] <= 900
    looked = openbao.call("PUT", "sys/leases/lookup", {"lease_id": f"database/creds/ro/{bao_leases[0]}"}).json()["data"]
    assert 600 < looked["ttl"] <= 900, looked

    # Revoking Keyless's lease revokes OpenBao's, which drops the role.
    r = client.sys.revoke_lease(lease_id=lease_id)
    assert r.status_code == 204
    wait_until(lambda: _psql(pg, f"SELECT count(*) FROM pg_roles WHERE rolname = '{user}'") == "0",
               timeout=15, what="openbao to drop the role")
    assert openbao.call("LIST", "sys/leases/lookup/database/creds/ro/").status_code == 404


# APP_POLICY is imported so readers see the caller's Keyless policy in one place.
assert 'path "database/creds/ro"' in APP_POLICY
