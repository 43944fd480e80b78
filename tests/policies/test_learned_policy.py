"""The learned router drives routing: its score against the route's calibrated operating point."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from backends import CircuitBreaker
from gateway.cli import app as cli
from gateway.config import settings_from_dict
from gateway.constraints import Constraints
from gateway.features import extract_features
from gateway.routing import Router
from gateway.tokens import ApproxCounter
from policies.router.model import QualityRouter
from tests.helpers.tokens import cl100k_encode
from tests.helpers.upstream import routing_backends

MODELS: list[dict[str, Any]] = [
    {
        "name": "llama-2-7b",
        "backend": "openai",
        "base_url": "http://a/v1",
        "quality": 6.27,
        "input_cost_per_token": 0.0000001,
        "output_cost_per_token": 0.0000002,
    },
    {"name": "gpt-4", "backend": "openai", "base_url": "http://b/v1", "quality": 8.99},
]
PROMPTS = [
    "hi",
    "What is the capital of France?",
    "Janet has 3 apples and buys 5 more, then gives away half. How many apples does she have? Show your work.",
    "Write a proof that the square root of 2 is irrational, then generalise it to all non-square integers.",
    "Which of the following is a mammal? A) shark B) dolphin C) trout D) octopus",
]


def router_for(route: dict[str, Any], estimator: QualityRouter) -> Router:
    settings = settings_from_dict({"models": MODELS, "routes": {"r": route}})
    backends = routing_backends(settings)
    return Router(settings, backends, {n: CircuitBreaker() for n in backends}, estimator)


def winner(router: Router, prompt: str) -> str:
    body = {"model": "r", "messages": [{"role": "user", "content": prompt}]}
    return router.plan("r", extract_features("chat", body, ApproxCounter()), Constraints()).decision.winner.name


def test_learned_policy_follows_score_and_threshold() -> None:
    est = QualityRouter.load(encode=cl100k_encode)
    never = router_for({"policy": "learned", "strong_share": 0.0}, est)
    always = router_for({"policy": "learned", "strong_share": 1.0}, est)
    assert {winner(never, p) for p in PROMPTS} == {"llama-2-7b"}
    assert {winner(always, p) for p in PROMPTS} == {"gpt-4"}
    middle = router_for({"policy": "learned", "strong_share": 0.3}, est)
    threshold = est.threshold_for_strong_share(0.3)
    for p in PROMPTS:
        expected = "gpt-4" if est.score(p) >= threshold else "llama-2-7b"
        assert winner(middle, p) == expected
    reason = middle.plan(
        "r", extract_features("chat", {"messages": [{"role": "user", "content": "hi"}]}, ApproxCounter()), Constraints()
    ).decision.reason
    assert "P(strong needed)=" in reason and "threshold" in reason


def test_strong_share_operating_point_holds_on_real_prompts() -> None:
    est = QualityRouter.load(encode=cl100k_encode)
    router = router_for({"policy": "learned", "strong_share": 0.3}, est)
    data = Path(__file__).resolve().parents[3] / "shared" / "data" / "routing" / "routellm_train.jsonl"
    if not data.exists():
        # A checkout without the shared data: five prompts cannot measure a share; they must at least be split
        # (the calibrated share itself is checked on the artifact's stored calibration data in test_router).
        picked = {winner(router, p) for p in PROMPTS}
        assert picked == {"gpt-4", "llama-2-7b"}, picked
        return
    prompts = [json.loads(line)["prompt"] for line in data.read_text().splitlines()[::40]]
    share = sum(winner(router, p) == "gpt-4" for p in prompts) / len(prompts)
    assert 0.1 <= share <= 0.5, share  # calibrated for 30% on the (benchmark-weighted) training prompts


def test_cost_policy_uses_the_learned_threshold() -> None:
    est = QualityRouter.load(encode=cl100k_encode)
    cheap = router_for({"policy": "cost", "strong_share": 0.0}, est)
    strong = router_for({"policy": "cost", "strong_share": 1.0}, est)
    assert {winner(cheap, p) for p in PROMPTS} == {"llama-2-7b"}
    assert {winner(strong, p) for p in PROMPTS} == {"gpt-4"}


def test_replay_compares_policies(tmp_path: Path) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(
        json.dumps(
            {"models": MODELS, "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path}/l.db"}, "cache": {"enabled": False}}
        )
    )
    data = tmp_path / "reqs.jsonl"
    data.write_text(
        "\n".join(json.dumps({"prompt": p, "weak_score": 1, "strong_score": 1, "benchmark": "mmlu"}) for p in PROMPTS)
    )
    result = CliRunner().invoke(
        cli,
        [
            "replay",
            str(data),
            "--config",
            str(config),
            "-p",
            "cost",
            "-p",
            "quality",
            "--plot",
            str(tmp_path / "p.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "cost" in result.output and "quality" in result.output and "gpt-4 100%" in result.output
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_replay_says_what_to_install_for_its_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "g.yaml"
    config.write_text(json.dumps({"models": MODELS, "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path}/l.db"}}))
    data = tmp_path / "reqs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    args = ["replay", str(data), "--config", str(config), "-p", "cost"]
    result = CliRunner().invoke(cli, [*args, "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2
    assert "pip install 'llm-hybrid-gateway[plot]'" in result.output and "leave out --plot" in result.output
    result = CliRunner().invoke(cli, args)  # without a plot, no matplotlib needed
    assert result.exit_code == 0, result.output
    assert "cost" in result.output
