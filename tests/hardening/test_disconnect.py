"""A client that goes away mid-stream: the upstream request is cancelled promptly (seen on the upstream's
side) and the tokens relayed so far are accounted (status 499, estimated completion tokens)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.hardening.support import LedgerFile, sim_stats
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

CANCEL_WITHIN_S = 2.0
# The "fast" profile slowed 100x: 100 ms to the first token, then 20 ms per token.
TIME_SCALE = 100.0
MAX_TOKENS = 400  # ~8 s of streaming: the client always leaves long before the end


@dataclass(slots=True)
class Env:
    gw: RunningGateway
    sim: str
    ledger: LedgerFile


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("disconnect")
    sim_app = create_simulator_app("fast", model_name="sim", time_scale=TIME_SCALE)
    with run_asgi_server(sim_app) as sim:
        ledger = LedgerFile(tmp / "ledger.db")
        settings = settings_from_dict(
            {
                "models": [
                    {
                        "name": "m",
                        "backend": "openai",
                        "base_url": sim + "/v1",
                        "upstream_model": "sim",
                        "input_cost_per_token": "0.00001",
                        "output_cost_per_token": "0.00003",
                    }
                ],
                "cache": {"enabled": False},
                "server": {"metrics_scrape_seconds": 3600},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
            }
        )
        with serve_gateway(settings) as gw:
            yield Env(gw, sim, ledger)


async def stream_then_hang_up(base_url: str, path: str, body: dict[str, object], rid: str, events: int) -> list[bytes]:
    """POST a streaming request on a raw socket, read ``events`` data events, then close the socket."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nx-request-id: {rid}\r\n\r\n"
    ).encode()
    writer.write(head + payload)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert b" 200 " in status_line, status_line
    seen: list[bytes] = []
    buf = b""
    async with asyncio.timeout(10):
        while len(seen) < events:
            chunk = await reader.read(4096)
            assert chunk, "the gateway closed the stream early"
            buf += chunk
            seen = [line for line in buf.split(b"\n") if line.startswith(b"data: {")]
    writer.transport.abort()  # the client vanishes (RST), like a killed process
    return seen


async def wait_cancelled(sim: str, before: int) -> float:
    """Seconds until the simulator counts one more cancelled request (fails after CANCEL_WITHIN_S)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < CANCEL_WITHIN_S:
        stats = sim_stats(sim)
        if stats["requests_cancelled"] > before and stats["running"] == 0:
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise AssertionError(f"upstream not cancelled within {CANCEL_WITHIN_S} s: {sim_stats(sim)}")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "tell me a long story"}]}),
        ("/v1/completions", {"prompt": "Once upon a time"}),
    ],
    ids=["chat", "completions"],
)
async def test_disconnect_mid_stream_cancels_upstream_and_accounts(
    env: Env, path: str, body: dict[str, object]
) -> None:
    before = sim_stats(env.sim)
    assert before["running"] == 0
    rid = f"disc-{uuid.uuid4().hex[:12]}"
    full = {"model": "m", "max_tokens": MAX_TOKENS, "stream": True, **body}
    seen = await stream_then_hang_up(env.gw.base_url, path, full, rid, events=6)
    took = await wait_cancelled(env.sim, before["requests_cancelled"])
    after = sim_stats(env.sim)
    assert after["requests_completed"] == before["requests_completed"], "the upstream finished the answer anyway"

    row = await env.ledger.one_row(rid)
    assert row["status_code"] == 499 and row["error_type"] == "ClientDisconnected"
    assert row["tokens_estimated"] == 1
    relayed_content = len(seen) - 1 if path.endswith("chat/completions") else len(seen)  # minus the role chunk
    # counted from the text relayed (re-tokenised, so not exactly one token per chunk), never the whole answer
    assert 0 < row["completion_tokens"] < MAX_TOKENS // 2, (row["completion_tokens"], relayed_content)
    assert row["prompt_tokens"] > 0
    assert row["chosen_model"] == "m"
    print(f"upstream cancelled {took * 1000:.0f} ms after the client left; {row['completion_tokens']} tokens accounted")


async def hang_up_in_flight(env: Env, body: dict[str, object], rid: str) -> None:
    """POST ``body`` to the chat endpoint on a raw socket and close it once the upstream is working on it."""
    before = sim_stats(env.sim)
    host, port = env.gw.base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    payload = orjson.dumps(body)
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nx-request-id: {rid}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    for _ in range(200):  # wait until the request reached the upstream
        if sim_stats(env.sim)["running"] > 0:
            break
        await asyncio.sleep(0.02)
    writer.transport.abort()
    await wait_cancelled(env.sim, before["requests_cancelled"])


async def test_disconnect_while_waiting_for_first_token(env: Env) -> None:
    """The client leaves before the stream starts (a long prefill): the upstream is cancelled too."""
    from tests.hardening.support import clear_fault, set_fault

    set_fault(env.sim, mode="slow", factor=50)  # first token after ~5 s
    try:
        rid = f"disc-{uuid.uuid4().hex[:12]}"
        await hang_up_in_flight(
            env, {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}, rid
        )
    finally:
        clear_fault(env.sim)
    row = await env.ledger.one_row(rid)
    assert row["status_code"] == 499 and row["completion_tokens"] == 0  # a cancelled stream stops generating
    assert row["chosen_model"] == "m" and row["prompt_tokens"] > 0 and row["cost_usd"] > 0  # its prompt was read


async def test_hanging_up_on_a_non_streamed_request_does_not_make_it_free(env: Env) -> None:
    """A hosted API writes (and bills) a non-streamed answer to its end whoever still listens: a client that
    leaves while the call is in flight is charged the prompt and the answer it asked for (estimated), else
    hanging up would be a way around any budget."""
    rid = f"disc-{uuid.uuid4().hex[:12]}"
    body = {"model": "m", "messages": [{"role": "user", "content": "tell me a long story"}], "max_tokens": 300, "n": 2}
    await hang_up_in_flight(env, body, rid)
    row = await env.ledger.one_row(rid)
    assert row["status_code"] == 499 and row["error_type"] == "ClientDisconnected"
    assert row["chosen_model"] == "m" and row["tokens_estimated"] == 1
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] == 600  # max_tokens for each of the n answers
    charged = Decimal(row["cost_usd"]).scaleb(-12)  # SQLite keeps money as integer 1e-12 USD
    assert charged == row["prompt_tokens"] * Decimal("0.00001") + 600 * Decimal("0.00003")

    rid = f"disc-{uuid.uuid4().hex[:12]}"  # no max_tokens: the answer routing expected (the model's average)
    await hang_up_in_flight(env, {"model": "m", "messages": [{"role": "user", "content": "go on"}]}, rid)
    row = await env.ledger.one_row(rid)
    assert row["status_code"] == 499 and row["completion_tokens"] > 0 and row["cost_usd"] > 0
