"""The local model's own confidence in its answer, from the token log-probabilities vLLM returns.

A chat completion asked for ``logprobs: true`` carries ``choices[i].logprobs.content``: one entry per generated
token, ``{"token", "logprob", "bytes", "top_logprobs": [...]}`` (OpenAI's shape, which vLLM mirrors; streamed, each
chunk's ``choices[i].logprobs.content`` holds the tokens of that chunk). :func:`token_logprobs` reads the
``logprob`` of each; :func:`confidence` summarises them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["LOW_LOGPROB", "Confidence", "confidence", "token_logprobs"]

#: A token is "low confidence" below this log-probability (p < 0.1).
LOW_LOGPROB: Final = math.log(0.1)
#: vLLM reports ``-9999.0`` for a token whose probability underflows; a floor keeps the mean finite and sane.
_FLOOR: Final = -20.0


@dataclass(frozen=True, slots=True)
class Confidence:
    """Summary of an answer's token log-probabilities."""

    n: int
    #: Mean log-probability per token (0 = certain of every token).
    mean: float
    #: The least likely token's log-probability.
    min: float
    #: Share of tokens below :data:`LOW_LOGPROB`.
    low_share: float


def confidence(logprobs: Sequence[float]) -> Confidence | None:
    """Summarise ``logprobs`` (one per generated token); ``None`` when there are none or any is not a number."""
    values = []
    for v in logprobs:
        f = float(v)
        if math.isnan(f) or f > 0.0 + 1e-6:
            return None
        values.append(max(f, _FLOOR))
    if not values:
        return None
    low = sum(1 for v in values if v < LOW_LOGPROB)
    return Confidence(n=len(values), mean=math.fsum(values) / len(values), min=min(values), low_share=low / len(values))


def token_logprobs(choices_logprobs: Iterable[Mapping[str, Any] | None]) -> list[float] | None:
    """The ``logprob`` of every token in one or more ``choices[i].logprobs`` objects (a response's, or each
    streamed chunk's in order); ``None`` when none carries token entries."""
    out: list[float] = []
    seen = False
    for block in choices_logprobs:
        if not block:
            continue
        content = block.get("content")
        if not isinstance(content, list):
            continue
        seen = True
        for entry in content:
            if isinstance(entry, Mapping):
                lp = entry.get("logprob")
                if isinstance(lp, int | float) and not isinstance(lp, bool):
                    out.append(float(lp))
    return out if seen else None
