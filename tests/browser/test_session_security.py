"""Browser session security (issue 11 item 7) and idempotent save retries (item 4), in real Chromium.

The access token lives in page memory only: nothing auth-related in localStorage or sessionStorage; a reload
or a second tab takes up the session through the httpOnly refresh cookie; signing out ends it. A save whose
first answers are lost (a 503, then a connection reset after the server committed) is retried with the same
idempotency key, and the server answers with the version it already stored: exactly one new version.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Request, Response, Route, expect

from backend.cli import DEMO_PASSWORD
from tests.browser.conftest import ANNOTATOR, LabelledScan, Server, open_scan, sign_in_with_token, state

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STORAGE = "JSON.stringify({local: {...localStorage}, session: {...sessionStorage}})"


def _tokens_of(page: Page) -> list[str]:
    """Collect every access token the server hands this page (login and cookie sessions)."""
    tokens: list[str] = []

    def on_response(response: Response) -> None:
        if re.search(r"/api/auth/(login|session)$", response.url) and response.ok:
            tokens.append(response.json()["access_token"])

    page.on("response", on_response)
    return tokens


def test_session_lives_in_memory_and_the_refresh_cookie(page: Page, server: Server) -> None:
    tokens = _tokens_of(page)
    first = page.goto(server.base + "/")
    assert first is not None and "frame-ancestors 'none'" in first.headers["content-security-policy"]
    page.get_by_test_id("login-email").fill(ANNOTATOR)
    page.get_by_test_id("login-password").fill(DEMO_PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("worklist")).to_be_visible()
    assert tokens, "the login answer carried no token"
    stored = page.evaluate(STORAGE)
    assert not any(t in stored for t in tokens) and "maskloop.session" not in stored, stored
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["maskloop_refresh"]["httpOnly"] and cookies["maskloop_refresh"]["sameSite"] == "Strict"
    assert "maskloop_refresh" not in page.evaluate("document.cookie")

    # A reload signs in again from the cookie (a fresh access token); an old build's stored session is removed.
    page.evaluate("localStorage.setItem('maskloop.session', JSON.stringify({token: 'old'}))")
    page.reload()
    expect(page.get_by_test_id("worklist")).to_be_visible()
    assert len(tokens) == 2 and page.evaluate("localStorage.getItem('maskloop.session')") is None
    stored = page.evaluate(STORAGE)
    assert not any(t in stored for t in tokens), stored

    # A second tab takes up the session through the same cookie (its own request, its own token in memory).
    other = page.context.new_page()
    other_tokens = _tokens_of(other)
    other.goto(server.base + "/")
    expect(other.get_by_test_id("worklist")).to_be_visible()
    assert len(other_tokens) == 1  # from its own POST /api/auth/session
    other.close()

    # Sign out: the session is revoked (its tokens stop working) and a reload shows the sign-in form.
    with page.expect_response("**/api/auth/logout") as logout:
        page.get_by_test_id("logout").click()
    assert logout.value.status == 204
    expect(page.get_by_test_id("login-email")).to_be_visible()
    me = httpx.get(f"{server.base}/api/auth/me", headers={"Authorization": f"Bearer {tokens[-1]}"})
    assert me.status_code == 401
    page.reload()
    expect(page.get_by_test_id("login-email")).to_be_visible()
    assert "maskloop_refresh" not in {c["name"] for c in page.context.cookies()}


def _idempotency_key(request: Request) -> str:
    body = request.post_data_buffer or b""
    match = re.search(rb'name="meta"\r\n\r\n(.*?)\r\n--', body, re.S)
    assert match, body[:200]
    return str(json.loads(match.group(1))["idempotency_key"])


def test_save_with_lost_answers_is_retried_with_one_key(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=61)
    sign_in_with_token(page, server)
    open_scan(page, server, labelled.id)
    page.evaluate("window.maskloop.setActive('duodenum')")
    page.wait_for_function("window.maskloop.state().active === 'duodenum'")
    before = len(server.get(f"/api/scans/{labelled.id}/versions"))
    keys: list[str] = []
    committed: list[int] = []

    def flaky(route: Route) -> None:
        keys.append(_idempotency_key(route.request))
        if len(keys) == 1:  # the server is briefly unavailable: nothing stored
            route.fulfill(status=503, headers={"Retry-After": "0"}, json={"detail": "busy", "error": "busy"})
        elif len(keys) == 2:  # the server stores the version, but its answer never arrives
            response = route.fetch()
            committed.append(int(response.json()["id"]))
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/api/scans/*/versions/patch", flaky)
    page.evaluate("(v) => window.maskloop.paintNative('duodenum', v, 1)", [[5, 5, 5], [6, 5, 5]])
    saved = page.evaluate("window.maskloop.save('through a flaky network')")
    assert len(keys) == 3 and len(set(keys)) == 1, keys
    assert saved == committed[0]
    versions = server.get(f"/api/scans/{labelled.id}/versions")
    assert len(versions) == before + 1
    assert state(page)["dirty"] == [] and state(page)["baseVersionId"] == saved
    page.unroute("**/api/scans/*/versions/patch")

    # An access token refused while the cookie session lives is renewed silently: no sign-in dialog.
    page.evaluate("(v) => window.maskloop.paintNative('duodenum', v, 1)", [[7, 5, 5]])
    page.evaluate("window.maskloop.corruptToken()")
    again = page.evaluate("window.maskloop.save('after a silent renewal')")
    assert again and again != saved
    expect(page.get_by_test_id("reauth-dialog")).to_have_count(0)
    assert len(server.get(f"/api/scans/{labelled.id}/versions")) == before + 2
