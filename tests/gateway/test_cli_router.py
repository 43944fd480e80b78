"""``gateway router score|adapt`` on bad input: one ``error:`` line naming the file's line, exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from gateway import cli_router
from gateway.cli_router import router_app
from tests.policies.test_router_adapt import fake_embed

_GOOD = json.dumps({"prompt": "Please write a poem", "weak_score": 1, "strong_score": 1})


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _one_error_line(result: Result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def _score(*args: str) -> Result:
    return CliRunner().invoke(router_app, ["score", *args])


def test_score_a_row_without_prompt(tmp_path: Path) -> None:
    data = _write(tmp_path / "p.jsonl", [_GOOD, "", json.dumps({"text": "no prompt"})])
    _one_error_line(_score("--data", str(data)), "p.jsonl: line 3", "'prompt'")


def test_score_invalid_json(tmp_path: Path) -> None:
    data = _write(tmp_path / "p.jsonl", ["", _GOOD, '{"prompt": "x"'])
    _one_error_line(_score("--data", str(data)), "line 3: invalid JSON", "column")


def test_score_a_missing_router_directory(tmp_path: Path) -> None:
    data = _write(tmp_path / "p.jsonl", [_GOOD])
    missing = tmp_path / "nowhere"
    _one_error_line(_score("--data", str(data), "--router", str(missing)), "cannot load the router artifact", "nowhere")


def test_score_still_scores(tmp_path: Path) -> None:
    data = _write(tmp_path / "p.jsonl", [_GOOD, "", _GOOD])
    result = _score("--data", str(data))
    assert result.exit_code == 0, result.output
    assert len([json.loads(line)["score"] for line in result.stdout.splitlines()]) == 2


@pytest.fixture
def adapt_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(cli_router, "_embedder", lambda max_tokens, vector="minilm": fake_embed)
    return tmp_path


def _adapt(labels: Path, *args: str) -> Result:
    return CliRunner().invoke(
        router_app, ["adapt", "--labels", str(labels), "--out", str(labels.parent / "out"), *args]
    )


def test_adapt_reports_the_real_line_of_bad_json(adapt_cli: Path) -> None:
    labels = _write(adapt_cli / "l.jsonl", [_GOOD, "", _GOOD, '{"prompt": "x", "weak_score": 1, "strong_score": 1 x}'])
    line = _one_error_line(_adapt(labels), "l.jsonl: line 4: invalid JSON", "column 52")
    assert "line 1" not in line


def test_adapt_reports_mixed_scales(adapt_cli: Path) -> None:
    rows = [json.dumps({"prompt": f"p{i}", "weak_score": i % 2, "strong_score": 1}) for i in range(40)]
    labels = _write(adapt_cli / "l.jsonl", [*rows, "", json.dumps({"prompt": "x", "weak_score": 0, "strong_score": 2})])
    _one_error_line(_adapt(labels), "line 42: strong_score 2 is a 1-10 judge score")
    assert not (adapt_cli / "out").exists()


def test_adapt_refuses_a_single_strong_better_prompt(adapt_cli: Path) -> None:
    rows = [json.dumps({"prompt": f"p{i}", "weak_score": int(i != 0), "strong_score": 1}) for i in range(20)]
    _one_error_line(_adapt(_write(adapt_cli / "l.jsonl", rows)), "only 1 distinct prompt")
    assert not (adapt_cli / "out").exists()


def test_adapt_a_missing_prior(adapt_cli: Path) -> None:
    rows = [json.dumps({"prompt": f"p{i}", "weak_score": i % 2, "strong_score": 1}) for i in range(40)]
    result = _adapt(_write(adapt_cli / "l.jsonl", rows), "--prior", str(adapt_cli / "nowhere"))
    _one_error_line(result, "cannot load the prior artifact")


def test_adapt_where_the_weak_model_wins_writes_an_honest_artifact(adapt_cli: Path) -> None:
    topics = ("poem", "haiku", "limerick", "proof", "lemma", "theorem")
    scores = [(1, 0)] * 30 + [(0, 1)] * 20 + [(1, 1)] * 10  # 30 wins, 20 losses, 10 ties for the weak model
    rows = [
        json.dumps({"prompt": f"Please write a {topics[i % 6]} about item {i}", "weak_score": w, "strong_score": s})
        for i, (w, s) in enumerate(scores)
    ]
    result = _adapt(_write(adapt_cli / "l.jsonl", rows))
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output.lower() and "note: the weak model is at least as good" in result.output
    text = (adapt_cli / "out" / "adapted.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in adapted.json"))
    assert meta["held_out"]["adapted"]["cpt80"] == 0.0 and meta["held_out"]["adapted"]["apgr"] is None
