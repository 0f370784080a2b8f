"""Shared Signals benchmark (issue 7), against real processes on loopback.

1. W5 → revocation latency. Fabric A (`keyless up`) runs the ladder and the
   transmitter; two receivers listen: a Python push endpoint (this script,
   verifying each SET with PyJWT) and fabric B (a second `keyless up`,
   subscribed with `keyless signals subscribe`). Each run: alice signs in
   (a new session), five anomalous tool calls through A's gateway climb
   W1→W5; the latency is from the W5 decision (the `risk.warning` W5 event's
   time in A's audit log) to the SET's arrival at the Python receiver, and
   to B's `caep.received` (B has verified and applied it). Then the W4 review
   is resolved so the next run can start. Sign-ins are rate limited per IP
   (20, then one per 6 s), so runs beyond 20 wait.
2. SETs/s through push: the Python receiver's own stream (its `ssf.manage`
   token, client credentials with its JWT-SVID) is paused, N verification
   SETs are queued, the stream is enabled, and the time until the last one
   arrived is measured (the receiver answers 202 without verifying here, so
   the transmitter is what is measured).
3. SETs/s through poll: N SETs queued on a poll stream, then polled with
   `maxEvents` 1000 and acknowledged until none is left.

    python bench/signals.py KEYLESS_BIN [RUNS] [N]
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))
from signin import claims, grant_consent, sign_in  # noqa: E402

AGENT = "spiffe://example.org/agent/bench"
RECEIVER = "spiffe://example.org/ssf/bench-receiver"
TYPES = ["directory_read", "directory_write", "directory_admin", "transfer_funds", "tool_call"]
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
OTHERS = ["bob@example.com", "carol@example.com", "dave@example.com", "bob@example.com", "carol@example.com"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fabric:
    def __init__(self, bin_: str, root: Path, name: str, td: str):
        self.bin = bin_
        self.dir = root / name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.pop("SPIFFE_ENDPOINT_SOCKET", None)
        # The demo catalog, with the loop breaker out of the way: every run
        # repeats the same five calls.
        demo = (Path(__file__).resolve().parent.parent / "crates" / "keyless-gateway" / "demo.toml").read_text()
        gw = root / f"{name}-gateway.toml"
        gw.write_text(demo.replace("{base}", self.base_url) + "\n[limits]\nloop_max_repeats = 100000000\n")
        self.proc = subprocess.Popen(
            [bin_, "up", "--data-dir", str(self.dir), "--listen", f"127.0.0.1:{self.port}", "--trust-domain", td,
             "--gateway-config", str(gw)],
            stdout=subprocess.PIPE, stderr=open(root / f"{name}.err", "w"), text=True, env=env,
        )
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.strip() == "ready":
                break
        else:
            sys.exit(f"{name}: keyless up did not become ready")
        self.cursor = 0

    def password(self, email: str) -> str:
        for line in self.lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == email:
                return parts[1]
        sys.exit(f"no password for {email}")

    def cli(self, *args: str) -> str:
        env = dict(os.environ)
        env.pop("SPIFFE_ENDPOINT_SOCKET", None)
        done = subprocess.run([self.bin, *args, "--data-dir", str(self.dir)], capture_output=True, text=True, timeout=30, env=env)
        if done.returncode != 0:
            sys.exit(f"`keyless {' '.join(args)}`: {done.stderr.strip()}")
        return done.stdout.strip()

    def new_events(self) -> list[dict]:
        """Audit events appended since the last call."""
        out = []
        while True:
            page = requests.get(f"{self.base_url}/audit/entries?start={self.cursor}&end={self.cursor + 1000}", timeout=10).json()
            out += [e["event"] for e in page["entries"]]
            self.cursor += len(page["entries"])
            if self.cursor >= page["size"] or not page["entries"]:
                return out

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Receiver:
    """A push endpoint: records arrival times; verifies SETs when asked."""

    def __init__(self, issuer: str, audience: str):
        self.jwks = jwt.PyJWKClient(f"{issuer}/ssf/jwks")
        self.issuer, self.audience = issuer, audience
        self.verify = True
        self.arrivals: list[tuple[float, str]] = []
        self.count = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                at = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                kind = ""
                if outer.verify:
                    key = outer.jwks.get_signing_key_from_jwt(body)
                    c = jwt.decode(body, key.key, algorithms=["ES256"], audience=outer.audience,
                                   issuer=outer.issuer, options={"verify_exp": False})
                    kind = next(iter(c["events"]))
                with outer.lock:
                    outer.count += 1
                    if kind:
                        outer.arrivals.append((at, kind))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def main():
    bin_ = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    root = Path(tempfile.mkdtemp(prefix="keyless-signals-bench-"))
    a = Fabric(bin_, root, "a", "example.org")
    b = Fabric(bin_, root, "b", "second.example")
    try:
        bench(a, b, runs, n)
    finally:
        a.stop()
        b.stop()
        subprocess.run(["rm", "-rf", str(root)])


def ssf_token(a: Fabric, scope: str) -> str:
    svid = a.cli("svid", "fetch", "--audience", a.base_url, "--spiffe-id", RECEIVER)
    r = requests.post(f"{a.base_url}/oauth2/token", data={
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe",
        "client_assertion": svid, "scope": scope}, timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


def bench(a: Fabric, b: Fabric, runs: int, n: int):
    uid = os.getuid()
    a.cli("entry", "create", "--spiffe-id", AGENT, "--selector", f"unix:uid:{uid}")
    a.cli("entry", "create", "--spiffe-id", RECEIVER, "--selector", f"unix:uid:{uid}")
    token = ssf_token(a, "ssf.manage ssf.read")
    auth = {"Authorization": f"Bearer {token}"}
    py = Receiver(a.base_url, RECEIVER)
    r = requests.post(f"{a.base_url}/ssf/stream", headers=auth, timeout=10, json={
        "delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": py.url},
        "events_requested": [SESSION_REVOKED, VERIFICATION]})
    r.raise_for_status()
    push_stream = r.json()["stream_id"]
    b.cli("signals", "subscribe", a.base_url)
    a.cli("signals", "push", f"{b.base_url}/ssf/push", "--aud", b.base_url)
    agent_jwt = a.cli("svid", "fetch", "--audience", f"{a.base_url}/mcp", "--spiffe-id", AGENT)

    # --- 1. W5 → revocation ---
    to_py, to_b = [], []
    password = a.password("alice@example.com")
    for i in range(runs):
        user = sign_in(a, "alice@example.com", password)
        if i == 0:
            grant_consent(user, a, AGENT, TYPES)
        user_token = user.refresh()
        assert AGENT in json.dumps(claims(user_token).get("may_act"))
        a.new_events()
        b.new_events()
        with py.lock:
            py.arrivals.clear()
        headers = {"Authorization": f"Bearer {agent_jwt}", "X-Keyless-Subject-Token": user_token,
                   "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": "2025-06-18"}
        for k, who in enumerate(OTHERS):
            body = {"jsonrpc": "2.0", "id": k, "method": "tools/call",
                    "params": {"name": "directory.get_user", "arguments": {"email": who}}}
            requests.post(f"{a.base_url}/mcp", json=body, headers=headers, timeout=10)
        events = a.new_events()
        w5 = [e for e in events if e["type"] == "risk.warning" and e["detail"].get("level") == "W5"]
        if not w5:
            sys.exit(f"run {i}: no W5 (levels: {[e['detail'].get('level') for e in events if e['type'] == 'risk.warning']})")
        decided = w5[0]["time"] / 1000
        deadline = time.time() + 10
        got_py = got_b = None
        while time.time() < deadline and (got_py is None or got_b is None):
            with py.lock:
                hits = [t for t, k in py.arrivals if k == SESSION_REVOKED]
            if hits and got_py is None:
                got_py = hits[0]
            if got_b is None:
                rec = [e for e in b.new_events() if e["type"] == "caep.received" and e["detail"].get("event_type") == SESSION_REVOKED]
                if rec:
                    got_b = rec[0]["time"] / 1000
            time.sleep(0.005)
        if got_py is None or got_b is None:
            sys.exit(f"run {i}: a receiver did not get session-revoked (python {got_py}, keyless {got_b})")
        to_py.append(1000 * (got_py - decided))
        to_b.append(1000 * (got_b - decided))
        for rv in json.loads(a.cli("signals", "reviews")):
            if not rv.get("resolved_at"):
                a.cli("signals", "resolve", rv["id"])
        print(f"run {i + 1}/{runs}: python +{to_py[-1]:.1f} ms, keyless +{to_b[-1]:.1f} ms", flush=True)

    # --- 2. push SETs/s ---
    py.verify = False
    r = requests.post(f"{a.base_url}/ssf/status", headers=auth, timeout=10,
                      json={"stream_id": push_stream, "status": "paused"})
    r.raise_for_status()
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda i: requests.post(f"{a.base_url}/ssf/verify", headers=auth, timeout=10,
                                             json={"stream_id": push_stream, "state": str(i)}).raise_for_status(), range(n)))
    with py.lock:
        py.count = 0
    started = time.time()
    requests.post(f"{a.base_url}/ssf/status", headers=auth, timeout=10,
                  json={"stream_id": push_stream, "status": "enabled"}).raise_for_status()
    while py.count < n and time.time() - started < 300:
        time.sleep(0.005)
    push_secs = time.time() - started
    push_rate = py.count / push_secs

    # --- 3. poll SETs/s ---
    r = requests.post(f"{a.base_url}/ssf/stream", headers=auth, timeout=10, json={"events_requested": [VERIFICATION]})
    r.raise_for_status()
    poll_stream, poll_url = r.json()["stream_id"], r.json()["delivery"]["endpoint_url"]
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda i: requests.post(f"{a.base_url}/ssf/verify", headers=auth, timeout=10,
                                             json={"stream_id": poll_stream, "state": str(i)}).raise_for_status(), range(n)))
    got, ack = 0, []
    s = requests.Session()
    started = time.time()
    while True:
        r = s.post(poll_url, headers=auth, timeout=30, json={"maxEvents": 1000, "returnImmediately": True, "ack": ack})
        r.raise_for_status()
        sets = r.json()["sets"]
        if not sets:
            break
        got += len(sets)
        ack = list(sets)
    poll_secs = time.time() - started
    poll_rate = got / poll_secs

    print()
    print("| receiver | runs | p50 | p99 | max |")
    print("|---|---|---|---|---|")
    for name, xs in (("Python (PyJWT verifies, push)", to_py), ("second keyless (verified + applied, push)", to_b)):
        print(f"| {name} | {len(xs)} | {statistics.median(xs):.1f} ms | {pct(xs, 99):.1f} ms | {max(xs):.1f} ms |")
    print()
    print(f"push: {py.count} SETs in {push_secs:.2f} s = {push_rate:,.0f} SETs/s (one stream, in order)")
    print(f"poll: {got} SETs in {poll_secs:.2f} s = {poll_rate:,.0f} SETs/s (maxEvents 1000, with ack)")
    print("goal: W5 → receiver p99 <= 50 ms on loopback")


if __name__ == "__main__":
    main()
