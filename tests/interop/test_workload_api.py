"""py-spiffe (the reference Python SPIFFE client) against Keyless's Workload API:
X509-SVID, JWT-SVID, both bundles, JWT validation, and caller attestation
(uid and binary sha256 selectors, no identity, missing security header)."""

from __future__ import annotations

import base64
import json
import os
import time

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import JwtSvid, SpiffeId, TrustDomain
from spiffe.workloadapi.errors import FetchX509SvidError, ValidateJwtSvidError

from conftest import TRUST_DOMAIN, sha256_file

SPIFFE_ID = "spiffe://example.org/test/py"


def test_py_spiffe_fetches_x509_svid_and_bundle(fabric, own_uid_selector, workload_client_factory):
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    client = workload_client_factory(fabric)

    ctx = client.fetch_x509_context()
    svid = ctx.default_svid
    assert str(svid.spiffe_id) == SPIFFE_ID
    assert len(ctx.x509_svids) == 1
    assert len(svid.cert_chain) >= 1
    # The private key belongs to the leaf.
    leaf_pub = svid.leaf.public_key()
    assert isinstance(svid.private_key, ec.EllipticCurvePrivateKey)
    assert svid.private_key.public_key().public_numbers() == leaf_pub.public_numbers()

    td = TrustDomain(TRUST_DOMAIN)
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(td)
    assert bundle is not None, "X509-SVID response carries no bundle for the trust domain"
    roots = bundle.x509_authorities
    assert roots, "empty X.509 bundle"

    # The chain ends at one of the bundle's roots: each certificate is signed by the next.
    chain = list(svid.cert_chain)
    for child, parent in zip(chain, chain[1:]):
        child.verify_directly_issued_by(parent)
    top = chain[-1]
    assert any(_issued_by(top, root) for root in roots), "chain does not end at a bundle root"

    # FetchX509Bundles gives the same roots.
    bundles = client.fetch_x509_bundles()
    b2 = bundles.get_bundle_for_trust_domain(td)
    assert b2 is not None
    assert {r.fingerprint(_sha256()) for r in b2.x509_authorities} == {r.fingerprint(_sha256()) for r in roots}


def test_py_spiffe_fetches_and_validates_jwt_svid(fabric, own_uid_selector, workload_client_factory):
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    client = workload_client_factory(fabric)

    jwt_svid = client.fetch_jwt_svid(audience={"interop-test"})
    assert str(jwt_svid.spiffe_id) == SPIFFE_ID
    assert jwt_svid.audience == {"interop-test"}

    # Through the Workload API's ValidateJWTSVID.
    validated = client.validate_jwt_svid(jwt_svid.token, "interop-test")
    assert str(validated.spiffe_id) == SPIFFE_ID
    with pytest.raises(ValidateJwtSvidError):
        client.validate_jwt_svid(jwt_svid.token, "someone-else")

    # Offline, with the JWT bundle (py-spiffe checks alg, kid, signature, aud, exp).
    bundles = client.fetch_jwt_bundles()
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
    assert bundle is not None, "no JWT bundle for the trust domain"
    assert bundle.jwt_authorities, "empty JWT bundle"
    parsed = JwtSvid.parse_and_validate(jwt_svid.token, bundle, {"interop-test"})
    assert parsed.spiffe_id == SpiffeId(SPIFFE_ID)
    claims = _claims(jwt_svid.token)
    assert claims["sub"] == SPIFFE_ID
    assert "iat" in claims and claims["exp"] == parsed.expiry
    assert 0 < parsed.expiry - time.time() <= 5 * 60 + 5, "default JWT-SVID TTL is 5 min"

    # A tampered signature does not validate.
    head, body, sig = jwt_svid.token.split(".")
    tampered = f"{head}.{body}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(ValidateJwtSvidError):
        client.validate_jwt_svid(tampered, "interop-test")


