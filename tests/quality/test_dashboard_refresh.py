"""The dashboard's quality panel in a real headless Chromium: ``/admin/quality`` (a GROUP BY over the range's raw
ledger rows) is asked less often than the rest refreshes, and never again while its previous request is pending."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.quality.report import quality_report
from tests.accounting.conftest import make_settings
from tests.accounting.upstream import create_upstream_app
from tests.helpers.browser import dashboard_page, needs_chromium
from tests.helpers.servers import ServerThread, run_asgi_server
from tests.quality.conftest import MASTER


@dataclass
class Calls:
    """The quality report's calls as the server saw them."""

    delay_s: float = 0.0
    total: int = 0
    in_flight: int = 0
    most_in_flight: int = 0


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Calls]]:
    """A gateway (SQLite ledger, master key) whose quality report is counted and can be made slow."""
    calls = Calls()

    async def counted(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls.total += 1
        calls.in_flight += 1
        calls.most_in_flight = max(calls.most_in_flight, calls.in_flight)
        try:
            await asyncio.sleep(calls.delay_s)
            return await quality_report(*args, **kwargs)
        finally:
            calls.in_flight -= 1

    monkeypatch.setattr("gateway.quality_routes.quality_report", counted)
    with run_asgi_server(create_upstream_app()) as upstream:
        settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True, base_url=f"{upstream}/v1")
        server = ServerThread(create_app(settings))
        server.start()
        try:
            yield server.base_url, calls
        finally:
            server.stop()


def _wait_loads(page: Any, n: int) -> None:
    # polled from here: wait_for_function evaluates a string in the page, which its CSP (no eval) refuses
    for _ in range(200):
        if page.evaluate("Number(document.body.dataset.loaded || 0)") >= n:
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"fewer than {n} loads in 20 s")


@needs_chromium
def test_the_quality_panel_refreshes_less_often(served: tuple[str, Calls]) -> None:
    base, calls = served
    with dashboard_page(f"{base}/dashboard?refresh=1", MASTER) as tab:
        _wait_loads(tab.page, 4)  # four refreshes of the rest: one quality request (every 60 s by default)
        assert calls.total == 1
        tab.page.click("#refresh")  # asked for: the quality panel too
        _wait_loads(tab.page, 5)
        tab.page.wait_for_timeout(300)
        assert calls.total == 2
        assert tab.errors == []


@needs_chromium
def test_a_slow_quality_request_is_never_doubled(served: tuple[str, Calls]) -> None:
    base, calls = served
    calls.delay_s = 2.5  # slower than the refresh and than the panel's own interval
    with dashboard_page(f"{base}/dashboard?refresh=1&quality_refresh=1", MASTER) as tab:
        _wait_loads(tab.page, 6)
        assert calls.most_in_flight == 1
        assert 1 <= calls.total <= 3
        tab.page.wait_for_selector("#quality-note:has-text('quality monitor off')")
        assert tab.errors == []


@needs_chromium
@pytest.mark.parametrize("query", ["refresh=0&quality_refresh=0", "refresh=-1&quality_refresh=-1", "refresh=abc"])
def test_an_address_cannot_make_the_dashboard_reload_back_to_back(served: tuple[str, Calls], query: str) -> None:
    """Each load flushes the ledger and runs several queries: a link with ``?refresh=0`` sent to an admin turned
    the open tab into a load generator (~19 loads a second). Intervals are at least a second."""
    base, calls = served
    with dashboard_page(f"{base}/dashboard?{query}", MASTER) as tab:
        _wait_loads(tab.page, 1)
        tab.page.wait_for_timeout(2500)
        loaded = int(tab.page.evaluate("Number(document.body.dataset.loaded || 0)"))
        assert 1 <= loaded <= 4, loaded
        assert calls.total <= 3
        assert tab.errors == []
