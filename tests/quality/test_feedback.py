"""``POST /v1/feedback`` over sockets: only for the caller's (or its team's) own requests, and in the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai

from tests.helpers.servers import serve_gateway
from tests.quality.conftest import MASTER, make_settings, quality


async def _key(client: httpx.AsyncClient, name: str, team: str) -> tuple[str, str]:
    r = await client.post(
        "/admin/keys", json={"name": name, "team": team}, headers={"authorization": f"Bearer {MASTER}"}
    )
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["id"]


async def _feedback(client: httpx.AsyncClient, key: str, body: Any) -> httpx.Response:
    return await client.post("/v1/feedback", json=body, headers={"authorization": f"Bearer {key}"})


async def test_feedback_only_for_the_callers_own_requests(
    sims: dict[str, str], tmp_path: Path, master: str, redis_prefix: str
) -> None:
    cfg = make_settings(sims, tmp_path, quality={"sample_rate": 0}, auth=redis_prefix)
    with serve_gateway(cfg) as gw:
        async with httpx.AsyncClient(base_url=gw.base_url) as http:
            alice, _ = await _key(http, "alice", "red")
            bob, _ = await _key(http, "bob", "blue")
            carol, carol_id = await _key(http, "carol", "red")
            sdk = openai.AsyncOpenAI(
                base_url=f"{gw.base_url}/v1", api_key=alice, max_retries=0, default_headers={"x-request-id": "req-a1"}
            )
            await sdk.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
            await sdk.close()
            refused = await _feedback(http, bob, {"request_id": "req-a1", "score": 0})
            unknown = await _feedback(http, alice, {"request_id": "req-nope", "score": 1})
            own = await _feedback(http, alice, {"request_id": "req-a1", "score": 1, "comment": "great"})
            team = await _feedback(http, carol, {"request_id": "req-a1", "thumbs": "down"})
            bad = [
                await _feedback(http, alice, body)
                for body in (
                    {"request_id": "req-a1", "score": 1.5},
                    {"request_id": "req-a1"},
                    {"score": 1},
                    {"request_id": "req-a1", "thumbs": "sideways"},
                    [1, 2],
                )
            ]
            anonymous = await http.post("/v1/feedback", json={"request_id": "req-a1", "score": 1})
            # a failed request has no answer to score; feedback again replaces (a flood weighs one)
            failed = await http.post(
                "/v1/chat/completions",
                json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": f"Bearer {alice}", "x-request-id": "req-a2"},
            )
            on_failed = await _feedback(http, alice, {"request_id": "req-a2", "score": 1})
            flood = [await _feedback(http, alice, {"request_id": "req-a1", "score": 0}) for _ in range(20)]
            last = await _feedback(http, carol, {"request_id": "req-a1", "score": 0.25})
            revoked = await http.post(f"/admin/keys/{carol_id}/revoke", headers={"authorization": f"Bearer {MASTER}"})
            after_revoke = await _feedback(http, carol, {"request_id": "req-a1", "score": 1})
            not_admin = await http.get("/admin/quality", headers={"authorization": f"Bearer {alice}"})
        body = await quality(gw, headers={"authorization": f"Bearer {MASTER}"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "request_not_found"
    assert unknown.status_code == 404
    assert own.status_code == 201 and own.json() == {
        "object": "feedback", "request_id": "req-a1", "score": 1.0, "route": "auto", "model": "weak"
    }  # fmt: skip
    assert team.status_code == 201 and team.json()["score"] == 0.0
    for r in bad:
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    assert anonymous.status_code == 401
    assert not_admin.status_code == 403
    assert failed.status_code == 404
    assert on_failed.status_code == 400 and on_failed.json()["error"]["code"] == "request_not_answered"
    assert all(r.status_code == 201 for r in flood) and last.status_code == 201
    assert revoked.status_code == 200, revoked.text
    assert after_revoke.status_code == 401
    [auto] = body["data"]
    assert auto["feedback"] == {"count": 1, "mean": 0.25}  # the request's latest feedback, once
