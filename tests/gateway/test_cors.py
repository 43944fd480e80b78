"""``server.cors_origins``: a browser app on an allowed origin can call the API (preflight, then the request, its
gateway headers readable); another origin gets no CORS grant; unset, no CORS at all."""

from __future__ import annotations

from aiohttp import web

from gateway.config import Settings
from tests.helpers.upstream import Seen

from .conftest import THREE_MODELS, chat_reply, gateway_client, make_settings

APP = "https://app.example"
USER = [{"role": "user", "content": "Say hello."}]


def handler(request: Seen) -> web.Response:
    return web.json_response(chat_reply("gpt-4"))


def cors_settings(origins: list[str]) -> Settings:
    server = {**THREE_MODELS["server"], "cors_origins": origins}
    return make_settings({"server": server})


async def test_an_allowed_origin_can_call_and_read_the_gateway_headers() -> None:
    async with gateway_client(cors_settings([APP]), handler) as client:
        pre = await client.options(
            "/v1/chat/completions",
            headers={
                "origin": APP,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type, x-stainless-os",
            },
        )
        r = await client.post("/v1/chat/completions", json={"model": "big", "messages": USER}, headers={"origin": APP})
        other = await client.post(
            "/v1/chat/completions", json={"model": "big", "messages": USER}, headers={"origin": "https://evil.example"}
        )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == APP
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "x-stainless-os" in pre.headers["access-control-allow-headers"]
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP
    exposed = r.headers["access-control-expose-headers"]
    assert "x-gateway-cost-usd" in exposed and "x-request-id" in exposed
    assert r.headers["x-gateway-model"] == "big"
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


async def test_no_cors_unless_configured() -> None:
    async with gateway_client(make_settings(), handler) as client:
        r = await client.post("/v1/chat/completions", json={"model": "big", "messages": USER}, headers={"origin": APP})
        pre = await client.options(
            "/v1/chat/completions", headers={"origin": APP, "access-control-request-method": "POST"}
        )
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in pre.headers
