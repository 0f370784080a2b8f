"""Rotation as a client lives it: a held FetchX509SVID stream gets a fresh
SVID before the old one expires; after `keyless ca rotate` the old SVID still
verifies (the bundle holds both roots) and new SVIDs chain to the new CA;
after `keyless ca rotate --jwt` old JWT-SVIDs still validate."""

from __future__ import annotations

import base64
import json
import threading
import time

from cryptography.hazmat.primitives import hashes
from spiffe import TrustDomain

from conftest import TRUST_DOMAIN, load_certs, openssl_verify, wait_until

SPIFFE_ID = "spiffe://example.org/test/py"


class StreamRecorder:
    """Collects the X.509 contexts py-spiffe's watcher delivers (on its own thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.updates = []  # (received_at, leaf, intermediates, bundle roots)
        self.errors = []

    def on_success(self, ctx):
        svid = ctx.default_svid
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain(TRUST_DOMAIN))
        roots = set()
        if bundle is not None:
            roots = {r.fingerprint(hashes.SHA256()) for r in bundle.x509_authorities}
        with self.lock:
            self.updates.append((time.time(), svid.leaf, list(svid.cert_chain[1:]), roots))

    def on_error(self, err):
        with self.lock:
            self.errors.append(err)

    def snapshot(self):
        with self.lock:
            return list(self.updates), list(self.errors)


def _watch(client):
    rec = StreamRecorder()
    handle = client.stream_x509_contexts(rec.on_success, rec.on_error, retry_connect=False)
    return rec, handle


def test_stream_delivers_a_fresh_svid_before_the_old_one_expires(fabric, own_uid_selector, workload_client_factory):
    fabric.create_entry(SPIFFE_ID, own_uid_selector, x509_ttl="10s")
    client = workload_client_factory(fabric)
    rec, handle = _watch(client)
    try:

        def two_serials():
            updates, errors = rec.snapshot()
            assert not errors, f"stream error: {errors}"
            return len({u[1].serial_number for u in updates}) >= 2

        wait_until(two_serials, timeout=20, what="a second X509-SVID on the stream")
    finally:
        handle.cancel()

    updates, _ = rec.snapshot()
    first = updates[0]
    second = next(u for u in updates if u[1].serial_number != first[1].serial_number)
    first_expiry = first[1].not_valid_after_utc.timestamp()
    assert second[0] < first_expiry, (
        f"fresh SVID arrived {second[0] - first_expiry:.1f} s after the old one expired"
    )
    assert second[1].not_valid_after_utc > first[1].not_valid_after_utc
    lifetime = (second[1].not_valid_after_utc - second[1].not_valid_before_utc).total_seconds()
    assert 10 <= lifetime <= 70, f"rotated SVID lives {lifetime:.0f} s for a 10 s TTL"


def test_ca_rotation_keeps_old_svids_valid_and_signs_new_ones_with_the_new_ca(
    fabric, own_uid_selector, tmp_path, workload_client_factory
):
    fabric.create_entry(SPIFFE_ID, own_uid_selector, x509_ttl="1h")
    old = fabric.fetch_svid_files(tmp_path / "old")
    old_roots = {c.fingerprint(hashes.SHA256()) for c in load_certs(old["bundle"])}
    old_inter = load_certs(old["svid"])[1]

    # A workload holding the stream must hear about the rotation by itself.
    client = workload_client_factory(fabric)
    rec, handle = _watch(client)
    try:
        wait_until(lambda: rec.snapshot()[0], timeout=10, what="the first stream message")

        fabric.cli("ca", "rotate").ok()

        def rotated_on_stream():
            updates, errors = rec.snapshot()
            assert not errors, f"stream error: {errors}"
            return any(
                u[2] and u[2][0].fingerprint(hashes.SHA256()) != old_inter.fingerprint(hashes.SHA256())
                for u in updates
            )

        wait_until(rotated_on_stream, timeout=10, what="an SVID from the new CA on the held stream")
    finally:
        handle.cancel()

    new = fabric.fetch_svid_files(tmp_path / "new")
    new_roots = {c.fingerprint(hashes.SHA256()) for c in load_certs(new["bundle"])}
    assert old_roots < new_roots, "the new bundle must keep the old root and add the new one"

    # The SVID issued before the rotation still verifies against the new bundle.
    r = openssl_verify(old["svid"], new["bundle"], tmp_path / "v-old")
    assert r.returncode == 0, f"old SVID against new bundle: {r.stdout}{r.stderr}"

    # A new SVID chains to the new CA: another intermediate, a root the old bundle lacks.
    new_inter = load_certs(new["svid"])[1]
    assert new_inter.fingerprint(hashes.SHA256()) != old_inter.fingerprint(hashes.SHA256())
    r = openssl_verify(new["svid"], new["bundle"], tmp_path / "v-new")
    assert r.returncode == 0, f"new SVID against new bundle: {r.stdout}{r.stderr}"
    r = openssl_verify(new["svid"], old["bundle"], tmp_path / "v-cross")
    assert r.returncode != 0, "a post-rotation SVID verified against the pre-rotation bundle: the CA did not change"

    # The stream's bundle holds both roots too.
    updates, _ = rec.snapshot()
    assert old_roots < updates[-1][3], "the stream's bundle after rotation must hold the old and the new root"


def _kid(token: str) -> str:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]


def test_jwt_key_rotation_keeps_old_jwt_svids_valid(fabric, own_uid_selector, workload_client_factory):
    fabric.create_entry(SPIFFE_ID, own_uid_selector)
    before = fabric.fetch_jwt("rotation-test")
    fabric.cli("ca", "rotate", "--jwt").ok()
    after = fabric.fetch_jwt("rotation-test")
    assert _kid(before) != _kid(after), "the JWT-SVID after `ca rotate --jwt` is signed by the same key"

    client = workload_client_factory(fabric)
    for token in (before, after):
        assert str(client.validate_jwt_svid(token, "rotation-test").spiffe_id) == SPIFFE_ID

    # Relying parties that fetch the JWKS see both keys.
    keys = fabric.get("/spiffe/keys").json()["keys"]
    kids = {k.get("kid") for k in keys}
    assert {_kid(before), _kid(after)} <= kids
