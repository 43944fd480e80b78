"""Checking a semantic hit: the judge's prompt, its verdict, and the check loop the quality monitor can run.

A check asks one question of a judge model: does the answer cached for an earlier question serve the new
question? The judge sees the new question, the cached question and answer, and (when there is one) a
fresh answer from the model to the new question as a reference. It must end its reply with
``VERDICT: YES`` or ``VERDICT: NO``; :func:`parse_verdict` also accepts a bare yes/no or a JSON object
``{"serves": true}``, and returns None for anything else (an unusable verdict is not an outcome).

:class:`HitChecker` is the loop: it takes :class:`Check` jobs from the service's bounded queue, gets the
reference answer (a served hit needs a shadow call to the model; a candidate that was not served already
has the model's answer), asks the judge, and feeds :meth:`cache.learn.Learner.record_outcome`. The model
and judge calls are plain async callables, so the quality monitor plugs in its own clients and budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from cache.learn import Learner

log = logging.getLogger("gateway.cache")

JUDGE_SYSTEM = (
    "You check a response cache. A user asked a NEW question; the cache wants to reply with the answer it "
    "stored for an EARLIER question. Decide whether that cached answer correctly and fully serves the NEW "
    "question, as if it had been written for it. Differences in wording do not matter; a different subject, "
    "number, date, place, person, quantity, comparison, negation or kind of question does. A REFERENCE answer "
    "to the new question may be given: use it to see what the new question needs, not as the only correct "
    "wording. Reply with one short sentence of reasoning, then a last line that is exactly VERDICT: YES or "
    "VERDICT: NO."
)

_VERDICT = re.compile(r"verdict\s*[:=]\s*\**\s*(yes|no)\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*(yes|no)\W*$", re.IGNORECASE)
#: What in a client's text could pass for the judges' verdict formats or their prompts' frame (MT-Bench's
#: ``[[A]]`` and ``[The Start of ...]``, this module's ``VERDICT:``).
_FORGEABLE = re.compile(
    r"\[\[|\]\]|\[(?=\s*(?:the\s+(?:start|end)\s+of|user\s+question))|verdict(?=\s*[:=])", re.IGNORECASE
)
_DEFUSED = {"[[": "[ [", "]]": "] ]", "[": "("}


def untrusted(text: str) -> str:
    """A client's question, or an answer a client could steer, made safe to paste into a judge's prompt: the
    verdict tags and frame markers it holds are broken up (``[[C]]`` becomes ``[ [C] ]``, ``VERDICT:``
    becomes ``verdict (quoted):``), so a forged verdict can neither be read back as the judge's nor pose as
    the prompt's own structure. What else the text says to the judge is data; the judge decides on it."""
    return _FORGEABLE.sub(lambda m: _DEFUSED.get(m.group(0), m.group(0) + " (quoted)"), text)


Messages = list[dict[str, str]]
#: ``(messages) -> reply text``: one chat completion by the judge model.
ChatFn = Callable[[Messages], Awaitable[str]]
#: ``(request body) -> answer text``: the model's own answer to the new request (a shadow call).
ShadowFn = Callable[[dict[str, Any]], Awaitable[str]]


@dataclass(slots=True)
class Check:
    """One sampled decision to judge (see :meth:`cache.service.CacheService.checks`)."""

    hit_id: str
    route: str
    served: bool
    score: float
    question: str
    cached_question: str
    cached_answer: str
    request: dict[str, Any]  # the new request's body, for a shadow call
    reference: str | None = None  # the model's answer to the new question, when the request went to it


def judge_messages(question: str, cached_question: str, cached_answer: str, reference: str | None) -> Messages:
    """The judge's prompt for one check."""
    parts = [
        f"NEW question:\n{untrusted(question)}",
        f"EARLIER question:\n{untrusted(cached_question)}",
        f"CACHED answer (written for the earlier question):\n{untrusted(cached_answer)}",
    ]
    if reference is not None:
        parts.append(f"REFERENCE answer to the new question:\n{untrusted(reference)}")
    parts.append("Does the CACHED answer serve the NEW question?")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_verdict(reply: str) -> bool | None:
    """True (serves), False (does not) or None (no usable verdict) from the judge's reply (verdicts that
    disagree are none)."""
    found = {v.lower() for v in _VERDICT.findall(reply)}
    if found:
        return found == {"yes"} if len(found) == 1 else None
    text = reply.strip()
    if text.startswith("{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(text)
            if isinstance(data, dict) and isinstance(data.get("serves"), bool):
                verdict: bool = data["serves"]
                return verdict
        return None
    m = _BARE.match(text)
    return None if m is None else m.group(1).lower() == "yes"


def answer_text(body: dict[str, Any]) -> str:
    """The first choice's text of a chat or text completion body ('' when there is none)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    first = choices[0]
    message = first.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        if isinstance(content, str):
            return content
        calls = message.get("tool_calls")
        return orjson.dumps(calls).decode() if calls else ""
    text = first.get("text")
    return text if isinstance(text, str) else ""


async def judge(chat: ChatFn, check: Check) -> bool | None:
    """Ask the judge about ``check``; None when its reply has no verdict."""
    reply = await chat(judge_messages(check.question, check.cached_question, check.cached_answer, check.reference))
    return parse_verdict(reply)


class HitChecker:
    """Runs checks from a queue (with ``concurrency`` workers) and records their outcomes.

    Errors from the model or the judge drop that check (logged; the decision stays open until it expires):
    a check is evidence, never a reason to fail anything.
    """

    def __init__(
        self,
        queue: asyncio.Queue[Check],
        learner: Learner,
        chat: ChatFn,
        shadow: ShadowFn | None,
        *,
        concurrency: int = 2,
        timeout_s: float = 60.0,
    ) -> None:
        self.queue = queue
        self.learner = learner
        self.chat = chat
        self.shadow = shadow
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.done = 0
        self.failed = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the workers in the running loop."""
        for i in range(self.concurrency):
            self._tasks.append(asyncio.create_task(self._work(), name=f"hit-checker-{i}"))

    async def aclose(self) -> None:
        """Stop the workers (checks still queued are dropped)."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def run_one(self, check: Check) -> bool | None:
        """Check one decision now; the verdict recorded, or None when there was none."""
        if check.reference is None and self.shadow is not None:
            check.reference = await self.shadow(check.request)
        verdict = await judge(self.chat, check)
        if verdict is not None:
            self.learner.record_outcome(check.hit_id, verdict)
        return verdict

    async def _work(self) -> None:
        while True:
            check = await self.queue.get()
            try:
                async with asyncio.timeout(self.timeout_s):
                    verdict = await self.run_one(check)
                if verdict is None:
                    self.failed += 1
                else:
                    self.done += 1
            except (OSError, TimeoutError, ValueError, RuntimeError) as exc:
                self.failed += 1
                log.warning("semantic hit check %s failed: %r", check.hit_id, exc)
            finally:
                self.queue.task_done()
