"""A key's budget applies behind both front doors (402), in each API's error shape."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.frontdoors.conftest import MASTER, Env


def poor_key(env: Env) -> str:
    r = httpx.post(
        f"{env.url}/admin/keys",
        json={"name": "poor", "budget_usd": "0.000000000001"},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


async def test_budget_refuses_responses_and_messages(env: Env) -> None:
    key = poor_key(env)
    async with openai.AsyncOpenAI(base_url=env.url + "/v1", api_key=key, max_retries=0) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.responses.create(model="big", input="Hi", max_output_tokens=100)
    assert info.value.status_code == 402
    row = await env.ledger.one_row(info.value.response.headers["x-request-id"])
    assert row["endpoint"] == "responses" and row["status_code"] == 402
    async with anthropic.AsyncAnthropic(base_url=env.url, api_key=key, max_retries=0) as a:
        with pytest.raises(anthropic.APIStatusError) as refused:
            await a.messages.create(model="big", max_tokens=100, messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.status_code == 402
    body: Any = refused.value.body
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"
