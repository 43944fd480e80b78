"""A call that times out after reaching the upstream is paid for: a hosted API generates, and bills, a non-streamed
answer whoever still waits for it. Before, a client asking for answers longer than the model's timeouts got 504s
that cost its key nothing, however many candidates each request timed out on."""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from tests.hardening.gateways import budget_key, master_key
from tests.hardening.support import LedgerFile
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

MASTER = "sk-master-" + uuid.uuid4().hex
IN, OUT = Decimal("0.00001"), Decimal("0.00003")
PRICE = {"input_cost_per_token": str(IN), "output_cost_per_token": str(OUT)}
MAX_TOKENS = 50  # ~1.1 s on the slowed simulator, against a 0.3 s first-byte timeout
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, LedgerFile]]:
    ledger = LedgerFile(tmp_path_factory.mktemp("timeout") / "l.db")
    slow_app = create_simulator_app("fast", model_name="sim", time_scale=100.0)
    quick_app = create_simulator_app("fast", model_name="sim", time_scale=0.0)
    silent = socket.create_server(("127.0.0.1", 0))  # takes connections (the kernel's backlog), never answers
    with (
        contextlib.closing(silent),
        master_key(MASTER),
        run_asgi_server(slow_app) as slow,
        run_asgi_server(quick_app) as quick,
    ):
        settings = settings_from_dict(
            {
                "models": [
                    {
                        "name": "slow",
                        "backend": "openai",
                        "base_url": slow + "/v1",
                        "upstream_model": "sim",
                        "timeouts": {"first_byte": 0.3},
                        **PRICE,
                    },
                    {
                        "name": "slow-then-quick",
                        "backend": "openai",
                        "base_url": slow + "/v1",
                        "upstream_model": "sim",
                        "timeouts": {"first_byte": 0.3},
                        "fallbacks": ["quick"],
                        **PRICE,
                    },
                    {"name": "quick", "backend": "openai", "base_url": quick + "/v1", "upstream_model": "sim", **PRICE},
                    {
                        "name": "silent-8k",
                        "backend": "openai",
                        "base_url": f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
                        "upstream_model": "sim",
                        "timeouts": {"first_byte": 0.3},
                        "context_window": 8192,
                        **PRICE,
                    },
                ],
                "retry": {"backoff_base_ms": 0},
                "cache": {"enabled": False},
                "ledger": {"url": ledger.url, "flush_interval_seconds": 0.05},
                "server": {"metrics_scrape_seconds": 3600, "health_probe_seconds": 3600},
            }
        )
        with serve_gateway(settings) as gw:
            yield gw, ledger


def ask(gw: RunningGateway, key: str, model: str, rid: str) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    return httpx.post(
        gw.base_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}", "x-request-id": rid},
        timeout=30,
    )


async def test_a_timed_out_call_is_charged(env: tuple[RunningGateway, LedgerFile]) -> None:
    gw, ledger = env
    rid = uuid.uuid4().hex
    r = ask(gw, budget_key(gw, MASTER, "1"), "slow", rid)
    assert r.status_code == 504, r.text
    row = await ledger.one_row(rid)
    assert row["status_code"] == 504 and row["chosen_model"] is None
    (paid,) = json.loads(row["cascade_attempts"])
    assert paid["model"] == "slow" and paid["outcome"] == "timed_out"
    assert paid["completion_tokens"] == MAX_TOKENS and paid["prompt_tokens"] > 0  # the answer it asked for
    expected = paid["prompt_tokens"] * IN + MAX_TOKENS * OUT
    assert Decimal(row["cost_usd"]).scaleb(-12) == expected == Decimal(paid["cost_usd"])
    assert Decimal(row["saved_usd"]).scaleb(-12) == -expected


async def test_timing_out_on_purpose_runs_out_the_budget(env: tuple[RunningGateway, LedgerFile]) -> None:
    gw, _ = env
    key = budget_key(gw, MASTER, "0.006")  # each timed-out request is charged ~$0.0017
    statuses = [ask(gw, key, "slow", uuid.uuid4().hex).status_code for _ in range(6)]
    assert statuses[:3] == [504, 504, 504], statuses
    assert statuses[-1] == 402, statuses  # it was free before: 504 for ever


async def test_the_answer_after_a_timeout_is_served_and_both_are_paid(env: tuple[RunningGateway, LedgerFile]) -> None:
    gw, ledger = env
    rid = uuid.uuid4().hex
    r = ask(
        gw, budget_key(gw, MASTER, "0.01"), "slow-then-quick", rid
    )  # the reserve is one answer: the caps leave it out
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-model"] == "quick"
    usage = r.json()["usage"]
    answer = usage["prompt_tokens"] * IN + usage["completion_tokens"] * OUT
    row = await ledger.one_row(rid)
    timed_out, served = json.loads(row["cascade_attempts"])
    assert (timed_out["model"], timed_out["outcome"]) == ("slow-then-quick", "timed_out")
    assert (served["model"], served["outcome"]) == ("quick", "answered")
    assert Decimal(served["cost_usd"]) == answer
    assert Decimal(r.headers["x-gateway-cost-usd"]) == answer + Decimal(timed_out["cost_usd"])
    assert Decimal(row["cost_usd"]).scaleb(-12) == answer + Decimal(timed_out["cost_usd"])


async def test_an_absurd_max_tokens_is_charged_at_most_the_context_window(
    env: tuple[RunningGateway, LedgerFile],
) -> None:
    """A model asked for by name takes any ``max_tokens`` (its upstream refuses what is too big), but what a timed
    out call is charged stops at the model's context window: ``2**63 - 1`` made a charge the SQLite driver could
    not store, which killed the ledger's writer (every later request went unrecorded) and, on PostgreSQL, a $60M
    row or none at all."""
    gw, ledger = env
    rid, after = uuid.uuid4().hex, uuid.uuid4().hex
    body = {"model": "silent-8k", "messages": MESSAGES, "max_tokens": 2**63 - 1}
    admin = {"authorization": f"Bearer {MASTER}"}
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers={**admin, "x-request-id": rid}, timeout=30)
    assert r.status_code == 504, r.text
    row = await ledger.one_row(rid)
    (paid,) = json.loads(row["cascade_attempts"])
    assert paid["completion_tokens"] == 8192
    assert Decimal(row["cost_usd"]).scaleb(-12) == paid["prompt_tokens"] * IN + 8192 * OUT
    assert ask(gw, MASTER, "quick", after).status_code == 200
    assert (await ledger.one_row(after))["status_code"] == 200  # the writer goes on
