"""Fixtures of the browser tests: the web UI served in this process, and a headless Chromium page."""

from __future__ import annotations

import pytest

from tests.webui.browser import chromium_path, free_port, skip_reason


@pytest.fixture
def web_ui(tiny_model_dir):
    """The URL of a fresh web UI (the tiny Qwen3-VL built beforehand, so the page's first load is quick)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    tiny_model_dir("qwen3_vl")
    from vlft.webui.app import build_app, launch
    from vlft.webui.arguments import WebUiArguments

    app = build_app()
    url = launch(app, WebUiArguments(port=free_port()), block=False)
    yield url
    app.close()


@pytest.fixture
def page(web_ui):
    """A page of headless Chromium at the web UI."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(web_ui)
        yield page
        browser.close()
