"""The console's JSON API (`/api/*`) against `keyless up`: what a browser
(or anyone) may and may not do with it.

- `/api/config` is public and says how to sign in; nothing else is.
- `/api/chat` takes the signed-in user's own access token: none, a forged
  one, an agent's on-behalf-of token, or one whose session ended are
  refused, and bad bodies (oversized, empty, unknown fields, not JSON) get a
  clear 4xx before anything runs. A conversation belongs to its user:
  someone else's id is "not found", like an unknown one.
- The read-only views answer the signed-in user, and bad parameters are 400.
- A bad `--model` setting refuses to start before the data dir is touched.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from chat import read_turn
from conftest import free_port, keyless_bin
from signin import add_user, grant_consent, log_out, sign_in
from test_gateway import demo_password
from test_sts import READ_DETAIL, exchange

AGENT = "spiffe://example.org/agent/assistant"
OBO_AGENT = "spiffe://example.org/agent/console-api-interop"
TYPES = ["tool_call", "directory_read", "directory_write", "directory_admin", "transfer_funds"]
TIMEOUT = 30


def post_chat(base: str, token: str | None, body, **headers) -> requests.Response:
    h = dict(headers)
    if token:
        h["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    h.setdefault("Content-Type", "application/json")
    return requests.post(f"{base}/api/chat", data=data, headers=h, timeout=TIMEOUT)


@pytest.fixture
def alice(fabric):
    user = sign_in(fabric, "alice@example.com", demo_password(fabric, "alice@example.com"))
    grant_consent(user, fabric, AGENT, TYPES)
    user.refresh()
    return user


def test_config_is_public_and_says_how_to_sign_in(fabric):
    cfg = requests.get(f"{fabric.base_url}/api/config", timeout=TIMEOUT)
    assert cfg.status_code == 200
    body = cfg.json()
    assert body["client_id"] == "keyless-console"
    assert body["redirect_uri"] == f"{fabric.base_url}/callback"
    assert body["agent"] == AGENT and body["model"] == "scripted"
    assert cfg.headers["cache-control"] == "no-store"
    # The app itself is served with a strict CSP.
    page = requests.get(f"{fabric.base_url}/", timeout=TIMEOUT)
    assert page.status_code == 200 and "<script" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/api/identities", "/api/leases", "/api/streams", "/api/timeline",
                                  "/api/audit/verify"])
def test_views_need_a_signed_in_user(fabric, path):
    assert requests.get(f"{fabric.base_url}{path}", timeout=TIMEOUT).status_code == 401
    forged = requests.get(f"{fabric.base_url}{path}", headers={"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."},
                          timeout=TIMEOUT)
    assert forged.status_code == 401


def test_chat_refuses_bad_callers_and_bad_bodies_before_running(fabric, alice, own_uid_selector):
    base, token = fabric.base_url, alice.access_token
    size_before = requests.get(f"{base}/audit/entries?start=0&end=0", timeout=TIMEOUT).json()["size"]

    assert post_chat(base, None, {"message": "list users"}).status_code == 401
    assert post_chat(base, "not-a-token", {"message": "list users"}).status_code == 401
    # An agent's on-behalf-of token never speaks for the user here.
    fabric.create_entry(OBO_AGENT, own_uid_selector)
    grant_consent(alice, fabric, OBO_AGENT, TYPES)
    exchanged = exchange(fabric, alice.refresh(), fabric.fetch_jwt(base), [READ_DETAIL])
    assert exchanged.status_code == 200, exchanged.text
    obo = post_chat(base, exchanged.json()["access_token"], {"message": "list users"})
    assert obo.status_code == 403 and obo.json()["error"] == "access_denied", obo.text
    token = alice.access_token

    cases = [
        (b"x" * (17 * 1024), 413, "request_too_large"),
        ({"message": "x" * 4001}, 413, "request_too_large"),
        ({"message": "   "}, 400, "invalid_request"),
        ({"message": "list users", "model": "gpt-5"}, 400, "invalid_request"),
        ({"msg": "list users"}, 400, "invalid_request"),
        (b"not json", 400, "invalid_request"),
        ({"message": "list users", "conversation_id": "0123456789abcdef0123456789abcdef"}, 404, "not_found"),
    ]
    for body, status, error in cases:
        resp = post_chat(base, token, body)
        assert resp.status_code == status, (body if isinstance(body, dict) else body[:20], resp.text[:300])
        assert resp.json()["error"] == error, resp.text
    # Nothing ran: no tool call reached the audit log.
    entries = requests.get(f"{base}/audit/entries?start={size_before}&end={size_before + 1000}",
                           timeout=TIMEOUT).json()["entries"]
    assert not [e for e in entries if e["event"]["type"].startswith("tool.")], entries


def test_a_conversation_belongs_to_its_user(fabric, alice):
    base = fabric.base_url
    with requests.post(f"{base}/api/chat", json={"message": "list applications"},
                       headers={"Authorization": f"Bearer {alice.access_token}"}, stream=True,
                       timeout=TIMEOUT) as first:
        assert first.status_code == 200
        events = read_turn(first)
    conversation = events[0][1]["conversation_id"]
    assert any(k == "tool_result" and e["ok"] for k, e in events), events

    # Alice continues it.
    with requests.post(f"{base}/api/chat", json={"message": "list users", "conversation_id": conversation},
                       headers={"Authorization": f"Bearer {alice.access_token}"}, stream=True,
                       timeout=TIMEOUT) as again:
        assert again.status_code == 200
        assert read_turn(again)[0][1]["conversation_id"] == conversation

    # Carol, another signed-in user, cannot read or continue it.
    add_user(fabric, "carol@example.com", "carol-password-123")
    carol = sign_in(fabric, "carol@example.com", "carol-password-123")
    resp = post_chat(base, carol.access_token, {"message": "list users", "conversation_id": conversation})
    assert resp.status_code == 404 and resp.json()["error"] == "not_found", resp.text


def test_chat_after_sign_out_asks_to_sign_in_again(fabric, alice):
    log_out(alice, fabric)
    resp = post_chat(fabric.base_url, alice.access_token, {"message": "list users"})
    assert resp.status_code == 401, resp.text
    assert "sign in again" in resp.json()["error_description"]
    assert resp.headers["www-authenticate"].startswith("Bearer ")


def test_timeline_counts_decisions_and_checks_its_parameter(fabric, alice):
    base = fabric.base_url
    auth = {"Authorization": f"Bearer {alice.access_token}"}
    with requests.post(f"{base}/api/chat", json={"message": "list users"}, headers=auth, stream=True,
                       timeout=TIMEOUT) as r:
        read_turn(r)
    tl = requests.get(f"{base}/api/timeline?minutes=5", headers=auth, timeout=TIMEOUT)
    assert tl.status_code == 200, tl.text
    buckets = tl.json()["buckets"]
    assert len(buckets) == 5
    assert sum(b["success"] for b in buckets) >= 2, buckets  # at least the exchange and the tool call
    for bad in ["0", "1441", "abc", "-3"]:
        resp = requests.get(f"{base}/api/timeline?minutes={bad}", headers=auth, timeout=TIMEOUT)
        assert resp.status_code == 400, (bad, resp.text)
    verify = requests.get(f"{base}/api/audit/verify", headers=auth, timeout=TIMEOUT).json()
    assert verify["ok"] is True and verify["size"] > 0, verify
    # The fabric's own push stream to its receiver (created at start).
    streams = requests.get(f"{base}/api/streams", headers=auth, timeout=TIMEOUT).json()["streams"]
    assert any(st["delivery"]["endpoint_url"] == f"{base}/ssf/push" for st in streams), streams
    # The agent's registration is in memory only, so not listed; the SVIDs
    # it was issued are.
    ids = requests.get(f"{base}/api/identities", headers=auth, timeout=TIMEOUT).json()
    assert any(e["agent"] == AGENT for e in ids["svids"]), ids["svids"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "gpt"], "unknown --model `gpt`"),
        (["--model-url", "http://127.0.0.1:1"], "need --model anthropic or --model openai"),
        (["--model", "openai", "--model-url", "ftp://x"], "must be http or https"),
    ],
)
def test_bad_model_settings_refuse_to_start(tmp_path, args, message):
    done = subprocess.run(
        [str(keyless_bin()), "up", "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{free_port()}", *args],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    assert message in last, done.stderr
    assert not (tmp_path / "d").exists(), "a refused start touched the data dir"
