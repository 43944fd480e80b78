"""Request types the OpenAI API refuses are refused here too, before anything is forwarded: numeric sampling
fields are JSON numbers (never a string or a bool), and an embeddings request does not stream."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from gateway.errors import InvalidRequest
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, validate
from tests.gateway.conftest import THREE_MODELS, chat_reply, gateway_client, make_settings
from tests.helpers.upstream import Seen

USER = [{"role": "user", "content": "x"}]
CHAT: dict[str, Any] = {"model": "m", "messages": USER}
COMPLETION: dict[str, Any] = {"model": "m", "prompt": "x"}
EMBEDDING: dict[str, Any] = {"model": "m", "input": "x"}

# -- numeric sampling fields are numbers -------------------------------------------------------------------

NOT_NUMBERS: list[tuple[str, Any, str]] = [
    ("temperature", "0.5", "temperature"),
    ("temperature", "0", "temperature"),
    ("temperature", True, "temperature"),
    ("temperature", False, "temperature"),
    ("top_p", "1", "top_p"),
    ("top_p", True, "top_p"),
    ("presence_penalty", "0", "presence_penalty"),
    ("frequency_penalty", False, "frequency_penalty"),
    ("logit_bias", {"50256": "-100"}, "logit_bias.50256"),
    ("logit_bias", {"50256": True}, "logit_bias.50256"),
]


@pytest.mark.parametrize("model", [ChatCompletionRequest, CompletionRequest])
@pytest.mark.parametrize(("name", "value", "param"), NOT_NUMBERS)
def test_a_numeric_sampling_field_must_be_a_number(model: Any, name: str, value: Any, param: str) -> None:
    base = CHAT if model is ChatCompletionRequest else COMPLETION
    with pytest.raises(InvalidRequest) as info:
        validate(model, {**base, name: value})
    assert (info.value.param, info.value.code) == (param, "invalid_value")
    assert info.value.message == f"Invalid value for '{param}': Input should be a valid number."


@pytest.mark.parametrize("model", [ChatCompletionRequest, CompletionRequest])
@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0, "top_p": 1, "presence_penalty": -2, "frequency_penalty": 2, "logit_bias": {"1": -100}},
        {
            "temperature": 0.7,
            "top_p": 0.9,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "logit_bias": {"1": 5.5},
        },
        {"temperature": 2, "top_p": 0},
        {
            "temperature": None,
            "top_p": None,
            "presence_penalty": None,
            "frequency_penalty": None,
            "logit_bias": None,
            "max_tokens": None,
            "n": None,
            "seed": None,
            "stop": None,
            "stream": None,
            "stream_options": None,
            "user": None,
        },
    ],
)
def test_numbers_ints_and_nulls_stay_accepted(model: Any, fields: dict[str, Any]) -> None:
    base = CHAT if model is ChatCompletionRequest else COMPLETION
    request = validate(model, {**base, **fields})
    for name, value in fields.items():
        assert getattr(request, name) == value


@pytest.mark.parametrize(("name", "value"), [("temperature", 2.5), ("temperature", -1), ("top_p", 1.5)])
def test_the_ranges_are_unchanged(name: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate(ChatCompletionRequest, {**CHAT, name: value})
    assert info.value.param == name


def test_embedding_dimensions_must_be_an_int() -> None:
    for value in ("8", True, 8.0):
        with pytest.raises(InvalidRequest) as info:
            validate(EmbeddingRequest, {**EMBEDDING, "dimensions": value})
        assert info.value.param == "dimensions"
    assert validate(EmbeddingRequest, {**EMBEDDING, "dimensions": 8}).dimensions == 8


# -- an embeddings request does not stream -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stream": True}, "stream"),
        ({"stream": "true"}, "stream"),
        ({"stream": "false"}, "stream"),
        ({"stream": 1}, "stream"),
        ({"stream": 0}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream_options": {}}, "stream_options"),
        ({"stream": False, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": True}}, "stream"),
    ],
)
def test_an_embeddings_request_cannot_stream(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        validate(EmbeddingRequest, {**EMBEDDING, **fields})
    assert (info.value.status, info.value.param, info.value.code) == (400, param, "unsupported_parameter")
    assert info.value.message.startswith(f"Unsupported parameter: '{param}'")


@pytest.mark.parametrize(
    "fields", [{"stream": False}, {"stream": None}, {"stream_options": None}, {"stream": False, "stream_options": None}]
)
def test_an_embeddings_request_s_stream_false_is_accepted_and_dropped(fields: dict[str, Any]) -> None:
    body = {**EMBEDDING, "encoding_format": "float", **fields}
    validate(EmbeddingRequest, body)
    assert body == {**EMBEDDING, "encoding_format": "float"}


def test_chat_and_completions_keep_their_stream() -> None:
    for model, base in ((ChatCompletionRequest, CHAT), (CompletionRequest, COMPLETION)):
        body = {**base, "stream": False, "stream_options": None}
        validate(model, body)
        assert body == {**base, "stream": False, "stream_options": None}


# -- through the gateway ----------------------------------------------------------------------------------

EMBEDDING_REPLY = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.25, 0.5]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 1, "total_tokens": 1},
}


def _with_embedding_model(cache: bool) -> Any:
    emb = {
        "name": "emb",
        "backend": "openai",
        "base_url": "http://emb/v1",
        "upstream_model": "text-embedding-3-small",
        "mode": "embedding",
    }
    return make_settings({"models": [*THREE_MODELS["models"], emb], "cache": {"enabled": cache}})


def _inference_calls(seen: list[Seen]) -> list[str]:
    """The paths of the upstream's inference requests (not the gateway's probes of ``/models``, ``/metrics``)."""
    return [s.path for s in seen if s.method == "POST"]


def _reply(seen: Seen) -> web.Response:
    return web.json_response(EMBEDDING_REPLY if seen.path.endswith("/embeddings") else chat_reply("x"))


async def test_a_streaming_embeddings_request_is_a_400_even_on_a_cache_hit() -> None:
    """Before, the pipeline took ``stream: true`` on an embeddings request as a streaming request: forwarded
    with ``stream`` to the upstream, or a cached answer replayed as chat chunks (only ``data: [DONE]``)."""
    body = {"model": "emb", "input": "hello"}
    async with gateway_client(_with_embedding_model(cache=True), _reply) as client:
        first = await client.post("/v1/embeddings", json=body)
        assert first.status_code == 200
        streamed = await client.post("/v1/embeddings", json={**body, "stream": True})
        missed = await client.post("/v1/embeddings", json={"model": "emb", "input": "other", "stream": True})
        calls = _inference_calls(client.upstream.requests)  # type: ignore[attr-defined]
    assert calls == ["/emb/v1/embeddings"]
    for r in (streamed, missed):
        assert r.status_code == 400
        assert r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert (err["param"], err["code"]) == ("stream", "unsupported_parameter")


async def test_an_embeddings_request_s_stream_false_is_not_forwarded() -> None:
    async with gateway_client(_with_embedding_model(cache=False), _reply) as client:
        r = await client.post(
            "/v1/embeddings", json={"model": "emb", "input": "hello", "stream": False, "stream_options": None}
        )
        (sent,) = [s.json() for s in client.upstream.requests if s.method == "POST"]  # type: ignore[attr-defined]
    assert r.status_code == 200
    assert r.json()["data"][0]["embedding"] == [0.25, 0.5]
    assert "stream" not in sent and "stream_options" not in sent


async def test_a_string_temperature_is_a_400_and_not_forwarded() -> None:
    async with gateway_client(_with_embedding_model(cache=False), _reply) as client:
        r = await client.post("/v1/chat/completions", json={"model": "big", "messages": USER, "temperature": "0.5"})
        calls = _inference_calls(client.upstream.requests)  # type: ignore[attr-defined]
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "temperature"
    assert calls == []
