"""The authorization server end to end, against a real `keyless up`, with
independent clients: Authlib's OAuth2Session signs a user in (authorization
code + PKCE S256 through the plain HTML login form, driven by `requests`)
and refreshes; the user approves an agent on the consent page; the agent's
JWT-SVID (from `keyless svid fetch`) is the actor token of an RFC 8693
token exchange done with plain `requests`; PyJWT verifies the OBO token
against `/oauth2/jwks`. Then the refusals, through the real server."""

from __future__ import annotations

import json
import secrets
from urllib.parse import parse_qs, urlsplit

import jwt
import requests

from signin import CLIENT_ID, TIMEOUT, add_user, claims, follow_to_callback, hidden, oauth_client

EMAIL = "erin@example.com"
AGENT = "spiffe://example.org/agent/sts-interop"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
READ_DETAIL = {"type": "directory_read", "actions": ["read", "list"], "limit": 50}


def exchange(fabric, subject_token: str, actor: str | None, details, audience: str = "directory", **extra):
    """A token-exchange request; `extra` adds or (with None) drops form fields."""
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN,
        "audience": audience,
        "authorization_details": json.dumps(details),
    }
    if actor is not None:
        form["actor_token"] = actor
        form["actor_token_type"] = JWT_TYPE
    form.update(extra)
    form = {k: v for k, v in form.items() if v is not None}
    return requests.post(f"{fabric.base_url}/oauth2/token", data=form, timeout=TIMEOUT)


def refused(resp, code: str) -> str:
    assert resp.status_code == 400, f"{resp.status_code}: {resp.text}"
    body = resp.json()
    assert body["error"] == code, body
    assert resp.headers.get("cache-control") == "no-store"
    return body.get("error_description", "")


