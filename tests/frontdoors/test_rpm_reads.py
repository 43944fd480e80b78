"""A key's ``rpm`` bounds every ``/v1`` request it makes, as ``gateway/auth/request_rate.py`` says of the requests
that call no model ("it still takes the gateway's and the database's time, so it counts as one request in the same
RPM bucket"): feedback and the token counts are charged, but the stored-response reads (``GET /v1/responses/{id}``,
``/input_items``, ``DELETE``, ``/cancel``) and ``GET /v1/spend`` (a ledger flush and rollup queries each) were not:
a key limited to 1 request a minute could make any number of them."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.frontdoors.scripted_upstream import scripted_gateway


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/responses/{id}"),
        ("GET", "/v1/responses/{id}/input_items"),
        ("POST", "/v1/responses/{id}/cancel"),
        ("DELETE", "/v1/responses/{id}"),
        ("GET", "/v1/spend"),
    ],
)
async def test_reads_count_against_the_keys_rpm(tmp_path: Path, method: str, path: str) -> None:
    with scripted_gateway(tmp_path) as up:
        key = up.key(rpm=2)
        async with httpx.AsyncClient(base_url=up.url, timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
            made = await c.post("/v1/responses", json={"model": "m", "input": "hello"})  # the minute's 1st request
            assert made.status_code == 200, made.text
            url = path.format(id=made.json()["id"])
            statuses = [(await c.request(method, url)).status_code for _ in range(5)]
    # 1 inference + 5 reads with rpm 2: at most one read fits in the minute, the rest are 429
    assert statuses.count(429) >= 4, statuses


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/m"])
async def test_model_listing_counts_against_the_keys_rpm(tmp_path: Path, path: str) -> None:
    with scripted_gateway(tmp_path) as up:
        key = up.key(rpm=2)
        async with httpx.AsyncClient(base_url=up.url, timeout=30, headers={"authorization": f"Bearer {key}"}) as c:
            statuses = [(await c.get(path)).status_code for _ in range(5)]
    assert statuses[:2] == [200, 200] and statuses.count(429) >= 2, statuses  # before: five 200s
