"""A client of the console's chat API (`POST /api/chat` → Server-Sent
Events), shared by the interop tests and bench/agent.py."""

from __future__ import annotations

import json

import requests

TIMEOUT = 30


def read_turn(resp: requests.Response) -> list[tuple[str, dict]]:
    """The (event, data) pairs of one streamed turn, up to its `done`."""
    events, kind = [], None
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            events.append((kind, json.loads(line[5:])))
            if kind == "done":
                break
    return events


def chat(base: str, token: str, message: str, conversation_id: str | None = None,
         timeout: float = TIMEOUT) -> list[tuple[str, dict]]:
    """One turn, read to its `done` event; fails on anything but a stream."""
    body = {"message": message}
    if conversation_id:
        body["conversation_id"] = conversation_id
    with requests.post(f"{base}/api/chat", json=body, headers={"Authorization": f"Bearer {token}"},
                       stream=True, timeout=timeout) as r:
        assert r.status_code == 200, f"{r.status_code}: {r.text[:300]}"
        assert r.headers["content-type"].startswith("text/event-stream")
        events = read_turn(r)
    assert events and events[-1][0] == "done", events
    return events