def test_sign_in_consent_and_token_exchange(fabric, own_uid_selector):
    base = fabric.base_url
    meta = fabric.get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == base
    assert meta["code_challenge_methods_supported"] == ["S256"]
    password = "pw-" + secrets.token_urlsafe(18)
    subject = add_user(fabric, EMAIL, password)

    # --- sign-in: code + PKCE S256 with Authlib, the form with requests ---
    client = oauth_client(fabric)
    verifier = secrets.token_urlsafe(48)
    auth_url, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
    assert "code_challenge_method=S256" in auth_url
    browser = requests.Session()
    callback = follow_to_callback(browser, fabric, auth_url, EMAIL, password)
    query = parse_qs(urlsplit(callback).query)
    assert query["state"] == [state]
    assert "code" in query

    token = client.fetch_token(
        meta["token_endpoint"], authorization_response=callback, code_verifier=verifier
    )
    assert token["token_type"].lower() == "bearer"
    assert {"access_token", "refresh_token", "id_token"} <= set(token)
    jwks = jwt.PyJWKClient(meta["jwks_uri"])
    at = token["access_token"]
    assert jwt.get_unverified_header(at)["typ"] == "at+jwt"
    at_claims = jwt.decode(
        at, jwks.get_signing_key_from_jwt(at).key, algorithms=["ES256"], audience=base, issuer=base
    )
    assert at_claims["sub"] == subject
    assert at_claims["client_id"] == CLIENT_ID
    assert "may_act" not in at_claims

    first_refresh = token["refresh_token"]
    token = client.refresh_token(meta["token_endpoint"])
    assert token["refresh_token"] != first_refresh
    assert claims(token["access_token"])["sub"] == subject

    # --- the agent and its JWT-SVID (audience: the issuer) ---
    fabric.create_entry(AGENT, own_uid_selector)
    actor = fabric.fetch_jwt(base)
    assert claims(actor)["sub"] == AGENT

    # Without consent the agent is not in may_act.
    denied = exchange(fabric, token["access_token"], actor, [READ_DETAIL])
    refused(denied, "invalid_request")

    # --- consent through the page, in the signed-in browser ---
    bad = browser.get(
        f"{base}/consent", params={"agent": AGENT, "types": "no_such_type"}, allow_redirects=False, timeout=TIMEOUT
    )
    assert bad.status_code == 400, bad.text
    anonymous = requests.get(
        f"{base}/consent", params={"agent": AGENT, "types": "directory_read"}, allow_redirects=False, timeout=TIMEOUT
    )
    assert anonymous.status_code == 303
    assert anonymous.headers["Location"].startswith("/login?return_to=%2Fconsent%3F")
    page = browser.get(
        f"{base}/consent",
        params={"agent": AGENT, "types": "directory_read,directory_admin"},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert page.status_code == 200, page.text
    assert AGENT in page.text
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
    assert granted.status_code == 200, granted.text
    assert "Consent granted" in granted.text
    mine = browser.get(f"{base}/api/consents", timeout=TIMEOUT)
    assert mine.status_code == 200, mine.text
    assert [c["agent"] for c in mine.json()] == [AGENT]

    # may_act is fixed at issuance: the next refresh carries the agent.
    token = client.refresh_token(meta["token_endpoint"])
    user_at = token["access_token"]
    assert claims(user_at)["may_act"]["sub"] in (AGENT, [AGENT])

    # --- the exchange (RFC 8693) with plain requests ---
    resp = exchange(fabric, user_at, actor, [READ_DETAIL])
    assert resp.status_code == 200, resp.text
    assert resp.headers.get("cache-control") == "no-store"
    body = resp.json()
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert body["token_type"].lower() in ("bearer", "n_a")
    obo = body["access_token"]
    assert jwt.get_unverified_header(obo)["typ"] == "at+jwt"
    obo_claims = jwt.decode(
        obo,
        jwks.get_signing_key_from_jwt(obo).key,
        algorithms=["ES256"],
        audience="directory",
        issuer=base,
        options={"require": ["exp", "iat", "jti", "sub", "aud", "iss"]},
    )
    assert obo_claims["sub"] == subject
    assert obo_claims["aud"] in ("directory", ["directory"])
    assert obo_claims["act"]["sub"] == AGENT
    assert obo_claims["authorization_details"] == [READ_DETAIL]
    assert obo_claims["exp"] - obo_claims["iat"] <= 300

    # --- refusals, through the real server ---
    no_type = exchange(fabric, user_at, actor, [READ_DETAIL], actor_token_type=None)
    assert "actor_token_type" in refused(no_type, "invalid_request")

    delete = exchange(fabric, user_at, actor, [{"type": "directory_admin", "actions": ["delete_user"]}])
    description = refused(delete, "access_denied")
    assert "forbid-delete-user" in description, description

    unknown = exchange(fabric, user_at, actor, [{"type": "no_such_type", "actions": ["read"]}])
    refused(unknown, "invalid_authorization_details")

    target = exchange(fabric, user_at, actor, [READ_DETAIL], audience="nowhere")
    refused(target, "invalid_target")

    # --- revoking the consent bites on the very next exchange ---
    listed = json.loads(fabric.cli("consent", "list").ok().stdout)
    ids = [c["id"] for c in listed if c["agent"] == AGENT and c["user"] == subject and not c.get("revoked_at")]
    assert len(ids) == 1, listed
    fabric.cli("consent", "revoke", ids[0]).ok()
    after = exchange(fabric, user_at, actor, [READ_DETAIL])
    assert "consent" in refused(after, "access_denied")
    mine = browser.get(f"{base}/api/consents", timeout=TIMEOUT).json()
    assert [c["id"] for c in mine] == ids and mine[0]["revoked_at"], mine


def test_pkce_plain_is_refused(fabric):
    base = fabric.base_url
    # Authlib builds only S256 challenges: `plain` goes in as extra parameters.
    client = oauth_client(fabric, method=None)
    verifier = secrets.token_urlsafe(48)
    auth_url, state = client.create_authorization_url(
        f"{base}/oauth2/authorize", code_challenge=verifier, code_challenge_method="plain"
    )
    assert "code_challenge_method=plain" in auth_url
    resp = requests.get(auth_url, allow_redirects=False, timeout=TIMEOUT)
    assert resp.status_code in (302, 303), resp.text
    location = resp.headers["Location"]
    assert location.startswith(f"{base}/callback?"), location
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["invalid_request"], query
    assert query["state"] == [state]
    assert "code" not in query