def test_caller_matching_no_entry_gets_no_identity_issued(fabric, raw_api_factory, workload_client_factory):
    # An entry exists, but for another uid: this caller must get nothing.
    fabric.create_entry("spiffe://example.org/test/other", f"unix:uid:{os.getuid() + 4242}")
    api = raw_api_factory(fabric)

    with pytest.raises(grpc.RpcError) as e:
        api.fetch_x509_svid()
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no identity issued" in e.value.details()

    with pytest.raises(grpc.RpcError) as e:
        api.fetch_jwt_svid(["interop-test"])
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no identity issued" in e.value.details()

    # py-spiffe surfaces it as a fetch error carrying the same message.
    client = workload_client_factory(fabric)
    with pytest.raises(FetchX509SvidError, match="no identity issued"):
        client.fetch_x509_svid()


def test_request_without_security_header_is_invalid_argument(fabric, own_uid_selector, raw_api_factory):
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    api = raw_api_factory(fabric)

    for call in (
        lambda h: api.fetch_x509_svid(with_header=h),
        lambda h: api.fetch_jwt_svid(["interop-test"], with_header=h),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(False)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "security header" in e.value.details()
        call(True)  # the same request with the header succeeds


def test_jwt_svid_without_audience_is_invalid_argument(fabric, own_uid_selector, raw_api_factory):
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    api = raw_api_factory(fabric)
    with pytest.raises(grpc.RpcError) as e:
        api.fetch_jwt_svid([])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "audience" in e.value.details()


def test_sha256_selector_matches_only_the_real_binary(fabric, raw_api_factory, workload_client_factory):
    # The caller is this Python interpreter; the server hashes /proc/<pid>/exe.
    exe = os.path.realpath("/proc/self/exe")
    right = sha256_file(exe)
    wrong = ("0" if right[0] != "0" else "1") + right[1:]

    fabric.create_entry("spiffe://example.org/test/wrong-hash", f"unix:sha256:{wrong}")
    api = raw_api_factory(fabric)
    with pytest.raises(grpc.RpcError) as e:
        api.fetch_x509_svid()
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()

    fabric.create_entry("spiffe://example.org/test/right-hash", f"unix:sha256:{right}")
    client = workload_client_factory(fabric)
    svids = client.fetch_x509_svids()
    assert [str(s.spiffe_id) for s in svids] == ["spiffe://example.org/test/right-hash"]


def test_path_selector_matches_the_callers_binary(fabric, raw_api_factory, workload_client_factory):
    exe = os.path.realpath("/proc/self/exe")
    fabric.create_entry("spiffe://example.org/test/other-path", "unix:path:/usr/bin/definitely-not-this")
    api = raw_api_factory(fabric)
    with pytest.raises(grpc.RpcError) as e:
        api.fetch_x509_svid()
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value.details()

    fabric.create_entry("spiffe://example.org/test/this-path", f"unix:path:{exe}", f"unix:uid:{os.getuid()}")
    client = workload_client_factory(fabric)
    assert [str(s.spiffe_id) for s in client.fetch_x509_svids()] == ["spiffe://example.org/test/this-path"]


def test_entries_for_several_identities_are_all_served(fabric, own_uid_selector, workload_client_factory):
    fabric.create_entry("spiffe://example.org/test/a", own_uid_selector)
    fabric.create_entry("spiffe://example.org/test/b", own_uid_selector, f"unix:gid:{os.getgid()}")
    client = workload_client_factory(fabric)
    ids = sorted(str(s.spiffe_id) for s in client.fetch_x509_svids())
    assert ids == ["spiffe://example.org/test/a", "spiffe://example.org/test/b"]


def test_deleted_entry_stops_issuing(fabric, own_uid_selector, raw_api_factory):
    entry_id = fabric.create_entry(SPIFFE_ID, own_uid_selector)
    api = raw_api_factory(fabric)
    assert api.fetch_x509_svid().svids[0].spiffe_id == SPIFFE_ID
    fabric.cli("entry", "delete", entry_id).ok()
    with pytest.raises(grpc.RpcError) as e:
        api.fetch_x509_svid()
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- helpers ---


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _issued_by(cert, issuer) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except Exception:
        return False
