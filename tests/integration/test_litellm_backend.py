"""The litellm backend kind, through litellm.acompletion, against an OpenAI-compatible simulator."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from gateway.app import create_app
from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app, get_profile
from tests.helpers.servers import run_asgi_server


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("litellm")
    with run_asgi_server(create_simulator_app(get_profile("fast"), model_name="claude-sim")) as sim:
        settings = settings_from_dict(
            {
                "models": [
                    {
                        "name": "claude",
                        "backend": "litellm",
                        "upstream_model": "openai/claude-sim",
                        "base_url": sim + "/v1",
                        "api_key_env": "SIM_KEY",
                        "quality": 8.8,
                    }
                ],
                "cache": {"enabled": False},
                "ledger": {"url": f"sqlite+aiosqlite:///{tmp}/ledger.db"},
            }
        )
        with run_asgi_server(create_app(settings), startup_timeout=60) as url:
            yield url


async def test_litellm_chat_and_stream(gateway_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_KEY", "sk-sim")
    client = openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="x", max_retries=0)
    completion = await client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert completion.model == "claude"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    stream = await client.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.model == "claude" for c in chunks)
