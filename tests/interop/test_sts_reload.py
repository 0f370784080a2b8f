"""Cedar policy hot reload through a real `keyless up`: the policies dir is
seeded on first start; an exchange the policy allows; a policy file written
next to it that forbids that exchange takes effect without a restart (the
next exchange, within a bounded wait, is denied naming the new policy id);
an invalid file is refused (log line naming the error) and the previous
valid set keeps deciding (still denied by it: not an error, not allowed).
`keyless policy test --data-dir` decides with the same directory.

The sign-in, consent and exchange steps reuse test_sts.py's helpers."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

import test_sts as flow
from conftest import wait_until

AGENT = "spiffe://example.org/agent/reload"
FREEZE = """// Written by test_sts_reload.py.
@id("freeze-directory-reads")
@reason("directory reads are frozen for maintenance")
forbid (principal, action, resource)
when { context.rar_type == "directory_read" };
"""
RELOAD_WAIT = 15.0


def put(path: Path, text: str) -> None:
    """Writes atomically (a rename), as editors and config tools do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def signed_in_user_token(fabric, browser: requests.Session) -> tuple[str, object, dict]:
    """Signs a new user in (code + PKCE) and returns (password, client, meta)."""
    meta = fabric.get("/.well-known/oauth-authorization-server").json()
    password = "pw-" + secrets.token_urlsafe(18)
    flow.add_user(fabric, flow.EMAIL, password)
    client = flow.oauth_client(fabric)
    verifier = secrets.token_urlsafe(48)
    auth_url, _ = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
    callback = flow.follow_to_callback(browser, fabric, auth_url, flow.EMAIL, password)
    assert "code" in parse_qs(urlsplit(callback).query)
    client.fetch_token(meta["token_endpoint"], authorization_response=callback, code_verifier=verifier)
    return password, client, meta


def grant_consent(fabric, browser: requests.Session, agent: str, types: str) -> None:
    page = browser.get(
        f"{fabric.base_url}/consent", params={"agent": agent, "types": types}, allow_redirects=False, timeout=10
    )
    assert page.status_code == 200, page.text
    granted = browser.post(
        f"{fabric.base_url}/consent",
        data={
            "csrf": flow.hidden(page.text, "csrf"),
            "agent": flow.hidden(page.text, "agent"),
            "types": flow.hidden(page.text, "types"),
            "scopes": flow.hidden(page.text, "scopes"),
            "return_to": flow.hidden(page.text, "return_to"),
            "decision": "approve",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert granted.status_code == 200, granted.text


def test_policy_changes_take_effect_without_restart_and_invalid_ones_are_refused(fabric, own_uid_selector):
    policies = fabric.data_dir / "policies"
    assert (policies / "default.cedar").is_file(), "the policies dir is seeded on first start"
    assert (policies / "schema.cedarschema").is_file()
    assert any("policies:" in line and str(policies) in line for line in fabric.lines), fabric.lines

    browser = requests.Session()
    _, client, meta = signed_in_user_token(fabric, browser)
    fabric.create_entry(AGENT, own_uid_selector)
    actor = fabric.fetch_jwt(fabric.base_url)
    grant_consent(fabric, browser, AGENT, "directory_read")
    user_at = client.refresh_token(meta["token_endpoint"])["access_token"]

    # --- allowed by the seeded default set ---
    allowed = flow.exchange(fabric, user_at, actor, [flow.READ_DETAIL])
    assert allowed.status_code == 200, allowed.text

    # --- a valid change takes effect without a restart ---
    put(policies / "freeze.cedar", FREEZE)

    def denied_by_new_policy():
        resp = flow.exchange(fabric, user_at, actor, [flow.READ_DETAIL])
        if resp.status_code == 200:
            return None
        return flow.refused(resp, "access_denied")

    description = wait_until(denied_by_new_policy, RELOAD_WAIT, interval=0.2, what="the new policy to deny")
    assert "freeze-directory-reads" in description, description
    assert "frozen for maintenance" in description, description
    reloaded_log = wait_until(
        lambda: "policies reloaded" in fabric.stderr_path.read_text(errors="replace"),
        RELOAD_WAIT,
        what="the reload log line",
    )
    assert reloaded_log

    # `keyless policy test` decides with the fabric's directory by default.
    cli = fabric.cli(
        "policy", "test", "--agent", AGENT, "--action", "read", "--resource", "directory",
        "--rar-type", "directory_read",
    )
    assert cli.code == 1, (cli.stdout, cli.stderr)
    assert "freeze-directory-reads" in cli.stdout, cli.stdout

    # --- an invalid change is refused; the previous set keeps deciding ---
    put(policies / "broken.cedar", "permit (principal, action, resource) when { context.tier == ;\n")

    def refusal_logged():
        log = fabric.stderr_path.read_text(errors="replace")
        return [line for line in log.splitlines() if "policy reload refused" in line]

    lines = wait_until(refusal_logged, RELOAD_WAIT, what="the refused reload in the log")
    assert any("invalid policy set" in line for line in lines), lines
    for _ in range(3):
        still = flow.exchange(fabric, user_at, actor, [flow.READ_DETAIL])
        assert "freeze-directory-reads" in flow.refused(still, "access_denied")

    # Removing both files restores the defaults, again without a restart.
    (policies / "broken.cedar").unlink()
    (policies / "freeze.cedar").unlink()

    def allowed_again():
        resp = flow.exchange(fabric, user_at, actor, [flow.READ_DETAIL])
        if resp.status_code == 200:
            return True
        flow.refused(resp, "access_denied")
        return False

    wait_until(allowed_again, RELOAD_WAIT, interval=0.2, what="the default set to be back in force")


def test_an_invalid_policy_set_at_start_is_refused_with_one_clear_line(fabric):
    policies = fabric.data_dir / "policies"
    fabric.stop()
    put(policies / "broken.cedar", "forbid (principal, action, resource);\n")  # no @id, no @reason
    fabric.start(expect_ready=False)
    code = fabric.proc.wait(timeout=30)
    assert code == 2, fabric.logs()
    err = fabric.stderr_path.read_text(errors="replace").strip().splitlines()
    assert err and err[-1].startswith("error: invalid policy set in"), fabric.logs()
    assert "@id" in err[-1], err[-1]
    # Fixing the file is enough: the next start is ready.
    (policies / "broken.cedar").unlink()
    fabric.start()
