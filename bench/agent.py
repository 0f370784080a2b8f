"""Agent host benchmark (issue 8), against a real `keyless up` on loopback.

1. Start → `ready`: the time from spawning `keyless up` to its `ready` line,
   STARTS times on a new data dir each, and STARTS times on one existing
   data dir (goal ≤ 1 s on an existing one).
2. RSS: idle after start, then after TURNS chat turns with the scripted
   model. Alice signs in (code + PKCE through the login form), consents to
   the console's agent, and sends "list users" TURNS times through
   `POST /api/chat`, each read to its `done` event (a tool call through the
   gateway: JWT-SVID, token exchange, single-use OBO token at the demo
   directory, audit). The demo catalog runs with its loop breaker and rate
   limits out of the way: the same call repeats on purpose.

    python bench/agent.py KEYLESS_BIN [TURNS] [STARTS]
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))
from chat import chat  # noqa: E402
from signin import grant_consent, sign_in  # noqa: E402

AGENT_PATH = "/agent/assistant"
TYPES = ["tool_call", "directory_read", "directory_write", "directory_admin", "transfer_funds"]
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Fabric:
    def __init__(self, bin_: str, data: Path, gateway_config: Path | None = None):
        self.bin, self.data, self.gateway_config = bin_, data, gateway_config
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.lines: list[str] = []

    def start(self) -> float:
        env = dict(os.environ)
        env.pop("SPIFFE_ENDPOINT_SOCKET", None)
        args = [self.bin, "up", "--data-dir", str(self.data), "--listen", f"127.0.0.1:{self.port}",
                "--trust-domain", "example.org"]
        if self.gateway_config:
            args += ["--gateway-config", str(self.gateway_config)]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == "ready":
                return time.perf_counter() - t0
        raise SystemExit(f"keyless up exited before ready:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def password(self, email: str) -> str:
        for line in self.lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == email:
                return parts[1]
        raise SystemExit(f"no password for {email}")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    bin_ = sys.argv[1]
    turns = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    starts = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    tmp = Path(tempfile.mkdtemp(prefix="keyless-bench-agent-"))

    new_dir = []
    for i in range(starts):
        f = Fabric(bin_, tmp / f"new-{i}")
        new_dir.append(f.start())
        f.stop()
    existing = Fabric(bin_, tmp / "new-0")
    again = []
    for _ in range(starts):
        again.append(existing.start())
        existing.stop()
    print(f"start → ready, new data dir:      median {statistics.median(new_dir) * 1000:.0f} ms "
          f"(min {min(new_dir) * 1000:.0f}, max {max(new_dir) * 1000:.0f}) over {starts}")
    print(f"start → ready, existing data dir: median {statistics.median(again) * 1000:.0f} ms "
          f"(min {min(again) * 1000:.0f}, max {max(again) * 1000:.0f}) over {starts}")

    gw = tmp / "gateway.toml"
    demo = (ROOT / "crates" / "keyless-gateway" / "demo.toml").read_text()
    f = Fabric(bin_, tmp / "chat", gw)
    gw.write_text(demo.replace("{base}", f.base_url)
                  + "\n[limits]\nloop_max_repeats = 100000000\nagent_calls_per_minute = 100000000\n"
                  + "user_calls_per_minute = 100000000\n")
    f.start()
    try:
        time.sleep(2)
        idle = rss_mb(f.proc.pid)
        user = sign_in(f, "alice@example.com", f.password("alice@example.com"))
        grant_consent(user, f, f"spiffe://example.org{AGENT_PATH}", TYPES)
        token = user.refresh()
        conversation = None
        lat = []
        t0 = time.perf_counter()
        for i in range(turns):
            # A new conversation every 10 turns: history stays bounded, as in use.
            if i % 10 == 0:
                conversation = None
            s = time.perf_counter()
            events = chat(f.base_url, token, "list users", conversation, timeout=60)
            conversation = events[0][1]["conversation_id"]
            kinds = [k for k, _ in events]
            lat.append(time.perf_counter() - s)
            if "tool_result" not in kinds or "error" in kinds:
                raise SystemExit(f"turn {i}: {kinds}")
            if i % 200 == 199:
                token = user.refresh()
        wall = time.perf_counter() - t0
        after = rss_mb(f.proc.pid)
        print(f"RSS idle: {idle:.1f} MB; after {turns} chat turns: {after:.1f} MB")
        print(f"chat turns: {turns / wall:.1f} turns/s, p50 {pct(lat, 50) * 1000:.1f} ms, "
              f"p99 {pct(lat, 99) * 1000:.1f} ms (one tool call through the gateway each)")
    finally:
        f.stop()


if __name__ == "__main__":
    main()
