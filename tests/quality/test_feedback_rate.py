"""``POST /v1/feedback`` counts against the caller's key's requests-per-minute limit, as inference does: a 429 in
OpenAI's error shape with ``retry-after``, in Redis (shared by replicas) and in process."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers.servers import serve_gateway
from tests.quality.conftest import MASTER, make_settings


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_feedback_is_rate_limited_with_the_keys_rpm(
    sims: dict[str, str], tmp_path: Path, master: str, redis_prefix: str, store: str
) -> None:
    cfg = make_settings(sims, tmp_path, quality={"sample_rate": 0}, auth=redis_prefix)
    if store == "memory":
        cfg = cfg.model_copy(update={"auth": cfg.auth.model_copy(update={"redis_url": None})})
    admin = {"authorization": f"Bearer {MASTER}"}
    with serve_gateway(cfg) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url) as http:
            r = await http.post("/admin/keys", json={"name": "limited", "rpm": 3}, headers=admin)
            assert r.status_code == 201, r.text
            key = r.json()["key"]
            sdk = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0)
            raw = await sdk.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
            rid = raw.headers["x-request-id"]
            auth = {"authorization": f"Bearer {key}"}
            # the key's bucket holds 3 requests a minute: the chat request and two feedbacks take them
            ok = [await http.post("/v1/feedback", json={"request_id": rid, "score": s}, headers=auth) for s in (1, 0)]
            limited = await http.post("/v1/feedback", json={"request_id": rid, "score": 0.5}, headers=auth)
            # the same bucket: inference is refused too, and the master key has no limit
            inference: openai.RateLimitError | None = None
            try:
                await sdk.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": "again"}], max_tokens=8
                )
            except openai.RateLimitError as exc:
                inference = exc
            await sdk.close()
            by_master = await http.post("/v1/feedback", json={"request_id": rid, "score": 0.5}, headers=admin)
    assert [r.status_code for r in ok] == [201, 201], [r.text for r in ok]
    assert limited.status_code == 429, limited.text
    error = limited.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "3 requests per minute" in error["message"]
    assert int(limited.headers["retry-after"]) >= 1
    assert inference is not None and inference.status_code == 429  # one bucket: feedback took the key's last two
    assert by_master.status_code in (201, 404)  # not limited (the master did not send that request: 404)
