"""``/v1/completions`` is routed only to models that serve it: litellm's backend calls ``acompletion`` (chat only),
and answered such a request with a 400 that no fallback followed, though another member could answer."""

from __future__ import annotations

from typing import Any

import pytest

from backends import CircuitBreaker
from gateway.config import settings_from_dict
from gateway.constraints import Constraints
from gateway.errors import NoRouteSatisfies
from gateway.features import extract_features
from gateway.routing import Router
from gateway.tokens import ApproxCounter
from tests.helpers.upstream import routing_backends

MODELS: list[dict[str, Any]] = [
    {"name": "lite", "backend": "litellm", "upstream_model": "anthropic/claude-x", "quality": 9.0},
    {"name": "small", "backend": "vllm", "base_url": "http://a/v1", "quality": 6.0, "gpu_hour_usd": 1.0},
]


@pytest.fixture(scope="module")
def router() -> Router:
    settings = settings_from_dict(
        {"models": MODELS, "routes": {"best": {"models": ["lite", "small"], "policy": "quality"}}}
    )
    backends = routing_backends(settings)
    return Router(settings, backends, {n: CircuitBreaker() for n in backends}, None)


def ranked(router: Router, endpoint: str, model: str) -> list[str]:
    body = {"messages": [{"role": "user", "content": "hi"}]} if endpoint == "chat" else {"prompt": "hi"}
    feats = extract_features(endpoint, body, ApproxCounter())
    return [c.name for c in router.plan(model, feats, Constraints()).decision.ranking]


def test_completions_skip_a_chat_only_member(router: Router) -> None:
    assert ranked(router, "chat", "best")[0] == "lite"
    assert ranked(router, "completions", "best") == ["small"]


def test_completions_asked_of_a_chat_only_model_by_name_is_a_clear_400(router: Router) -> None:
    with pytest.raises(NoRouteSatisfies, match="text completions"):
        ranked(router, "completions", "lite")
