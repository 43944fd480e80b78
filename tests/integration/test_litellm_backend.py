"""The litellm backend kind, through litellm.acompletion, against an OpenAI-compatible simulator."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from backends.litellm import LiteLLMBackend
from gateway.app import create_app
from gateway.config import ModelSpec, settings_from_dict
from gateway.errors import UpstreamError
from gateway.simulator import create_simulator_app, get_profile
from tests.helpers.servers import run_asgi_server
from tests.helpers.upstream import refused_url


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


async def test_litellm_backend_counts_its_requests_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend layer owns the in-flight count routing reads: a stream holds one until it is closed."""
    monkeypatch.setenv("SIM_KEY", "sk-sim")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with run_asgi_server(create_simulator_app(get_profile("fast"), model_name="claude-sim")) as sim:
        spec = {"name": "claude", "backend": "litellm", "upstream_model": "openai/claude-sim", "api_key_env": "SIM_KEY"}
        backend = LiteLLMBackend(ModelSpec.model_validate({**spec, "base_url": sim + "/v1"}))
        await backend.complete("/chat/completions", body)
        assert backend.stats.in_flight == 0
        stream = await backend.open_stream("/chat/completions", body)
        assert backend.stats.in_flight == 1
        assert [e async for e in stream.events()][-1] == b"[DONE]"
        await stream.aclose()
        await stream.aclose()  # released once
        assert backend.stats.in_flight == 0
    dead = LiteLLMBackend(ModelSpec.model_validate({**spec, "base_url": refused_url() + "/v1"}))
    for call in (dead.complete, dead.open_stream):
        with pytest.raises(UpstreamError):
            await call("/chat/completions", body)
    assert dead.stats.in_flight == 0
