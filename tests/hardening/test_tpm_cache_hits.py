"""A cache hit's tokens never reached an upstream: they do not count against its key's tokens per minute. Before,
a client repeating a cached request got 429s for tokens no model spent."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from tests.hardening.gateways import master_key, sim_gateway

MASTER = "sk-master-" + uuid.uuid4().hex


def test_cache_hits_do_not_use_up_tpm(tmp_path: Path) -> None:
    with master_key(MASTER), sim_gateway(tmp_path, {"cache": {"enabled": True}}) as gw:
        with httpx.Client(base_url=gw.base_url, timeout=30) as http:
            admin = {"authorization": f"Bearer {MASTER}"}
            made = http.post("/admin/keys", json={"name": "t", "tpm": 3000}, headers=admin).json()
            key = {"authorization": f"Bearer {made['key']}"}
            text = " ".join(f"word{i}" for i in range(600))  # ~1,200 tokens: three answers use up the minute
            body = {
                "model": "cheap",
                "messages": [{"role": "user", "content": text}],
                "max_tokens": 5,
                "temperature": 0,
            }
            replies = [http.post("/v1/chat/completions", json=body, headers=key) for _ in range(6)]
    assert [r.status_code for r in replies] == [200] * 6, [r.text for r in replies if r.status_code != 200]
    assert [r.headers["x-gateway-cache"] for r in replies] == ["miss"] + ["hit"] * 5
