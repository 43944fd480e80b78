"""Offline use of the answer check: read ``{"prompt", "answer"}`` rows and score them as the gateway would.

``gateway router verify --data FILE`` is this module behind a CLI. Each row is scored by the same
:meth:`AnswerCheck.check <policies.answer_check.model.AnswerCheck.check>` call the gateway makes, with the prompt
router's score from the given scorer (the gateway passes the one its decide stage computed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.answer_check.model import AnswerCheck, Verdict

__all__ = ["CheckRow", "RowError", "read_rows", "score_row"]

#: A prompt router: prompt -> score in [0, 1] (higher = the strong model is more needed).
RouterScore = Callable[[str], float]


class RowError(ValueError):
    """A row that cannot be scored (its 1-based line number is in the message)."""


@dataclass(frozen=True, slots=True)
class CheckRow:
    """One answer to check."""

    prompt: str
    answer: str
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    router_score: float | None = None


def _parse(obj: Any, where: str) -> CheckRow:
    if not isinstance(obj, dict):
        raise RowError(f"{where}: each line must be a JSON object")
    prompt, answer = obj.get("prompt"), obj.get("answer")
    if not isinstance(prompt, str) or not isinstance(answer, str):
        raise RowError(f"{where}: needs string fields 'prompt' and 'answer'")
    logprobs = obj.get("logprobs")
    if logprobs is not None:
        ok = isinstance(logprobs, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v <= 0 for v in logprobs
        )
        if not ok:
            raise RowError(f"{where}: 'logprobs' must be a list of finite numbers <= 0")
    finish = obj.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise RowError(f"{where}: 'finish_reason' must be a string")
    router = obj.get("router_score")
    if router is not None and (
        not isinstance(router, int | float) or isinstance(router, bool) or not 0.0 <= router <= 1.0
    ):
        raise RowError(f"{where}: 'router_score' must be a number in [0, 1]")
    return CheckRow(
        prompt,
        answer,
        None if logprobs is None else [float(v) for v in logprobs],
        finish,
        None if router is None else float(router),
    )


def read_rows(path: Path) -> Iterator[CheckRow]:
    """The rows of a JSONL file (blank lines skipped); raises :class:`RowError` naming the first bad line."""
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RowError(f"{path.name}:{n}: not JSON ({exc.msg})") from exc
            yield _parse(obj, f"{path.name}:{n}")


def score_row(check: AnswerCheck, row: CheckRow, router: RouterScore | None) -> Verdict:
    """The gateway's check of one row: the row's own ``router_score`` wins, else ``router``'s, else none."""
    router_score = row.router_score
    if router_score is None and router is not None:
        router_score = router(row.prompt)
    return check.check(
        row.prompt, row.answer, logprobs=row.logprobs, finish_reason=row.finish_reason, router_score=router_score
    )
