"""Virtual keys: 401s, revocation (also across replicas), own spend only, admin access, RPM/TPM, budgets."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.auth.admission import KeyAdmission
from tests.accounting.conftest import auth_header, chat, gateway_client, make_settings, upstream_app


async def new_key(client: httpx.AsyncClient, master: str, **fields: Any) -> dict[str, Any]:
    r = await client.post("/admin/keys", json={"name": "k", **fields}, headers=auth_header(master))
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    assert body["key"].startswith("sk-gw-") and len(body["key"]) > 40
    return body


async def spend_until(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], n: int, params: dict[str, str] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(200):
        r = await client.get(path, headers=headers, params=params or {})
        assert r.status_code == 200, r.text
        body = r.json()
        if body["totals"]["requests"] >= n:
            return body
        await asyncio.sleep(0.02)
    raise AssertionError(body)


def assert_openai_error(r: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == type_
    return err


async def test_keys_auth_and_own_spend(db_url: str, redis_prefix: str, master_key: str) -> None:
    settings = make_settings(db_url, auth=True, redis_prefix=redis_prefix)
    async with gateway_client(settings) as (client, _gw):
        r = await client.post("/admin/keys", json={"name": "x"})
        assert_openai_error(r, 401, "authentication_error")
        a = await new_key(client, master_key, name="alpha", team="research")
        b = await new_key(client, master_key, name="beta", team="ops")

        assert_openai_error(
            await client.post("/v1/chat/completions", json=chat("hosted-a")), 401, "authentication_error"
        )
        r = await client.post("/v1/chat/completions", json=chat("hosted-a"), headers=auth_header("sk-gw-nope"))
        assert_openai_error(r, 401, "authentication_error")

        for _ in range(2):
            r = await client.post(
                "/v1/chat/completions", json=chat("hosted-a", user="u1"), headers=auth_header(a["key"])
            )
            assert r.status_code == 200, r.text
        r = await client.post(
            "/v1/chat/completions", json=chat("gpt4o", max_tokens=20, user="u2"), headers=auth_header(b["key"])
        )
        assert r.status_code == 200

        mine = await spend_until(client, "/v1/spend", auth_header(a["key"]), 2)
        assert mine["totals"]["requests"] == 2 and mine["key_id"] == a["id"]
        assert [g["group"] for g in mine["data"]] == ["hosted-a"]
        theirs = await spend_until(client, "/v1/spend", auth_header(b["key"]), 1, {"group_by": "user"})
        assert theirs["totals"]["requests"] == 1
        assert [g["group"] for g in theirs["data"]] == ["u2"]
        assert Decimal(theirs["totals"]["cost_usd"]) > 0
        # the key's spent_usd is its whole spend (what its budget is measured against), whatever the range
        recent = await client.get("/v1/spend", params={"start": "2999-01-01"}, headers=auth_header(b["key"]))
        assert recent.json()["totals"]["cost_usd"] == "0"
        assert recent.json()["key"]["spent_usd"] == theirs["totals"]["cost_usd"] != "0"

        # admin endpoints: virtual keys are forbidden, the master key sees everyone
        assert_openai_error(await client.get("/admin/spend", headers=auth_header(a["key"])), 403, "permission_error")
        everyone = await spend_until(client, "/admin/spend", auth_header(master_key), 5, {"group_by": "key"})
        by_key = {g["group"]: g for g in everyone["data"]}
        assert by_key[a["id"]]["name"] == "alpha" and by_key[a["id"]]["requests"] == 2
        assert by_key[b["id"]]["cost_usd"] == theirs["totals"]["cost_usd"]
        assert by_key[None]["requests"] == 2  # the two 401s are in the ledger too
        teams = (await client.get("/admin/spend", params={"group_by": "team"}, headers=auth_header(master_key))).json()
        assert {g["group"] for g in teams["data"]} == {"research", "ops", None}

        # revocation
        r = await client.post(f"/admin/keys/{a['id']}/revoke", headers=auth_header(master_key))
        assert r.status_code == 200 and r.json()["revoked_at"]
        r = await client.post("/v1/chat/completions", json=chat("hosted-a"), headers=auth_header(a["key"]))
        assert_openai_error(r, 401, "authentication_error")
        assert_openai_error(await client.get("/v1/spend", headers=auth_header(a["key"])), 401, "authentication_error")
        listed = (await client.get("/admin/keys", headers=auth_header(master_key))).json()["data"]
        assert {k["id"]: k["revoked_at"] is not None for k in listed} == {a["id"]: True, b["id"]: False}
        assert all("key" not in k and "key_hash" not in k for k in listed)


async def test_revocation_reaches_other_replicas_at_once(db_url: str, redis_prefix: str, master_key: str) -> None:
    """Two gateways share the database and Redis; a key cached by one is refused as soon as the other revokes it."""
    settings = make_settings(db_url, auth=True, redis_prefix=redis_prefix)  # key cache: 30 s
    async with gateway_client(settings) as (one, _), gateway_client(settings) as (two, _):
        key = await new_key(one, master_key)
        r = await two.post("/v1/chat/completions", json=chat("hosted-a"), headers=auth_header(key["key"]))
        assert r.status_code == 200
        assert (await one.post(f"/admin/keys/{key['id']}/revoke", headers=auth_header(master_key))).status_code == 200
        r = await two.post("/v1/chat/completions", json=chat("hosted-a"), headers=auth_header(key["key"]))
        assert_openai_error(r, 401, "authentication_error")


@pytest.mark.parametrize("limiter", ["memory", "redis"])
async def test_rpm_and_tpm_limits(db_url: str, redis_prefix: str, master_key: str, limiter: str) -> None:
    settings = make_settings(db_url, auth=True, redis_prefix=redis_prefix if limiter == "redis" else None)
    async with gateway_client(settings) as (client, _):
        k = await new_key(client, master_key, rpm=3)
        codes = []
        for _ in range(5):
            r = await client.post("/v1/chat/completions", json=chat("hosted-a"), headers=auth_header(k["key"]))
            codes.append(r.status_code)
            if r.status_code == 429:
                err = assert_openai_error(r, 429, "rate_limit_error")
                assert "3 requests per minute" in err["message"]
                assert int(r.headers["retry-after"]) >= 1
        assert codes == [200, 200, 200, 429, 429]

        t = await new_key(client, master_key, tpm=40)
        body = chat("hosted-a", "hi", max_tokens=30)  # 8 prompt + 30 completion tokens
        codes = []
        for _ in range(3):
            r = await client.post("/v1/chat/completions", json=body, headers=auth_header(t["key"]))
            codes.append(r.status_code)
            await asyncio.sleep(0.05)  # settle runs after the response
        # the first takes its estimate (its prompt's bound and 30) and gives back all but its 38 tokens; the bucket's
        # 2 left do not hold the next one's estimate (before: admitted while the bucket was not empty, so the 2nd ran)
        assert codes == [200, 429, 429]
        assert "tokens per minute" in r.json()["error"]["message"]


@pytest.mark.parametrize("limiter", ["memory", "redis"])
async def test_concurrent_requests_do_not_burst_past_the_tpm(
    db_url: str, redis_prefix: str, master_key: str, limiter: str
) -> None:
    """Ten concurrent requests asking up to 2,000 tokens each on a 100-token-a-minute key: one runs. Before, all ten
    were admitted on the bucket's first 100 tokens (it was only required to be non-empty), 201 times the limit."""
    settings = make_settings(db_url, auth=True, redis_prefix=redis_prefix if limiter == "redis" else None)
    async with gateway_client(settings) as (client, _):
        t = await new_key(client, master_key, tpm=100)
        body = chat("hosted-a", "hi", max_tokens=2_000)
        answers = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body, headers=auth_header(t["key"])) for _ in range(10))
        )
    assert sorted(r.status_code for r in answers) == [200] + [429] * 9


