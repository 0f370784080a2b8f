"""Sign-in helpers shared by the interop tests that need a signed-in user:
`keyless user add`, Authlib's OAuth2Session for the authorization code +
PKCE S256 flow (the plain HTML login form driven by `requests`), and the
consent page on which the user approves an agent.

`test_sts.py` checks each step of this flow; the other tests (the MCP
gateway's) use `sign_in` and `grant_consent` to get a user access token
whose `may_act` names their agent.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from html import unescape
from urllib.parse import urljoin, urlsplit

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session

from conftest import CLI_TIMEOUT, keyless_bin

CLIENT_ID = "keyless-console"
TIMEOUT = 10


def hidden(page: str, name: str) -> str:
    m = re.search(r'<input type="hidden" name="%s" value="([^"]*)">' % re.escape(name), page)
    assert m, f"no hidden field {name!r} in:\n{page[:2000]}"
    return unescape(m.group(1))


def add_user(fabric, email: str, password: str) -> str:
    """`keyless user add EMAIL` with the password on stdin; returns the subject id."""
    env = dict(os.environ)
    env.pop("SPIFFE_ENDPOINT_SOCKET", None)
    done = subprocess.run(
        [str(keyless_bin()), "user", "add", email, "--data-dir", str(fabric.data_dir)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    m = re.search(r"subject (\S+)\)", done.stdout)
    assert m, done.stdout
    return m.group(1)


def oauth_client(fabric, method: str | None = "S256") -> OAuth2Session:
    return OAuth2Session(
        CLIENT_ID,
        redirect_uri=f"{fabric.base_url}/callback",
        scope="openid email tools",
        code_challenge_method=method,
        token_endpoint_auth_method="none",
    )


def follow_to_callback(
    browser: requests.Session, fabric, url: str, email: str, password: str, max_hops: int = 8
) -> str:
    """Follows redirects (signing in at /login as `email` on the way) until
    one points at /callback, which is returned, not fetched."""
    callback = f"{fabric.base_url}/callback"
    for _ in range(max_hops):
        resp = browser.get(url, allow_redirects=False, timeout=TIMEOUT)
        if resp.status_code == 200 and 'name="password"' in resp.text:
            assert urlsplit(resp.url).path == "/login", resp.url
            resp = browser.post(
                urljoin(resp.url, "/login"),
                data={
                    "username": email,
                    "password": password,
                    "csrf": hidden(resp.text, "csrf"),
                    "return_to": hidden(resp.text, "return_to"),
                },
                allow_redirects=False,
                timeout=TIMEOUT,
            )
        assert resp.status_code in (302, 303), f"{resp.status_code} at {resp.url}: {resp.text[:500]}"
        url = urljoin(resp.url, resp.headers["Location"])
        if url.startswith(callback + "?"):
            return url
    pytest.fail("no redirect to /callback")


def claims(token: str) -> dict:
    """The claims of a JWT, unverified (for assertions on tokens a test got)."""
    return jwt.decode(token, options={"verify_signature": False})


@dataclass
class SignedIn:
    """A user signed in through the browser flow: the browser (holding the
    session cookie), the OAuth client (holding the tokens) and the AS metadata."""

    browser: requests.Session
    client: OAuth2Session
    meta: dict
    token: dict

    @property
    def access_token(self) -> str:
        return self.token["access_token"]

    def refresh(self) -> str:
        """A refresh; returns the new access token (claims such as `may_act`
        are fixed at issuance, so a refresh picks up new consents)."""
        self.token = self.client.refresh_token(self.meta["token_endpoint"])
        return self.access_token


def sign_in(fabric, email: str, password: str) -> SignedIn:
    """Code + PKCE S256 through the login form; returns the signed-in user."""
    meta = requests.get(f"{fabric.base_url}/.well-known/oauth-authorization-server", timeout=TIMEOUT).json()
    client = oauth_client(fabric)
    verifier = secrets.token_urlsafe(48)
    auth_url, _state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
    browser = requests.Session()
    callback = follow_to_callback(browser, fabric, auth_url, email, password)
    token = client.fetch_token(meta["token_endpoint"], authorization_response=callback, code_verifier=verifier)
    return SignedIn(browser=browser, client=client, meta=meta, token=token)


def grant_consent(user: SignedIn, fabric, agent: str, types: list[str]) -> None:
    """The user approves `agent` for the RAR `types` on the consent page."""
    base = fabric.base_url
    page = user.browser.get(
        f"{base}/consent",
        params={"agent": agent, "types": ",".join(types)},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert page.status_code == 200, page.text
    granted = user.browser.post(
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
    assert granted.status_code == 200, granted.text
    assert "Consent granted" in granted.text, granted.text[:2000]


def log_out(user: SignedIn, fabric) -> None:
    """`POST /oauth2/logout` with the browser's session cookie: ends the session."""
    resp = user.browser.post(
        f"{fabric.base_url}/oauth2/logout",
        data=b"",
        # A form, if an empty one: the endpoint refuses any other body type.
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
