"""The cost dashboard in a real headless Chromium: log in, load it after a known workload, check its numbers.

Needs Debian's ``chromium`` (``apt-get install -y chromium``, done by scripts/ci-setup.sh); Playwright
drives it through ``executable_path`` since ``playwright install`` cannot download browsers offline.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from tests.accounting.conftest import auth_header, chat, make_settings
from tests.accounting.fakes import DictCache
from tests.accounting.upstream import create_upstream_app
from tests.helpers.browser import OUTPUT, dashboard_page, needs_chromium
from tests.helpers.servers import REPO_ROOT, ServerThread, run_asgi_server

MASTER = "master-" + uuid.uuid4().hex


@pytest.fixture
def gateway_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real gateway (uvicorn, keys on, SQLite ledger) over the test upstream, with an exact-match cache."""
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    with run_asgi_server(create_upstream_app()) as upstream:
        settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True, base_url=f"{upstream}/v1")
        app = create_app(settings)
        server = ServerThread(app)
        server.start()
        try:
            app.state.gateway.pipeline.cache = DictCache()
            yield server.base_url
        finally:
            server.stop()


def run_workload(base: str) -> dict[str, Any]:
    """A known mix: two keys, streaming and not, four backends, two cache hits and one upstream failure."""
    admin = auth_header(MASTER)
    with httpx.Client(base_url=base, timeout=30) as client:
        keys = {
            name: client.post("/admin/keys", json={"name": name, "team": "demo"}, headers=admin).json()["key"]
            for name in ("web-app", "batch-jobs")
        }

        def send(key: str, body: dict[str, Any]) -> int:
            return client.post("/v1/chat/completions", json=body, headers=auth_header(keys[key])).status_code

        codes = [
            send("web-app", chat("hosted-a", "summarise this ticket", max_tokens=40, user="alice")),
            send("web-app", chat("hosted-a", "translate to French", max_tokens=25, user="bob")),
            send("web-app", chat("hosted-a", "stream a haiku", stream=True, max_tokens=17, user="alice")),
            send("batch-jobs", chat("gpt4o", "hard reasoning question " * 20, max_tokens=300, user="carol")),
            send("batch-jobs", chat("gpt4o", "write the release notes", max_tokens=120, user="carol")),
            send("batch-jobs", chat("local", "classify this", max_tokens=5, user="dave")),
            send("batch-jobs", chat("local", "extract the entities", stream=True, max_tokens=30, user="dave")),
            send("web-app", chat("hosted-nousage", "count it yourself", max_tokens=12, user="bob")),
            send("web-app", chat("hosted-a", "what are your opening hours", max_tokens=20, user="erin")),
            send("web-app", chat("hosted-a", "what are your opening hours", max_tokens=20, user="erin")),
            send("web-app", chat("hosted-a", "what are your opening hours", max_tokens=20, user="frank")),
            send("batch-jobs", chat("broken", "this one fails", user="dave")),
        ]
        assert codes == [200] * 11 + [502], codes  # an upstream 500 is a 502 (issue 20)
        deadline = time.monotonic() + 10
        while True:
            spend = client.get("/admin/spend", params={"group_by": "model"}, headers=admin).json()
            if spend["totals"]["requests"] == len(codes) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert spend["totals"]["requests"] == len(codes)
    return {"keys": keys, "spend": spend}


def _send_one(base: str, key: str) -> None:
    r = httpx.post(
        f"{base}/v1/chat/completions",
        json=chat("gpt4o", "one more", max_tokens=50),
        headers=auth_header(key),
        timeout=30,
    )
    assert r.status_code == 200


@needs_chromium
def test_dashboard_shows_the_workload(gateway_url: str) -> None:
    from playwright.sync_api import expect

    work = run_workload(gateway_url)
    totals = work["spend"]["totals"]
    by_model = {g["group"]: g for g in work["spend"]["data"]}
    with dashboard_page(f"{gateway_url}/dashboard?refresh=1") as tab:
        page = tab.page
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#dashboard")).to_be_hidden()

        page.fill("#master-key", "not-the-master-key")
        page.click("#login-button")
        expect(page.locator("#login-error")).to_contain_text("master key")

        page.fill("#master-key", MASTER)
        page.click("#login-button")
        page.wait_for_selector("body[data-loaded]")
        expect(page.locator("#dashboard")).to_be_visible()

        def value(sel: str) -> str:
            v = page.get_attribute(sel, "data-value")
            assert v is not None, sel
            return v

        assert value("#total-requests") == "12"
        assert value("#error-count") == "1"
        assert value("#total-cost") == totals["cost_usd"]
        assert value("#total-baseline") == totals["baseline_cost_usd"]
        assert Decimal(value("#total-saved")) == Decimal(totals["baseline_cost_usd"]) - Decimal(totals["cost_usd"])
        assert value("#cache-hits") == "2"
        expect(page.locator("#cache-hit-rate")).to_have_text("16.7%")
        assert int(value("#total-tokens")) == totals["total_tokens"]
        # what the charts draw adds up to the ledger's numbers
        assert abs(Decimal(value("#chart-spend-total")) - Decimal(totals["cost_usd"])) < Decimal("1e-9")
        assert abs(Decimal(value("#chart-savings-baseline")) - Decimal(totals["baseline_cost_usd"])) < Decimal("1e-9")
        assert int(value("#chart-backend-requests")) == 11  # the failure has no backend
        assert int(value("#chart-backend-tokens")) == totals["total_tokens"]
        assert value("#chart-cache-hits") == "2" and value("#chart-cache-total") == "12"
        rows = page.locator("#table-models tbody tr")
        expect(rows).to_have_count(len(by_model))
        expect(page.locator('#table-models tr[data-key="hosted-a"] td').nth(1)).to_have_text(
            str(by_model["hosted-a"]["requests"])
        )
        expect(page.locator("#table-keys tbody")).to_contain_text("web-app")
        expect(page.locator("#table-keys tbody")).to_contain_text("batch-jobs")
        top_user = httpx.get(
            f"{gateway_url}/admin/spend", params={"group_by": "user"}, headers=auth_header(MASTER)
        ).json()["data"][0]
        expect(page.locator("#table-users tbody tr").first).to_have_attribute("data-key", top_user["group"])
        expect(page.locator("#table-users tbody")).to_contain_text("carol")
        page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)

        # live refresh picks up a new request; the range selector re-queries with finer buckets
        _send_one(gateway_url, work["keys"]["batch-jobs"])
        expect(page.locator("#total-requests")).to_have_attribute("data-value", "13", timeout=10_000)
        expect(page.locator("#ledger-status")).to_contain_text("3600 s buckets")
        page.select_option("#range", "1h")
        expect(page.locator("#ledger-status")).to_contain_text("60 s buckets")

        page.click("#logout")
        expect(page.locator("#login")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        assert tab.errors == []
    if os.environ.get("GATEWAY_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(OUTPUT / "dashboard.png", REPO_ROOT / "docs" / "dashboard.png")
