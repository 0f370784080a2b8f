"""Prepares bench/gateway.sh against a running `keyless up`.

Alice (a demo user; `up` printed her one-time password, passed here) signs
in through the login form, consents to the bench agent for the demo RAR
types, and refreshes so `may_act` names the agent; the agent is registered
(own uid) and fetches a JWT-SVID for the gateway (`BASE/mcp`). Writes:

- OUT/gateway.headers: the two header lines every gateway call carries;
- OUT/gateway.body: a tier-1 `tools/call` of `directory.list_applications`;
- OUT/direct.body: the same call as the demo upstream names it;
- OUT/exchange.form: the token exchange the agent itself would do for the
  upstream's token (`mint N FILE` below uses it).

    python bench/gateway_prepare.py KEYLESS_BIN DATA_DIR BASE_URL AGENT PASSWORD OUT
    python bench/gateway_prepare.py mint BASE_URL OUT N FILE   # N fresh OBO tokens, one per line

The sign-in steps are the interop tests' (`tests/interop/signin.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "interop"))
from signin import claims, grant_consent, sign_in  # noqa: E402

EMAIL = "alice@example.com"
TYPES = ["directory_read", "directory_write", "directory_admin", "transfer_funds", "tool_call"]


class FabricView:
    """What the sign-in helpers need of a fabric."""

    def __init__(self, base: str):
        self.base_url = base


def cli(bin_, data_dir, *args) -> str:
    env = dict(os.environ)
    env.pop("SPIFFE_ENDPOINT_SOCKET", None)
    done = subprocess.run([bin_, *args, "--data-dir", data_dir], capture_output=True, text=True, timeout=30, env=env)
    if done.returncode != 0:
        sys.exit(f"gateway_prepare: `keyless {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def prepare(bin_, data_dir, base, agent, password, out):
    out = Path(out)
    user = sign_in(FabricView(base), EMAIL, password)
    cli(bin_, data_dir, "entry", "create", "--spiffe-id", agent, "--selector", f"unix:uid:{os.getuid()}")
    grant_consent(user, FabricView(base), agent, TYPES)
    user_token = user.refresh()
    if agent not in json.dumps(claims(user_token).get("may_act")):
        sys.exit("gateway_prepare: the refreshed token does not name the agent in may_act")
    socket = Path(data_dir, "workload.sock").resolve()
    svid = lambda aud: subprocess.run(  # noqa: E731
        [bin_, "svid", "fetch", "--socket", f"unix://{socket}", "--audience", aud],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip().splitlines()[-1]
    gateway_svid = svid(f"{base}/mcp")
    sts_svid = svid(base)
    (out / "gateway.headers").write_text(
        f"Authorization: Bearer {gateway_svid}\nX-Keyless-Subject-Token: {user_token}\n"
    )
    call = lambda name: {  # noqa: E731
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}},
    }
    (out / "gateway.body").write_text(json.dumps(call("directory.list_applications")))
    (out / "direct.body").write_text(json.dumps(call("list_applications")))
    # What the gateway asks for this call (its RAR template in demo.toml).
    detail = {"type": "directory_read", "actions": ["list"], "datatypes": ["applications"], "tier": 1}
    (out / "exchange.form").write_text(urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": user_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "actor_token": sts_svid,
        "actor_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "audience": "directory",
        "authorization_details": json.dumps([detail]),
    }))


def mint(base, out, n, file):
    form = Path(out, "exchange.form").read_text()
    tokens: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []

    def worker(count):
        s = requests.Session()
        for _ in range(count):
            r = s.post(f"{base}/oauth2/token", data=form, timeout=10,
                       headers={"content-type": "application/x-www-form-urlencoded"})
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:300]}")
                return
            with lock:
                tokens.append(r.json()["access_token"])

    threads = [threading.Thread(target=worker, args=(n // 8 + 1,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"gateway_prepare mint: {errors[0]}")
    Path(file).write_text("\n".join(tokens[:n]) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "mint":
        mint(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        prepare(*sys.argv[1:7])
