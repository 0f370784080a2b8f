"""`keyless entry create` refuses malformed SPIFFE IDs, selectors and TTLs
with exit code 2 and one line on stderr, and stores nothing."""

from __future__ import annotations

import os

import pytest

from conftest import Fabric

UID = f"unix:uid:{os.getuid()}"
GOOD_ID = "spiffe://example.org/test/py"

CASES = [
    # (what, spiffe id, selectors, extra flags)
    ("http scheme", "http://x/y", [UID], []),
    ("uppercase trust domain", "spiffe://UPPER/x", [UID], []),
    ("empty path segment", "spiffe://td/a//b", [UID], []),
    ("dot-dot segment", "spiffe://td/../x", [UID], []),
    ("dot segment", "spiffe://td/./x", [UID], []),
    ("trailing slash", "spiffe://td/x/", [UID], []),
    ("query", "spiffe://td/x?y=1", [UID], []),
    ("port", "spiffe://td:8080/x", [UID], []),
    ("no path", "spiffe://example.org", [UID], []),
    ("non-numeric uid", GOOD_ID, ["unix:uid:abc"], []),
    ("bare selector", GOOD_ID, ["foo"], []),
    ("bad sha256", GOOD_ID, ["unix:sha256:xyz"], []),
    ("short sha256", GOOD_ID, ["unix:sha256:abcd"], []),
    ("unknown selector key", GOOD_ID, ["unix:color:red"], []),
    ("x509 ttl not a duration", GOOD_ID, [UID], ["--x509-ttl", "ten"]),
    ("x509 ttl zero", GOOD_ID, [UID], ["--x509-ttl", "0s"]),
    ("jwt ttl not a duration", GOOD_ID, [UID], ["--jwt-ttl", "ten"]),
    ("jwt ttl zero", GOOD_ID, [UID], ["--jwt-ttl", "0s"]),
]


@pytest.fixture(scope="module")
def shared_fabric(tmp_path_factory):
    """One fabric for the whole module: these tests only read its state."""
    f = Fabric(tmp_path_factory.mktemp("fabric") / "data")
    try:
        f.start()
        yield f
    finally:
        f.stop()


@pytest.mark.parametrize("what,spiffe_id,selectors,extra", CASES, ids=[c[0] for c in CASES])
def test_malformed_entry_input_exits_2_with_one_line(shared_fabric, what, spiffe_id, selectors, extra):
    args = ["entry", "create", "--spiffe-id", spiffe_id]
    for s in selectors:
        args += ["--selector", s]
    result = shared_fabric.cli(*args, *extra)
    assert result.code == 2, f"{what}: exit {result.code}, stdout {result.stdout!r}, stderr {result.stderr!r}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{what}: expected one line on stderr, got {result.stderr!r}"
    assert lines[0].strip(), f"{what}: empty error line"
    assert result.stdout.strip() == "", f"{what}: printed {result.stdout!r}"


def test_nothing_was_stored_by_refused_input(shared_fabric):
    for what, spiffe_id, selectors, extra in CASES:
        args = ["entry", "create", "--spiffe-id", spiffe_id]
        for s in selectors:
            args += ["--selector", s]
        assert shared_fabric.cli(*args, *extra).code == 2, what
    assert shared_fabric.list_entries() == []
    # The table form shows only its header.
    table = shared_fabric.cli("entry", "list").ok().stdout.strip().splitlines()
    assert len(table) == 1 and "SPIFFE ID" in table[0], table


def test_entry_for_another_trust_domain_is_refused(shared_fabric):
    result = shared_fabric.cli("entry", "create", "--spiffe-id", "spiffe://elsewhere.org/x", "--selector", UID)
    assert result.code != 0, "an entry outside the fabric's trust domain was accepted"
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not any(e["spiffe_id"] == "spiffe://elsewhere.org/x" for e in shared_fabric.list_entries())


def test_valid_entry_round_trips(shared_fabric):
    entry_id = shared_fabric.create_entry(GOOD_ID, UID, x509_ttl="90s", jwt_ttl="2m")
    try:
        entries = shared_fabric.list_entries()
        (entry,) = [e for e in entries if e["id"] == entry_id]
        assert entry["spiffe_id"] == GOOD_ID
        assert entry["selectors"] == [UID]
    finally:
        shared_fabric.cli("entry", "delete", entry_id).ok()
    # An id is deletable exactly once.
    again = shared_fabric.cli("entry", "delete", entry_id)
    assert again.code != 0 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert not any(e["id"] == entry_id for e in shared_fabric.list_entries())
