"""The SPIFFE HTTP surface relying parties read: OIDC discovery for JWT-SVIDs
(`/spiffe/.well-known/openid-configuration`, `/spiffe/keys`) and the SPIFFE
federation bundle (`/spiffe/bundle`), with the fields standards.md lists."""

from __future__ import annotations

import base64
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from conftest import load_certs

SPIFFE_ID = "spiffe://example.org/test/py"
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k"}


def _json(resp):
    assert resp.status_code == 200, f"{resp.url}: {resp.status_code} {resp.text[:300]}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers.get("content-type")
    return resp.json()


def _kid(token: str) -> str:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]


def test_oidc_discovery_document_and_keys(fabric, own_uid_selector):
    doc = _json(fabric.get("/spiffe/.well-known/openid-configuration"))
    assert doc["issuer"] == fabric.spiffe_issuer
    assert doc["jwks_uri"].startswith(fabric.base_url + "/"), doc["jwks_uri"]
    assert doc["response_types_supported"] == ["id_token"]
    assert "public" in doc["subject_types_supported"]
    algs = doc["id_token_signing_alg_values_supported"]
    assert algs and set(algs) <= {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}

    jwks = _json(fabric.get(doc["jwks_uri"][len(fabric.base_url) :]))
    keys = jwks["keys"]
    assert keys, "empty JWKS"
    for k in keys:
        assert k.get("kid"), f"key without kid: {k}"
        assert k.get("kty") in ("EC", "RSA", "OKP")
        assert not PRIVATE_JWK_MEMBERS & set(k), f"private key material published: {sorted(k)}"

    # The key that signs JWT-SVIDs is published, and its iss is the discovery issuer.
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    token = fabric.fetch_jwt("discovery-test")
    assert _kid(token) in {k["kid"] for k in keys}
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["iss"] == doc["issuer"], "JWT-SVID iss must equal the discovery issuer (OIDC relying parties check it)"
    assert claims["sub"] == SPIFFE_ID
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=" * (-len(token.split(".")[0]) % 4)))
    assert header["alg"] in algs
    assert header.get("typ") in (None, "JWT", "JOSE")


def test_federation_bundle(fabric, own_uid_selector, tmp_path):
    bundle = _json(fabric.get("/spiffe/bundle"))
    assert isinstance(bundle.get("spiffe_refresh_hint"), int) and bundle["spiffe_refresh_hint"] > 0
    assert isinstance(bundle.get("spiffe_sequence"), int) and bundle["spiffe_sequence"] >= 0
    keys = bundle["keys"]
    x509_keys = [k for k in keys if k.get("use") == "x509-svid"]
    jwt_keys = [k for k in keys if k.get("use") == "jwt-svid"]
    assert x509_keys and jwt_keys, f"uses present: {sorted({k.get('use') for k in keys})}"
    assert len(x509_keys) + len(jwt_keys) == len(keys), "keys with an unknown use"

    for k in x509_keys:
        assert isinstance(k.get("x5c"), list) and len(k["x5c"]) == 1, k
        assert not PRIVATE_JWK_MEMBERS & set(k)
    for k in jwt_keys:
        assert k.get("kid"), k
        assert not PRIVATE_JWK_MEMBERS & set(k)

    # The x509-svid authorities are exactly the roots the Workload API hands out.
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    files = fabric.fetch_svid_files(tmp_path / "svid")
    roots = {c.fingerprint(hashes.SHA256()) for c in load_certs(files["bundle"])}
    published = set()
    for k in x509_keys:
        cert = x509.load_der_x509_certificate(base64.b64decode(k["x5c"][0]))
        published.add(cert.fingerprint(hashes.SHA256()))
        # The JWK's public key is the certificate's.
        numbers = cert.public_key().public_numbers()
        if k.get("kty") == "EC":
            size = (numbers.curve.key_size + 7) // 8
            assert _b64u_int(k["x"], size) == numbers.x and _b64u_int(k["y"], size) == numbers.y
    assert published == roots

    # The jwt-svid authorities are the OIDC JWKS's keys.
    oidc_kids = {k["kid"] for k in _json(fabric.get("/spiffe/keys"))["keys"]}
    assert {k["kid"] for k in jwt_keys} == oidc_kids

    # A CA rotation is a new bundle: the sequence moves forward and the new root appears.
    fabric.cli("ca", "rotate").ok()
    rotated = _json(fabric.get("/spiffe/bundle"))
    assert rotated["spiffe_sequence"] > bundle["spiffe_sequence"]
    assert len([k for k in rotated["keys"] if k.get("use") == "x509-svid"]) == len(x509_keys) + 1


def _b64u_int(s: str, size: int) -> int:
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    assert len(raw) == size, f"coordinate is {len(raw)} bytes, expected {size}"
    return int.from_bytes(raw, "big")


def test_operations_endpoints(fabric):
    assert fabric.get("/healthz").status_code == 200
    assert fabric.get("/readyz").status_code == 200
