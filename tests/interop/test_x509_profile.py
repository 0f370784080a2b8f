"""X509-SVIDs as OpenSSL and `cryptography` see them: the chain verifies
against the bundle, and the leaf and CA certificates have the profile the
X509-SVID specification requires (standards.md, "X509-SVID")."""

from __future__ import annotations

import datetime as dt
import subprocess
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import load_certs, openssl_bin, openssl_verify

SPIFFE_ID = "spiffe://example.org/test/py"
TTL_SECONDS = 600  # the entry's --x509-ttl below


def _fetch(fabric, own_uid_selector, tmp_path):
    fabric.create_entry(SPIFFE_ID, own_uid_selector, x509_ttl="10m")
    t0 = time.time()
    files = fabric.fetch_svid_files(tmp_path / "svid")
    t1 = time.time()
    assert files["spiffe_id"] == SPIFFE_ID
    return files, t0, t1


def test_openssl_verifies_the_leaf_against_the_bundle(fabric, own_uid_selector, tmp_path):
    files, _, _ = _fetch(fabric, own_uid_selector, tmp_path)
    chain = load_certs(files["svid"])
    assert len(chain) >= 2, "expected the leaf and its intermediate in svid.pem"

    r = openssl_verify(files["svid"], files["bundle"], tmp_path / "v")
    assert r.returncode == 0 and r.stdout.strip().endswith(": OK"), r.stdout + r.stderr
    # An SVID serves both ends of mTLS.
    for purpose in ("sslclient", "sslserver"):
        r = openssl_verify(files["svid"], files["bundle"], tmp_path / "v", "-purpose", purpose)
        assert r.returncode == 0, f"-purpose {purpose}: {r.stdout}{r.stderr}"

    # Without the intermediate the leaf does not chain: the intermediate is what signs.
    leaf_only = tmp_path / "leaf-only.pem"
    leaf_only.write_text(files["svid"].read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    r = openssl_verify(leaf_only, files["bundle"], tmp_path / "v2")
    assert r.returncode != 0, "leaf verified without its intermediate"

    # The private key matches the leaf.
    key_pub = subprocess.run(
        [openssl_bin(), "pkey", "-in", str(files["key"]), "-pubout"], capture_output=True, text=True, timeout=30
    )
    cert_pub = subprocess.run(
        [openssl_bin(), "x509", "-in", str(tmp_path / "v" / "leaf.pem"), "-noout", "-pubkey"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert key_pub.returncode == 0, key_pub.stderr
    assert key_pub.stdout == cert_pub.stdout
    assert (files["key"].stat().st_mode & 0o077) == 0, "svid.key is readable by others"


def test_leaf_has_the_x509_svid_profile(fabric, own_uid_selector, tmp_path):
    files, t0, t1 = _fetch(fabric, own_uid_selector, tmp_path)
    leaf = load_certs(files["svid"])[0]

    # Exactly one URI SAN, the SPIFFE ID.
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [SPIFFE_ID]

    # Key usage: critical, digitalSignature, never a CA usage.
    ku_ext = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku_ext.critical
    ku = ku_ext.value
    assert ku.digital_signature
    assert not ku.key_cert_sign
    assert not ku.crl_sign

    # EKU: serverAuth and clientAuth.
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku

    # Not a CA.
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False

    # Lifetime: the entry's TTL from issuance, plus a few seconds of backdating.
    not_before = leaf.not_valid_before_utc.timestamp()
    not_after = leaf.not_valid_after_utc.timestamp()
    assert not_before <= t1 + 1, "notBefore is in the future"
    assert t0 - not_before <= 60, f"notBefore backdated by {t0 - not_before:.0f} s"
    assert t0 + TTL_SECONDS - 5 <= not_after <= t1 + TTL_SECONDS + 5, (
        f"notAfter is {not_after - t0:.0f} s after the fetch, TTL is {TTL_SECONDS} s"
    )
    lifetime = not_after - not_before
    assert TTL_SECONDS <= lifetime <= TTL_SECONDS + 60, f"lifetime {lifetime:.0f} s for a {TTL_SECONDS} s TTL"

    # OpenSSL reads the same profile.
    leaf_pem = tmp_path / "leaf.pem"
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    text = subprocess.run(
        [openssl_bin(), "x509", "-in", str(leaf_pem), "-noout", "-text"], capture_output=True, text=True, timeout=30
    )
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "X509v3 Key Usage: critical" in out
    assert "Digital Signature" in out
    assert "Certificate Sign" not in out
    assert "TLS Web Server Authentication" in out and "TLS Web Client Authentication" in out
    assert "CA:FALSE" in out
    assert out.count("URI:") == 1 and f"URI:{SPIFFE_ID}" in out


def test_ca_certificates_have_the_signing_profile(fabric, own_uid_selector, tmp_path):
    files, _, _ = _fetch(fabric, own_uid_selector, tmp_path)
    chain = load_certs(files["svid"])
    roots = load_certs(files["bundle"])
    assert roots, "empty bundle.pem"
    for ca in chain[1:] + roots:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.value.ca is True, f"{ca.subject.rfc4514_string()} is not a CA"
        ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.key_cert_sign
        # A CA's SPIFFE ID, if it has one, is the trust domain's: no path.
        try:
            san = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            assert uri == "spiffe://example.org", f"CA URI SAN {uri}"
    # The leaf expires no later than the intermediate that signed it.
    leaf, inter = chain[0], chain[1]
    assert leaf.not_valid_after_utc <= inter.not_valid_after_utc
    assert inter.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(minutes=10)
