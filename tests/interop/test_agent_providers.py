"""The agent host with a real provider wire format, through the real fabric:
`keyless up --model anthropic|openai --model-url <local fixture server>`.

The fixture server replays the recorded provider responses of
`crates/keyless-agent/tests/fixtures/` and records every request. The tool
calls the model proposes go through the real gateway to the real demo
directory and bank; the provider key comes from the secrets broker only
(put there with `keyless secrets kv put`), never from env or a file:

- before the key is in the broker, a chat turn answers with an error that
  says where to put it (and the provider is never called);
- with it, the provider gets the key in its own header, the tool loop runs
  (tool_use → the gateway → tool_result in the second request), and the
  final answer streams back;
- a provider error reaches the user as a message, not a hang;
- the key appears in no file of the data dir (the broker stores it sealed).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from chat import chat
from conftest import ROOT
from signin import grant_consent, sign_in
from test_gateway import demo_password

FIXTURES = ROOT / "crates" / "keyless-agent" / "tests" / "fixtures"
AGENT = "spiffe://example.org/agent/assistant"
TYPES = ["tool_call", "directory_read", "directory_write", "directory_admin", "transfer_funds"]
TIMEOUT = 30

PROVIDERS = {
    "anthropic": {
        "path": "/v1/messages",
        "turn": ["anthropic_tool_use.sse", "anthropic_final.sse"],
        # Anthropic reports overload inside a 200 stream, as an `error` event.
        "error": (200, "anthropic_overloaded.sse", "overloaded"),
        "key_header": "x-api-key",
        "unauthorized": "anthropic_401.json",
        "key": "sk-ant-fixture-0123456789abcdef",
        "tool": "directory.list_users",
        "tool_result_in": lambda body: [
            b for m in body["messages"] if m["role"] == "user" and isinstance(m["content"], list)
            for b in m["content"] if b.get("type") == "tool_result"
        ],
    },
    "openai": {
        "path": "/v1/chat/completions",
        "turn": ["openai_tool_calls.sse", "openai_final.sse"],
        "error": (429, "openai_429.json", "429"),
        "key_header": "authorization",
        "unauthorized": "openai_401.json",
        "key": "sk-proj-fixture-0123456789abcdef",
        "tool": "directory.get_user",
        "tool_result_in": lambda body: [m for m in body["messages"] if m["role"] == "tool"],
    },
}


class FixtureProvider:
    """Replays queued fixture files (status, file) and records requests."""

    def __init__(self):
        self.queue: list[tuple[int, str]] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with owner.lock:
                    owner.requests.append({
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(body or b"{}"),
                    })
                    status, name = owner.queue.pop(0) if owner.queue else (500, None)
                data = (FIXTURES / name).read_bytes() if name else b'{"error":{"message":"no fixture queued"}}'
                self.send_response(status)
                kind = "text/event-stream" if name and name.endswith(".sse") else "application/json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_provider_tool_loop_with_the_key_from_the_broker(fabric_factory, provider):
    p = PROVIDERS[provider]
    fixture = FixtureProvider()
    try:
        fabric = fabric_factory(start=False)
        fabric.extra_args = ["--model", provider, "--model-url", fixture.url + ("/v1" if provider == "openai" else ""),
                             "--model-name", "fixture-model"]
        fabric.start()
        base = fabric.base_url
        assert requests.get(f"{base}/api/config", timeout=TIMEOUT).json()["model"] == f"{provider}:fixture-model"
        user = sign_in(fabric, "alice@example.com", demo_password(fabric, "alice@example.com"))
        grant_consent(user, fabric, AGENT, TYPES)
        token = user.refresh()

        # No key in the broker yet: a clear message, and no provider call.
        events = chat(base, token, "list users")
        errors = [e["message"] for k, e in events if k == "error"]
        assert errors and f"keyless secrets kv put keyless/agent/{provider} api_key=" in errors[0], events
        assert fixture.requests == []

        fabric.cli("secrets", "kv", "put", f"keyless/agent/{provider}", f"api_key={p['key']}").ok()
        fixture.queue = [(200, f) for f in p["turn"]]
        events = chat(base, token, "who is in the directory?")
        kinds = [k for k, _ in events]
        assert "error" not in kinds, events
        calls = [e for k, e in events if k == "tool_call"]
        results = [e for k, e in events if k == "tool_result"]
        assert calls and calls[0]["tool"] == p["tool"], events
        # The real gateway and the real demo directory answered.
        assert results[0]["ok"] is True and "@example.com" in results[0]["text"], results
        text = "".join(e["delta"] for k, e in events if k == "text")
        assert text.strip(), events

        assert len(fixture.requests) == 2, fixture.requests
        first, second = fixture.requests
        assert first["path"] == p["path"], first["path"]
        got = first["headers"][p["key_header"]]
        assert got in (p["key"], f"Bearer {p['key']}"), "the provider did not get the broker's key"
        # Provider-safe names: no dots; the gateway's tools are all offered.
        names = [t.get("name") or t["function"]["name"] for t in first["body"]["tools"]]
        assert "directory__list_users" in names and all("." not in n for n in names), names
        # The second request carries the real tool result back to the model.
        fed_back = p["tool_result_in"](second["body"])
        assert fed_back and "@example.com" in json.dumps(fed_back), second["body"]["messages"]
        # The model never sees a token: nothing JWT-shaped went to the provider.
        for r in fixture.requests:
            assert "eyJ" not in json.dumps(r["body"]), "a token reached the model provider"

        # A provider error reaches the user as a message.
        status, name, says = p["error"]
        fixture.queue = [(status, name)]
        events = chat(base, token, "list users")
        errors = [e["message"] for k, e in events if k == "error"]
        assert errors and says in errors[0].lower(), events

        # The key is rotated in the broker: the host holds the old one until
        # the provider refuses it, then reads the new one for the next turn.
        rotated = p["key"] + "-rotated"
        fabric.cli("secrets", "kv", "put", f"keyless/agent/{provider}", f"api_key={rotated}").ok()
        fixture.queue = [(401, p["unauthorized"])] + [(200, f) for f in p["turn"]]
        events = chat(base, token, "list users")
        errors = [e["message"] for k, e in events if k == "error"]
        assert errors and "401" in errors[0], events
        refused_with = fixture.requests[-1]["headers"][p["key_header"]]
        assert refused_with.endswith(p["key"]), "the held key was not the one refused"
        events = chat(base, token, "who is in the directory?")
        assert "error" not in [k for k, _ in events], events
        assert fixture.requests[-1]["headers"][p["key_header"]].endswith(rotated), "the rotated key was not read"

        # The key is at rest nowhere in plain text.
        for f in Path(fabric.data_dir).rglob("*"):
            if f.is_file() and not f.is_socket():
                assert p["key"].encode() not in f.read_bytes(), f"the provider key is in plain text in {f}"
                assert rotated.encode() not in f.read_bytes(), f"the rotated key is in plain text in {f}"
    finally:
        fixture.close()
