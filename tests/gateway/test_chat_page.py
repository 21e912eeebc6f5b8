"""The chat page at /: how it is served, and a person's use of it in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import threading

import httpx
import pytest

from fake_upstream import FAKE_MODEL
from gateway_helpers import API_KEY

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# No sandbox (tests run as root), and nothing that reaches out to the network on its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Long enough for a cold Chromium on a loaded CI machine; every wait on a working page ends far sooner.
_PAGE_TIMEOUT_MILLISECONDS = 15_000


def test_page_is_served_with_a_strict_content_security_policy(start_gateway):
    gateway_url = start_gateway(MODEL="model-<b>")

    response = httpx.get(f"{gateway_url}/")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<meta name="gateway-model" content="model-&lt;b&gt;">' in response.text


@pytest.mark.parametrize(("asset", "content_type"), [("chat.js", "text/javascript"), ("chat.css", "text/css")])
def test_page_assets_are_served(gateway_url, asset, content_type):
    response = httpx.get(f"{gateway_url}/static/{asset}")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Debian Chromium driven by Playwright, with an empty profile. Skips locally when either is
    missing; fails in CI, where a skip would hide that the page went untested."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "the Python package playwright is not installed (pip install playwright; no browser download)"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {problem}")
        pytest.skip(problem)

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=tmp_path_factory.mktemp("chromium-profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,
            headless=True,
        )
        context.set_default_timeout(_PAGE_TIMEOUT_MILLISECONDS)
        yield context
        context.close()


@pytest.fixture
def page(browser, gateway_url):
    """The chat page, opened fresh, with the browser errors it reports collected in `page.errors`."""
    page = browser.new_page()
    page.errors = []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(f"{gateway_url}/")
    yield page
    page.close()


def enter_api_key(page, key: str) -> None:
    api_key = page.locator("#api-key")
    api_key.fill(key)
    api_key.blur()  # the page reloads the model list when the key field changes


@pytest.mark.browser
def test_a_message_typed_in_the_page_is_answered_by_a_streamed_reply(page, upstream):
    from playwright.sync_api import expect

    gate = threading.Event()
    upstream.behaviour.stream_gate = gate  # the upstream holds its stream after the first word

    expect(page.locator("#status")).to_have_text("Enter the API key to continue.")
    enter_api_key(page, API_KEY)
    expect(page.locator("#model")).to_have_value(FAKE_MODEL)
    page.locator("#message").fill("hello from the browser")
    page.locator("#send").click()

    reply = page.locator(".message.assistant")
    expect(page.locator(".message.user")).to_have_text("hello from the browser")
    # The first word shows while the upstream still holds the rest: the page renders the stream as it comes.
    expect(reply).to_have_text("Echo:")
    expect(reply).to_have_class(re.compile(r"\bpending\b"))
    gate.set()
    expect(reply).to_have_text("Echo: hello from the browser")
    expect(reply).not_to_have_class(re.compile(r"\bpending\b"))

    sent = json.loads(upstream.requests[-1].body)
    assert sent["stream"] is True
    assert sent["messages"] == [{"role": "user", "content": "hello from the browser"}]
    # The 401 of the first model listing, before the key was entered, is the only error the browser logs.
    assert [error for error in page.errors if "401" not in error] == []


@pytest.mark.browser
def test_the_page_shows_the_gateways_error_when_the_model_server_fails(page, upstream):
    from playwright.sync_api import expect

    enter_api_key(page, API_KEY)
    expect(page.locator("#model")).to_have_value(FAKE_MODEL)
    upstream.behaviour.failure_status = 500
    page.locator("#message").fill("are you there?")
    page.locator("#message").press("Enter")

    expect(page.locator("#status")).to_have_text("Error: the model server failed with HTTP 500")
    expect(page.locator(".message.assistant")).to_have_class(re.compile(r"\berror\b"))
    expect(page.locator("#send")).to_be_enabled()
