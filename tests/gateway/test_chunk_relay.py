"""The relay's view of an upstream stream: first token, what was generated, and errors inside the stream."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from gateway.context import RequestContext
from gateway.errors import BudgetExceeded, UpstreamUnavailable
from gateway.pricing import Price
from gateway.streaming import ChunkRelay, SpendCap
from gateway.tokens import load_tiktoken


def chunk(**delta: object) -> bytes:
    return orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})


def relay() -> tuple[RequestContext, ChunkRelay]:
    ctx = RequestContext(request_id="r", endpoint="chat", body={}, requested_model="m")
    return ctx, ChunkRelay(ctx, "m")


def test_a_reasoning_model_s_first_token_is_its_first_reasoning() -> None:
    """vLLM's reasoning parsers stream ``reasoning_content`` (newer: ``reasoning``) long before ``content``:
    time to first token, the spend cap and the token estimate count it."""
    ctx, r = relay()
    r.transform(chunk(role="assistant", content=""))
    assert ctx.ttft_s is None
    r.transform(chunk(reasoning_content="Let me think about 6 x 7"))
    assert ctx.ttft_s is not None
    r.transform(chunk(reasoning="; that is 42."))
    r.transform(chunk(content="42"))
    assert r.text_parts == ["42"]  # the answer (what the quality monitor judges)
    assert r.reasoning_parts == ["Let me think about 6 x 7", "; that is 42."]
    assert r.generated_chars == len("Let me think about 6 x 7; that is 42.42")


PRICE = Price(Decimal(0), Decimal("0.0001"), "test")  # $0.0001 an output token
COUNTER = load_tiktoken()


def test_the_spend_cap_counts_reasoning() -> None:
    ctx, r = relay()
    cap = SpendCap(Decimal("0.001"), PRICE, ctx, COUNTER)
    r.transform(chunk(reasoning_content=" word" * 10))  # 10 tokens: $0.001
    cap.check(r)
    r.transform(chunk(reasoning_content=" word" * 2))  # 12 tokens: past the cap
    with pytest.raises(BudgetExceeded):
        cap.check(r)


def test_the_spend_cap_counts_tokens_not_characters() -> None:
    """Code indented with runs of spaces, and long words, are few tokens for many characters: four characters a
    token (the estimate before) cut such streams at a fraction of their reservation."""
    ctx, r = relay()
    cap = SpendCap(Decimal("0.001"), PRICE, ctx, COUNTER)  # 10 tokens
    for line in ("\n" + " " * 16 + "return", "\n" + " " * 16 + "pass", " internationalization"):
        r.transform(chunk(content=line))  # 103 characters, 7 tokens
        cap.check(r)
    assert sum(COUNTER.count(p) for p in r.text_parts) <= 10
    local = SpendCap(Decimal("0.001"), PRICE, ctx, COUNTER, margin=2.0)  # a tokenizer making twice as many
    with pytest.raises(BudgetExceeded):
        local.check(r)


def test_the_spend_cap_does_not_count_an_echoed_prompt() -> None:
    ctx, r = relay()
    ctx.body, ctx.prompt_tokens_estimate = {"echo": True, "n": 2}, 20
    cap = SpendCap(Decimal("0.005"), PRICE, ctx, COUNTER)  # 20 prompt tokens at $0 and 50 output tokens
    r.transform(chunk(content=" word" * 20))  # the prompt, echoed for each answer
    r.transform(chunk(content=" word" * 20))
    cap.check(r)
    r.transform(chunk(content=" word" * 50))  # and 50 generated: all within the reservation
    cap.check(r)
    r.transform(chunk(content=" word"))
    with pytest.raises(BudgetExceeded):
        cap.check(r)


@pytest.mark.parametrize(
    "event",
    [
        {"error": {"message": "EngineDeadError", "type": "InternalServerError", "code": 500}},
        {"object": "error", "message": "EngineDeadError", "type": "InternalServerError", "code": 500},
    ],
)
def test_an_error_event_raises(event: dict[str, object]) -> None:
    _, r = relay()
    r.transform(chunk(content="Hel"))
    with pytest.raises(UpstreamUnavailable, match="failed mid-stream: EngineDeadError"):
        r.transform(orjson.dumps(event))


def test_a_corrupt_event_ends_the_stream_rather_than_leaving_a_hole() -> None:
    """A payload that is not JSON mid-stream was dropped: the answer went on with a hole in it, completed and was
    cached whole. It is the upstream's failure now (the stream ends with an error; nothing is cached)."""
    _, r = relay()
    r.transform(chunk(role="assistant", content="A"))
    with pytest.raises(UpstreamUnavailable, match="invalid stream event"):
        r.transform(b'{"choices": [{"delta": {"content": "LOST"')


def test_half_an_emoji_in_an_event_is_kept_as_a_replacement_character() -> None:
    """Some proxies split a surrogate pair across two events (``"\\ud83d"`` then ``"\\ude00"``): valid JSON that
    orjson refuses. Both events, and the text around the halves, reach the client."""
    _, r = relay()
    first = r.transform(b'{"choices": [{"index": 0, "delta": {"content": "A\\ud83d"}}]}')
    second = r.transform(b'{"choices": [{"index": 0, "delta": {"content": "\\ude00B"}}]}')
    assert first is not None and second is not None
    assert r.text_parts == ["A\ufffd", "\ufffdB"]
    assert orjson.loads(second.removeprefix(b"data: "))["choices"][0]["delta"]["content"] == "\ufffdB"
