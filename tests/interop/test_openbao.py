"""A real OpenBao trusts Keyless's JWT-SVIDs through OIDC discovery alone
(`oidc_discovery_url` = Keyless's `/spiffe` issuer): the way Vault/OpenBao and
cloud STSes are pointed at a SPIFFE trust domain in the field."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests
from spiffe import SpiffeId, WorkloadApiClient

from conftest import free_port, stop_process, wait_until

SPIFFE_ID = "spiffe://example.org/test/py"


@pytest.fixture
def openbao(tmp_path):
    """An OpenBao dev server (in-memory, root token `root`) on a free loopback port."""
    bao = os.environ.get("KEYLESS_TEST_BAO")
    if not bao or not Path(bao).is_file():
        pytest.skip("KEYLESS_TEST_BAO does not name the OpenBao binary (scripts/test downloads it)")
    port = free_port()
    home = tmp_path / "bao-home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    for var in list(env):
        if var.startswith(("VAULT_", "BAO_")):
            del env[var]
    log = open(tmp_path / "bao.log", "wb")
    proc = subprocess.Popen(
        [
            bao,
            "server",
            "-dev",
            "-dev-root-token-id=root",
            "-dev-no-store-token",
            f"-dev-listen-address=127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy():
            if proc.poll() is not None:
                pytest.fail(f"bao exited {proc.returncode}: {(tmp_path / 'bao.log').read_text()[-2000:]}")
            try:
                return requests.get(f"{url}/v1/sys/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, timeout=30, interval=0.2, what="OpenBao to become healthy")
        yield Bao(url)
    finally:
        stop_process(proc)
        log.close()


class Bao:
    def __init__(self, url: str):
        self.url = url

    def call(self, method: str, path: str, body=None, token: str | None = "root") -> requests.Response:
        headers = {"X-Vault-Token": token} if token else {}
        return requests.request(method, f"{self.url}/v1/{path}", json=body, headers=headers, timeout=15)


def _configure_jwt_auth(bao: Bao, fabric) -> None:
    r = bao.call("POST", "sys/auth/jwt", {"type": "jwt"})
    assert r.status_code in (200, 204), r.text
    # OpenBao fetches the discovery document now and checks that its issuer is this URL.
    r = bao.call("POST", "auth/jwt/config", {"oidc_discovery_url": fabric.spiffe_issuer})
    assert r.status_code in (200, 204), f"OpenBao refused Keyless's OIDC discovery: {r.text}"
    r = bao.call(
        "POST",
        "auth/jwt/role/agent",
        {
            "role_type": "jwt",
            "bound_audiences": ["openbao"],
            "user_claim": "sub",
            "bound_subject": SPIFFE_ID,
            "token_policies": ["default"],
            "token_ttl": "5m",
        },
    )
    assert r.status_code in (200, 204), r.text


def test_openbao_accepts_a_jwt_svid_through_oidc_discovery(fabric, own_uid_selector, openbao):
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    _configure_jwt_auth(openbao, fabric)

    token = fabric.fetch_jwt("openbao")
    r = openbao.call("POST", "auth/jwt/login", {"role": "agent", "jwt": token}, token=None)
    assert r.status_code == 200, f"login refused: {r.status_code} {r.text}"
    auth = r.json()["auth"]
    assert auth["client_token"]
    assert "default" in auth["token_policies"]
    assert auth["metadata"].get("role") == "agent"

    # The issued token works.
    r = openbao.call("GET", "auth/token/lookup-self", token=auth["client_token"])
    assert r.status_code == 200, r.text
    assert "default" in r.json()["data"]["policies"]


def test_openbao_refuses_a_jwt_svid_for_another_audience(fabric, own_uid_selector, openbao):
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    _configure_jwt_auth(openbao, fabric)

    token = fabric.fetch_jwt("not-openbao")
    r = openbao.call("POST", "auth/jwt/login", {"role": "agent", "jwt": token}, token=None)
    assert r.status_code == 400, f"{r.status_code} {r.text}"
    assert "aud" in r.text.lower()

    # And a JWT-SVID for another SPIFFE ID is refused by bound_subject.
    # The caller now holds two identities; ask for the other one by name.
    fabric.create_entry("spiffe://example.org/test/intruder", own_uid_selector)
    with WorkloadApiClient(socket_path=fabric.socket_uri, default_timeout=10) as client:
        intruder = client.fetch_jwt_svid({"openbao"}, subject=SpiffeId("spiffe://example.org/test/intruder"))
    assert str(intruder.spiffe_id) == "spiffe://example.org/test/intruder"
    r = openbao.call("POST", "auth/jwt/login", {"role": "agent", "jwt": intruder.token}, token=None)
    assert r.status_code == 400, f"{r.status_code} {r.text}"
