"""The console end to end: Playwright driving headless Chromium against
`keyless up`, the whole fabric in one browser window.

A newcomer's first minutes, step by step, each step saved as a screenshot
under `target/e2e-screenshots/<story>/`: sign in as the demo user (the STS's own
login and consent pages), "list users" (tier 1: a token exchange, no
approval), "create user dana in group finance" (tier 2: an approval card,
then the group write rides on the cached approval), "deactivate bob"
(tier 3: approval again), "delete carol" (tier 4: denied by policy, shown
in red with the policy's reason), then in a fresh session five
out-of-pattern transfers climb the risk ladder W1…W5 until the session is
killed, and the next message asks to sign in again.

Chromium is Debian's (`scripts/test` installs it when missing and running
as root; `$KEYLESS_TEST_CHROMIUM` overrides the path). Without one the test
is skipped and says why.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
import requests

from conftest import ROOT
from test_gateway import demo_password

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

EMAIL = "alice@example.com"
SHOTS = ROOT / "target" / "e2e-screenshots"
# Bounds on waits (not timing assertions): a loaded CI machine may be slow.
STEP_MS = 30_000


def chromium_path() -> str:
    path = os.environ.get("KEYLESS_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium: install Debian's `chromium` (scripts/test does when running as root) or set KEYLESS_TEST_CHROMIUM")
    return path


class Console:
    """The browser page and the steps a person takes in the console."""

    def __init__(self, page, fabric, story: str):
        self.page = page
        self.fabric = fabric
        self.dir = SHOTS / story
        self.shot_no = 0

    def shot(self, name: str) -> None:
        self.shot_no += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.dir / f"{self.shot_no:02d}-{name}.png"), full_page=True)

    def sign_in(self, password: str, consent: bool) -> None:
        page = self.page
        expect = playwright_api.expect
        page.goto(f"{self.fabric.base_url}/")
        page.get_by_test_id("sign-in").click()
        page.wait_for_url(re.compile(r".*/login.*"), timeout=STEP_MS)
        page.fill('input[name="username"]', EMAIL)
        page.fill('input[name="password"]', password)
        page.click('button[type="submit"]')
        if consent:
            # The console notices its token names no agent and asks for consent.
            page.wait_for_url(re.compile(r".*/consent.*"), timeout=STEP_MS)
            expect(page.locator("body")).to_contain_text("agent/assistant", timeout=STEP_MS)
            self.shot("consent")
            page.click('button[name="decision"][value="approve"]')
        page.wait_for_url(re.compile(r".*/chat.*"), timeout=STEP_MS)
        expect(page.get_by_test_id("chat-input")).to_be_enabled(timeout=STEP_MS)
        expect(page.get_by_test_id("warning-level")).to_have_text(re.compile(r"W0"), timeout=STEP_MS)

    def say(self, text: str) -> None:
        expect = playwright_api.expect
        # The input is disabled while the previous answer streams.
        expect(self.page.get_by_test_id("chat-input")).to_be_enabled(timeout=STEP_MS)
        self.page.get_by_test_id("chat-input").fill(text)
        self.page.get_by_test_id("chat-send").click()

    def wait_done(self) -> None:
        playwright_api.expect(self.page.get_by_test_id("chat-input")).to_be_enabled(timeout=STEP_MS)

    def panel(self, event_type: str, outcome: str | None = None):
        sel = f'[data-testid="panel-event"][data-type="{event_type}"]'
        if outcome:
            sel += f'[data-outcome="{outcome}"]'
        return self.page.locator(sel)

    def approve_next(self) -> str:
        expect = playwright_api.expect
        card = self.page.get_by_test_id("approval-card").first
        expect(card).to_be_visible(timeout=STEP_MS)
        # The chat stream said why the call waits: its card is awaiting approval.
        expect(self.page.get_by_test_id("tool-call").last).to_have_attribute(
            "data-status", "awaiting", timeout=STEP_MS
        )
        text = card.inner_text()
        self.shot("approval-card")
        card.get_by_test_id("approve").click()
        expect(self.page.get_by_test_id("approval-card")).to_have_count(0, timeout=STEP_MS)
        return text


@pytest.fixture
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_console_walks_a_newcomer_through_the_fabric(fabric, browser):
    expect = playwright_api.expect
    password = demo_password(fabric, EMAIL)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    c = Console(page, fabric, "newcomer")

    # --- sign in (authorization code + PKCE at the STS, then consent) --------
    c.sign_in(password, consent=True)
    c.shot("signed-in")

    # --- tier 1: no approval, one token exchange ----------------------------
    c.say("list users")
    c.wait_done()
    expect(page.get_by_test_id("assistant-message").last).to_contain_text("bob@example.com", timeout=STEP_MS)
    expect(c.panel("token_exchange.success").first).to_be_visible(timeout=STEP_MS)
    expect(c.panel("token_exchange.success").first).to_contain_text("List users")
    assert page.get_by_test_id("approval-card").count() == 0
    # The agent host fetched the agent's JWT-SVID for the gateway (and reuses it below).
    expect(c.panel("svid.issued").first).to_contain_text("agent/assistant", timeout=STEP_MS)
    c.shot("list-users")

    # --- tier 2: an approval card, then the cached approval -----------------
    c.say("create user dana in group finance")
    card = c.approve_next()
    assert "create_user" in card and "\"Dana\"" in card, card  # the exact arguments
    c.wait_done()
    expect(page.get_by_test_id("assistant-message").last).to_contain_text("dana", timeout=STEP_MS)
    # The group write of the same plan rode on the session's approval.
    expect(c.panel("approval.cached").first).to_be_visible(timeout=STEP_MS)
    expect(c.panel("svid.cached").first).to_be_visible(timeout=STEP_MS)
    c.shot("create-user-approved")
    c.say("add dana to group engineering")
    c.wait_done()
    assert page.get_by_test_id("approval-card").count() == 0
    expect(c.panel("approval.cached")).to_have_count(2, timeout=STEP_MS)
    c.shot("second-write-cached")

    # --- tier 3: a fresh approval every time ---------------------------------
    c.say("deactivate bob")
    card = c.approve_next()
    assert "deactivate_user" in card and "bob@example.com" in card, card
    c.wait_done()
    expect(page.get_by_test_id("tool-call").last).to_contain_text("deactivate_user")
    c.shot("deactivate-approved")

    # --- tier 4: denied by policy, with its reason ---------------------------
    c.say("delete carol")
    c.wait_done()
    refused = page.get_by_test_id("tool-refused").last
    expect(refused).to_be_visible(timeout=STEP_MS)
    expect(refused).to_contain_text("forbid-delete-user: deleting users is never delegated to an agent")
    expect(c.panel("token_exchange.denied", "denied").first).to_be_visible(timeout=STEP_MS)
    assert page.get_by_test_id("approval-card").count() == 0, "a call the policy forbids must never bother a human"
    c.shot("delete-denied")

    # --- a fresh session: five out-of-pattern transfers climb W1…W5 ----------
    page.get_by_role("button", name=re.compile("sign out", re.I)).click()
    expect(page.get_by_test_id("sign-in")).to_be_visible(timeout=STEP_MS)
    c.sign_in(password, consent=False)
    destinations = ["acme-supplies", "utility-co", "coffee-corner", "landlord", "ACC-9"]
    for i, dest in enumerate(destinations, start=1):
        c.say(f"transfer {10 + i} USD to {dest}")
        if i == 1:
            # The session's first write waits for the user.
            c.approve_next()
        if i < 5:
            c.wait_done()
        if i == 1:
            # W1 is an inline caution in the chat, next to the call.
            expect(page.get_by_test_id("warning").first).to_contain_text("W1", timeout=STEP_MS)
        if i < 5:
            expect(page.get_by_test_id("warning-level")).to_have_text(re.compile(f"W{i}"), timeout=STEP_MS)
            c.shot(f"transfer-{i}-W{i}")
    # W5 killed the session everywhere: the page learns it from its next
    # call (the approvals poll or the next message) and asks to sign in again.
    ended = page.get_by_test_id("session-ended")
    deadline = time.monotonic() + STEP_MS / 1000
    sent = False
    while not ended.is_visible():
        assert time.monotonic() < deadline, "the console never asked to sign in again"
        box = page.get_by_test_id("chat-input")
        if not sent and box.is_visible() and box.is_enabled():
            box.fill("what is my balance")
            page.get_by_test_id("chat-send").click()
            sent = True
        page.wait_for_timeout(100)
    expect(page.get_by_test_id("sign-in")).to_be_visible()
    # The log tells the story: this session climbed W1…W5 and was revoked.
    entries = requests.get(f"{fabric.base_url}/audit/entries?start=0&end=1000", timeout=10).json()["entries"]
    events = [e["event"] for e in entries]
    levels = [e["detail"]["level"] for e in events if e["type"] == "risk.warning"]
    assert levels[-5:] == ["W1", "W2", "W3", "W4", "W5"], levels
    assert any(e["type"] == "session.revoked" for e in events)
    c.shot("session-ended")

    assert errors == [], f"JavaScript errors in the console: {errors}"
    context.close()


def test_console_pages_show_audit_identities_and_the_timeline(fabric, browser, own_uid_selector):
    """The read-only pages load with the signed-in user's token, and the
    audit page verifies an inclusion proof in the browser."""
    expect = playwright_api.expect
    # A registered workload that fetched a JWT-SVID: the identities page shows both.
    workload = "spiffe://example.org/agent/e2e-workload"
    fabric.create_entry(workload, own_uid_selector)
    fabric.fetch_jwt("e2e-audience")
    password = demo_password(fabric, EMAIL)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    c = Console(page, fabric, "pages")
    c.sign_in(password, consent=True)
    c.say("what is my balance")
    c.wait_done()
    expect(page.get_by_test_id("assistant-message").last).to_contain_text("USD", timeout=STEP_MS)
    expect(page.get_by_test_id("timeline")).to_be_visible(timeout=STEP_MS)

    page.goto(f"{fabric.base_url}/audit")
    expect(page.locator("body")).to_contain_text(re.compile(r"verified", re.I), timeout=STEP_MS)
    page.get_by_role("button", name=re.compile("proof", re.I)).first.click()
    expect(page.locator("body")).to_contain_text(re.compile(r"inclusion proof verified", re.I), timeout=STEP_MS)
    c.shot("audit")
    page.goto(f"{fabric.base_url}/identities")
    expect(page.get_by_test_id("identities")).to_contain_text(workload, timeout=STEP_MS)
    expect(page.get_by_test_id("svids")).to_contain_text(workload, timeout=STEP_MS)
    c.shot("identities")
    page.goto(f"{fabric.base_url}/consents")
    expect(page.locator("body")).to_contain_text("agent/assistant", timeout=STEP_MS)
    c.shot("consents")
    assert errors == [], f"JavaScript errors in the console: {errors}"
    context.close()
