"""The relay's view of an upstream stream: first token, what was generated, and errors inside the stream."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from gateway.context import RequestContext
from gateway.errors import BudgetExceeded, UpstreamUnavailable
from gateway.pricing import Price
from gateway.streaming import ChunkRelay, SpendCap


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


def test_the_spend_cap_counts_reasoning() -> None:
    _, r = relay()
    cap = SpendCap(Decimal("0.001"), Price(Decimal(0), Decimal("0.0001"), "test"), prompt_tokens=0)
    r.transform(chunk(reasoning_content="x" * 40))  # ~10 tokens: $0.001
    cap.check(r)
    r.transform(chunk(reasoning_content="x" * 8))  # ~12 tokens: past the cap
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
