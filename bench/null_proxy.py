"""The floor under the gateway's throughput: the same server stack and upstream client, and nothing else.

A pure ASGI app on uvicorn (httptools, uvloop) that reads the body of ``POST /v1/chat/completions`` and sends it
as it is to the upstream with one aiohttp ``ClientSession``, answering with the upstream's body; ``GET`` answers
an empty model list (the harness's readiness check). No auth, parsing, routing, ledger, log or metrics: what a
request costs through uvicorn and aiohttp alone, on the core the harness gives the gateway. Measured beside the
gateway with the shared harness:

    RESULTS=/tmp/results/floor OTHER_NAME=floor SKIP_LITELLM=1 OTHER_CMD="env PYTHONPATH=$PWD $PWD/.venv/bin/python \\
      -m uvicorn bench.null_proxy:app --port 18662 --http httptools --loop uvloop --no-access-log \\
      --log-level warning" ../shared/bench/run_compare.sh http://127.0.0.1:18662
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp

_state: dict[str, Any] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI app (lifespan: the client session; http: the proxy)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                _state["url"] = os.environ["BENCH_UPSTREAM_BASE"] + "/chat/completions"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _state["session"].close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    json = [(b"content-type", b"application/json")]
    if scope["method"] == "GET":
        await send({"type": "http.response.start", "status": 200, "headers": json})
        await send({"type": "http.response.body", "body": b'{"object":"list","data":[]}'})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    async with _state["session"].post(_state["url"], data=body, headers={"content-type": "application/json"}) as r:
        data, status = await r.read(), r.status
    await send(
        {"type": "http.response.start", "status": status, "headers": [*json, (b"content-length", b"%d" % len(data))]}
    )
    await send({"type": "http.response.body", "body": data})
