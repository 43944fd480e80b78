"""``ChunkRelay.end``: a stream ends well only with ``[DONE]`` after every choice it carried finished.

(Over sockets, with the openai SDK: ``tests/hardening/test_stream_truncation.py``.)
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.context import RequestContext
from gateway.errors import UpstreamUnavailable
from gateway.streaming import ChunkRelay


def chunk(*choices: dict[str, Any], usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "choices": list(choices)}
    if usage is not None:
        body["usage"] = usage
    return orjson.dumps(body)


def choice(index: Any = 0, finish: str | None = None, content: str = "x") -> dict[str, Any]:
    return {"index": index, "delta": {"content": content}, "finish_reason": finish}


def relayed(*events: bytes) -> ChunkRelay:
    relay = ChunkRelay(RequestContext(request_id="r", endpoint="chat", body={}, requested_model="m"), "m")
    for event in events:
        relay.transform(event)
    return relay


USAGE = {"prompt_tokens": 1, "completion_tokens": 2}


@pytest.mark.parametrize(
    "events",
    [
        [chunk(choice()), chunk(choice(finish="stop"))],  # finish_reason on the last content chunk
        [chunk(choice()), chunk(choice(finish="length", content="")), chunk(usage=USAGE)],  # usage after it
        [chunk(choice(0), choice(1)), chunk(choice(1, "stop")), chunk(choice(0, "tool_calls"))],  # n=2
        [chunk(choice(), usage=USAGE), chunk(choice(finish="stop"), usage=USAGE), chunk(usage=USAGE)],  # usage each
    ],
)
def test_finished_streams_end_well(events: list[bytes]) -> None:
    relay = relayed(*events)
    assert relay.completed
    relay.end(saw_done=True)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([chunk(choice()), chunk(choice())], "no finish_reason"),
        ([chunk(choice()), chunk(usage=USAGE)], "no finish_reason"),
        ([chunk(usage=USAGE)], "no finish_reason"),  # no choice at all
        ([chunk(choice(0), choice(1)), chunk(choice(0, "stop"))], "no finish_reason (choice 1)"),
        ([chunk(choice(0), choice(1), choice(2)), chunk(choice(1, "stop"))], "(choice 0, 2)"),
        ([chunk(choice()), chunk(choice(finish=""))], "no finish_reason"),  # an empty reason is none
    ],
)
def test_a_stream_done_before_its_answer_finished_is_cut(events: list[bytes], message: str) -> None:
    relay = relayed(*events)
    assert not relay.completed
    with pytest.raises(UpstreamUnavailable, match="ended the stream before the answer finished") as info:
        relay.end(saw_done=True)
    assert message in info.value.message


def test_no_done_is_cut_whatever_finished() -> None:
    with pytest.raises(UpstreamUnavailable, match="without \\[DONE\\]"):
        relayed(chunk(choice(finish="stop"))).end(saw_done=False)


def test_odd_choices_do_not_break_the_relay() -> None:
    """An index that is not a number is a broken upstream's answer: told apart, never an exception of the relay's
    own; a choice that is not an object fails the stream as the upstream's (the front doors cannot read it:
    test_stream_malformed.py)."""
    relay = relayed(chunk(choice(index=[0])), chunk(choice(index=[0], finish="stop")))
    relay.end(saw_done=True)
    with pytest.raises(UpstreamUnavailable, match="malformed stream event"):
        relayed(chunk(choice(), "junk"))  # type: ignore[arg-type]
