"""The dashboard's quality panel in a real headless Chromium (as tests/e2e/test_dashboard.py), after the monitor
judged a known ground truth."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.helpers.browser import OUTPUT, dashboard_page, needs_chromium
from tests.helpers.servers import serve_gateway
from tests.quality.conftest import MASTER, admin, make_settings, wait_judged


@needs_chromium
def test_the_quality_panel(sims: dict[str, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    cfg = make_settings(sims, tmp_path, quality={})
    with serve_gateway(cfg) as gw:
        for prompt in ("hard one", "trick one", "plain one", "plain two"):
            r = httpx.post(
                f"{gw.base_url}/v1/chat/completions",
                json={"model": "auto", "messages": [{"role": "user", "content": prompt}], "max_tokens": 8},
                headers=admin(),
                timeout=30,
            )
            assert r.status_code == 200
        asyncio.run(wait_judged(gw, 4))
        with dashboard_page(f"{gw.base_url}/dashboard", MASTER) as tab:
            page = tab.page
            line = page.locator('#quality-lines li[data-route="auto"]')
            expect(line).to_have_attribute("data-samples", "4")
            # 3 of 4 answers at least as good as the reference's (1 win, 2 ties, 1 loss)
            expect(line).to_contain_text("route auto: 75% ± ")
            expect(line).to_contain_text("of strong's quality at ")
            expect(line).to_contain_text("of gpt-4's cost, n = 4")
            expect(page.locator("#quality-note")).to_contain_text("Wilson")
            page.screenshot(path=str(OUTPUT / "dashboard-quality.png"), full_page=True)
            assert tab.errors == []