@pytest.mark.parametrize("limiter", ["memory", "redis"])
async def test_budget_stops_spending(db_url: str, redis_prefix: str, master_key: str, limiter: str) -> None:
    settings = make_settings(db_url, auth=True, redis_prefix=redis_prefix if limiter == "redis" else None)
    async with gateway_client(settings) as (client, _):
        k = await new_key(client, master_key, name="capped", budget_usd="0.0005")
        codes = []
        for _ in range(8):
            r = await client.post(
                "/v1/chat/completions", json=chat("hosted-a", "hi", max_tokens=10), headers=auth_header(k["key"])
            )
            codes.append(r.status_code)
            await asyncio.sleep(0.02)
        # each request costs 0.000108641966; each reserves more than that, so the 5th would risk the budget
        assert codes == [200] * 4 + [402] * 4
        err = assert_openai_error(r, 402, "insufficient_quota")
        assert "Budget exceeded for key 'capped'" in err["message"] and "$0.0005" in err["message"]
        spent = await spend_until(client, "/v1/spend", auth_header(k["key"]), 8)
        assert Decimal(spent["totals"]["cost_usd"]) == 4 * Decimal("0.000108641966") <= Decimal("0.0005")


async def test_admin_access_without_keys(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys off and no master key: admin endpoints are off, loopback included; with a master key, it is needed."""
    monkeypatch.delenv("GATEWAY_MASTER_KEY", raising=False)
    with upstream_app(make_settings(db_url)) as settings:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            local = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
            remote = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 5000)), base_url="http://gw"
            )
            async with local, remote:
                assert_openai_error(await local.get("/admin/spend"), 401, "authentication_error")
                assert_openai_error(await remote.get("/admin/spend"), 401, "authentication_error")
                assert (await remote.post("/v1/chat/completions", json=chat("hosted-a"))).status_code == 200
                assert_openai_error(await remote.get("/v1/spend"), 401, "authentication_error")

        monkeypatch.setenv("GATEWAY_MASTER_KEY", "sesame")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as local:
                assert_openai_error(await local.get("/admin/spend"), 401, "authentication_error")
                assert (await local.get("/admin/spend", headers=auth_header("sesame"))).status_code == 200
                r = await local.get("/admin/spend", params={"group_by": "colour"}, headers=auth_header("sesame"))
                assert_openai_error(r, 400, "invalid_request_error")


@pytest.mark.parametrize("stream", [False, True])
async def test_each_request_identifies_its_caller_once(
    tmp_path: Any, master_key: str, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    # The key was once checked twice per request (before the body was read, then again at admission).
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}", auth=True)
    async with gateway_client(settings) as (client, gw):
        key = await new_key(client, master_key, name="counted", rpm=1000)
        admission = gw.admission
        assert isinstance(admission, KeyAdmission)
        lookups: list[str | None] = []
        real_lookup = admission.lookup

        async def counting_lookup(secret: str | None, *, fresh: bool = False) -> Any:
            lookups.append(secret)
            return await real_lookup(secret, fresh=fresh)

        monkeypatch.setattr(admission, "lookup", counting_lookup)
        r = await client.post(
            "/v1/chat/completions", json=chat("hosted-a", stream=stream), headers=auth_header(key["key"])
        )
        assert r.status_code == 200, r.text
        assert lookups == [key["key"]]
        r = await client.post("/v1/chat/completions", json=chat("hosted-a"), headers=auth_header(master_key))
        assert r.status_code == 200, r.text
        assert lookups == [key["key"], master_key]
        rows = await spend_until(client, "/admin/spend", auth_header(master_key), 2, {"group_by": "key"})
        assert {g["group"] for g in rows["data"]} == {key["id"], "master"}
