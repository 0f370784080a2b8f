"""`keyless up` keeps its identity state across restarts on the same data dir:
trust domain, CA, JWT keys and registration entries survive, so what was
issued before the restart is still trusted after it."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from conftest import load_certs, openssl_verify, wait_until

SPIFFE_ID = "spiffe://example.org/test/py"


def test_restart_keeps_trust_domain_ca_keys_and_entries(fabric, own_uid_selector, tmp_path, workload_client_factory):
    entry_id = fabric.create_entry(SPIFFE_ID, own_uid_selector)
    before = fabric.fetch_svid_files(tmp_path / "before")
    jwt_before = fabric.fetch_jwt("restart-test")
    roots_before = {c.fingerprint(hashes.SHA256()) for c in load_certs(before["bundle"])}
    entries_before = fabric.list_entries()

    # Restart without --trust-domain: the stored one must be used.
    fabric.restart(trust_domain=None)
    assert any("example.org" in line for line in fabric.lines), fabric.logs()

    # Entries survive, with the same ids.
    entries_after = fabric.list_entries()
    assert [e["id"] for e in entries_after] == [e["id"] for e in entries_before] == [entry_id]
    assert entries_after[0]["spiffe_id"] == SPIFFE_ID

    # The same workload gets the same SPIFFE ID again.
    after = fabric.fetch_svid_files(tmp_path / "after")
    assert after["spiffe_id"] == SPIFFE_ID

    # The CA survived: same roots, and the pre-restart SVID verifies against the new bundle.
    roots_after = {c.fingerprint(hashes.SHA256()) for c in load_certs(after["bundle"])}
    assert roots_before <= roots_after, "a root trusted before the restart is gone"
    r = openssl_verify(before["svid"], after["bundle"], tmp_path / "v")
    assert r.returncode == 0, f"pre-restart SVID against post-restart bundle: {r.stdout}{r.stderr}"

    # JWT-SVIDs from before the restart still validate through the Workload API.
    client = workload_client_factory(fabric)
    assert str(client.validate_jwt_svid(jwt_before, "restart-test").spiffe_id) == SPIFFE_ID


def test_restart_with_another_trust_domain_is_refused(fabric_factory):
    fabric = fabric_factory()
    fabric.stop()
    fabric.start(trust_domain="other.org", expect_ready=False)

    def exited_or_ready():
        return fabric.proc.poll() is not None or any(line.strip() == "ready" for line in fabric.lines)

    wait_until(exited_or_ready, timeout=30, what="keyless up to exit (or wrongly become ready)")
    came_up = any(line.strip() == "ready" for line in fabric.lines)
    fabric.stop()
    assert not came_up, f"keyless up accepted another trust domain on the same data dir:\n{fabric.logs()}"
    assert fabric.proc.returncode != 0
    # The operator must learn what is wrong: the last line names the trust-domain clash.
    last = fabric.stderr_path.read_text().strip().splitlines()[-1]
    assert "trust domain" in last and "example.org" in last and "other.org" in last, (
        f"the error should say the data dir belongs to trust domain example.org, not other.org: {last}"
    )
