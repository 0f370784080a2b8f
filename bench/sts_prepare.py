"""Prepares one token exchange for bench/sts.sh, against a running `keyless up`.

Signs a user in (authorization code + PKCE S256 through the HTML login form),
registers the agent, grants consent on /consent, refreshes so that `may_act`
names the agent, fetches the agent's JWT-SVID (audience = the issuer), and
writes the form-encoded token-exchange body to OUT_DIR/exchange.body — the
same steps as tests/interop/test_sts.py.

    python bench/sts_prepare.py KEYLESS_BIN DATA_DIR BASE_URL AGENT OUT_DIR
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from html import unescape
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import requests
from authlib.integrations.requests_client import OAuth2Session

CLIENT_ID = "keyless-console"
EMAIL = "bench@example.com"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
READ_DETAIL = {"type": "directory_read", "actions": ["read", "list"], "limit": 50}
TIMEOUT = 10


def die(msg: str):
    print(f"sts_prepare: {msg}", file=sys.stderr)
    sys.exit(1)


def hidden(page: str, name: str) -> str:
    m = re.search(r'<input type="hidden" name="%s" value="([^"]*)">' % re.escape(name), page)
    if not m:
        die(f"no hidden field {name!r} in:\n{page[:1000]}")
    return unescape(m.group(1))


def cli(bin_, data_dir, *args, stdin=None) -> str:
    env = dict(os.environ)
    env.pop("SPIFFE_ENDPOINT_SOCKET", None)
    done = subprocess.run(
        [bin_, *args, "--data-dir", data_dir], input=stdin, capture_output=True, text=True, timeout=30, env=env
    )
    if done.returncode != 0:
        die(f"`keyless {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def main():
    bin_, data_dir, base, agent, out = sys.argv[1:6]
    out = Path(out)
    meta = requests.get(f"{base}/.well-known/oauth-authorization-server", timeout=TIMEOUT).json()
    password = "pw-" + secrets.token_urlsafe(18)
    cli(bin_, data_dir, "user", "add", EMAIL, stdin=password + "\n")

    # Sign-in: code + PKCE S256.
    client = OAuth2Session(
        CLIENT_ID,
        redirect_uri=f"{base}/callback",
        scope="openid email tools",
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    )
    verifier = secrets.token_urlsafe(48)
    url, _state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
    browser = requests.Session()
    callback = None
    for _ in range(8):
        resp = browser.get(url, allow_redirects=False, timeout=TIMEOUT)
        if resp.status_code == 200 and 'name="password"' in resp.text:
            resp = browser.post(
                urljoin(resp.url, "/login"),
                data={
                    "username": EMAIL,
                    "password": password,
                    "csrf": hidden(resp.text, "csrf"),
                    "return_to": hidden(resp.text, "return_to"),
                },
                allow_redirects=False,
                timeout=TIMEOUT,
            )
        if resp.status_code not in (302, 303):
            die(f"sign-in: {resp.status_code} at {resp.url}: {resp.text[:500]}")
        url = urljoin(resp.url, resp.headers["Location"])
        if url.startswith(f"{base}/callback?"):
            callback = url
            break
    if callback is None:
        die("sign-in: no redirect to /callback")
    client.fetch_token(meta["token_endpoint"], authorization_response=callback, code_verifier=verifier)

    # The agent, its JWT-SVID for the issuer, and the user's consent.
    cli(bin_, data_dir, "entry", "create", "--spiffe-id", agent, "--selector", f"unix:uid:{os.getuid()}")
    actor = cli(bin_, data_dir, "svid", "fetch", "--audience", base)
    page = browser.get(
        f"{base}/consent", params={"agent": agent, "types": "directory_read"}, allow_redirects=False, timeout=TIMEOUT
    )
    if page.status_code != 200:
        die(f"consent page: {page.status_code}: {page.text[:500]}")
    granted = browser.post(
        f"{base}/consent",
        data={
            "csrf": hidden(page.text, "csrf"),
            "agent": hidden(page.text, "agent"),
            "types": hidden(page.text, "types"),
            "scopes": hidden(page.text, "scopes"),
            "return_to": hidden(page.text, "return_to"),
            "decision": "approve",
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    if granted.status_code != 200 or "Consent granted" not in granted.text:
        die(f"consent: {granted.status_code}: {granted.text[:500]}")

    # may_act is fixed at issuance: refresh so the access token names the agent.
    token = client.refresh_token(meta["token_endpoint"])
    body = urlencode(
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": token["access_token"],
            "subject_token_type": ACCESS_TOKEN,
            "actor_token": actor,
            "actor_token_type": JWT_TYPE,
            "audience": "directory",
            "authorization_details": json.dumps([READ_DETAIL]),
        }
    )
    (out / "exchange.body").write_text(body)
    print(f"prepared: user access token ({len(token['access_token'])} B), actor JWT-SVID for {agent}")


if __name__ == "__main__":
    main()
