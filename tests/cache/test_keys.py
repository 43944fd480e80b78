"""Cache keys: canonical JSON, what is and is not in the key, namespaces, determinism, semantic split."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cache.keys import build_keys, canonical_body, is_deterministic, namespace, semantic_text
from gateway.context import RequestContext

BASE: dict[str, Any] = {
    "model": "faq",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "temperature": 0,
    "max_tokens": 64,
}


def ctx_for(body: dict[str, Any], *, key_id: str | None = None, team: str | None = None) -> RequestContext:
    ctx = RequestContext(request_id="r", endpoint="chat", body=body, requested_model=str(body.get("model")))
    ctx.key_id = key_id
    ctx.team = team
    return ctx


def key(body: dict[str, Any], **kw: Any) -> str:
    return build_keys(ctx_for(body, **kw), shared=False, semantic=False).exact


def test_key_order_and_equivalent_json_do_not_matter() -> None:
    reordered = orjson.loads(
        b'{"max_tokens": 64.0, "temperature": 0.0, "messages": [{"content": "You are terse.", "role": "system"},'
        b' {"content": [{"type": "text", "text": "What is the capital of France?"}], "role": "user", "name": null}],'
        b' "model": "faq", "n": 1, "stop": null, "logprobs": false}'
    )
    assert key(reordered) == key(BASE)
    assert key({**BASE, "stop": "\n"}) == key({**BASE, "stop": ["\n"]})
    assert key({**BASE, "max_completion_tokens": 64, "max_tokens": None}) == key(BASE)


def test_stream_and_user_fields_are_not_in_the_key() -> None:
    streamed = {**BASE, "stream": True, "stream_options": {"include_usage": True}, "user": "u-42"}
    assert key(streamed) == key(BASE)
    # who asked and the provider's own prompt-cache hints do not change the answer either (the Responses door
    # forwards them; the Agents SDK and LangChain send them)
    hints = {"safety_identifier": "h-9f2", "prompt_cache_key": "conv-1", "prompt_cache_retention": "24h"}
    assert key({**BASE, **hints}) == key(BASE)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other-route"},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"n": 2},
        {"stop": ["END"]},
        {"seed": 7},
        {"max_tokens": 65},
        {"logprobs": True, "top_logprobs": 2},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "none"},
        {"some_future_parameter": 1},
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
    ],
)
def test_anything_that_changes_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert key({**BASE, **change}) != key(BASE)


def test_endpoint_and_routing_constraints_are_in_the_key() -> None:
    chat = ctx_for(BASE)
    comp = ctx_for(BASE)
    comp.endpoint = "completions"
    assert build_keys(chat, shared=False, semantic=False) != build_keys(comp, shared=False, semantic=False)
    strict = ctx_for(BASE)
    strict.constraints.min_quality = 8.0
    assert build_keys(strict, shared=False, semantic=False).exact != key(BASE)


def test_namespaces_isolate_tenants_unless_shared() -> None:
    assert namespace(ctx_for(BASE), shared=False) == "anonymous"
    assert namespace(ctx_for(BASE, key_id="k1"), shared=False) == "key:k1"
    assert namespace(ctx_for(BASE, key_id="k1", team="t"), shared=False) == "team:t"
    assert namespace(ctx_for(BASE, key_id="k1", team="t"), shared=True) == "shared"
    assert key(BASE, key_id="k1") != key(BASE, key_id="k2")
    assert key(BASE, key_id="k1", team="t") == key(BASE, key_id="k2", team="t")
    assert key(BASE, key_id="x") != key(BASE, team="x")  # a key id never collides with a team name
    a = build_keys(ctx_for(BASE, key_id="k1"), shared=True, semantic=False)
    b = build_keys(ctx_for(BASE, key_id="k2"), shared=True, semantic=False)
    assert a == b


def test_deterministic_requests() -> None:
    assert is_deterministic({"temperature": 0})
    assert is_deterministic({"temperature": 0.0})
    assert is_deterministic({"temperature": 0.8, "seed": 3})
    assert is_deterministic({"top_k": 1})
    assert not is_deterministic({})
    assert not is_deterministic({"temperature": 0.7})
    assert not is_deterministic({"temperature": False})
    assert not is_deterministic({"seed": None})


def test_semantic_bucket_is_the_request_minus_its_last_user_message() -> None:
    a = build_keys(ctx_for(BASE), shared=False, semantic=True)
    para = {**BASE, "messages": [BASE["messages"][0], {"role": "user", "content": "France's capital city?"}]}
    b = build_keys(ctx_for(para), shared=False, semantic=True)
    assert a.exact != b.exact
    assert a.bucket == b.bucket
    assert (a.text, b.text) == ("What is the capital of France?", "France's capital city?")
    other_system = {**para, "messages": [{"role": "system", "content": "You are verbose."}, para["messages"][1]]}
    assert build_keys(ctx_for(other_system), shared=False, semantic=True).bucket != a.bucket
    assert build_keys(ctx_for({**para, "temperature": 0.0, "seed": 1}), shared=False, semantic=True).bucket != a.bucket
    assert build_keys(ctx_for(BASE, key_id="k9"), shared=False, semantic=True).bucket != a.bucket


def test_semantic_needs_plain_text() -> None:
    image = {
        "model": "faq",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:,"}},
                ],
            }
        ],
    }
    assert semantic_text("chat", canonical_body(image)) is None
    assert semantic_text("chat", {"messages": [{"role": "system", "content": "x"}]}) is None
    # echo: the answer holds the prompt itself, so a similar prompt's answer is never this one's
    assert semantic_text("completions", {"prompt": "What's new in Python 3.10?", "echo": True}) is None
    rest, text = semantic_text("completions", {"prompt": ["Say hi"]}) or ({}, "")
    assert text == "Say hi" and rest["prompt"] != "Say hi"
