"""The dashboard in a real headless Chromium (Debian's ``chromium``; Playwright drives it through
``executable_path`` since ``playwright install`` cannot download browsers offline)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers.servers import REPO_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
#: Screenshots land here (not committed).
OUTPUT = REPO_ROOT / "test-output"

#: Marks a test that needs the browser.
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed (scripts/test.sh installs it)"
)


@dataclass
class DashboardPage:
    """An open dashboard tab and the JavaScript errors it has raised so far (its Content-Security-Policy's refusals
    included: a dashboard the policy breaks fails every browser test)."""

    page: Page
    errors: list[str] = field(default_factory=list)


@contextmanager
def dashboard_page(url: str, master_key: str | None = None) -> Iterator[DashboardPage]:
    """Open ``url`` (the gateway's ``/dashboard``) in a fresh headless Chromium; log in with ``master_key``
    when given. The browser closes on exit."""
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            tab = DashboardPage(page)
            page.on("pageerror", lambda exc: tab.errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: tab.errors.append(msg.text) if "Content Security Policy" in msg.text else None,
            )
            page.goto(url)
            if master_key is not None:
                page.fill("#master-key", master_key)
                page.click("#login-button")
            yield tab
        finally:
            browser.close()
