"""Checks on the order of the front doors' stream events, shared by the tests that drive them with the SDKs."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

#: Responses events that carry a piece of the open output item.
_ITEM_PIECES = frozenset(
    {
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
    }
)


def assert_blocks_in_order(events: Sequence[Any], blocks: int) -> None:
    """Anthropic Messages stream events: ``blocks`` content blocks, each started once, filled and stopped before
    the next starts, in index order, no delta going to a block that is not open."""
    _assert_in_order(events, blocks, "content_block_start", {"content_block_delta"}, "content_block_stop", "index")


def assert_items_in_order(events: Sequence[Any], items: int) -> None:
    """Responses stream events: ``items`` output items, each added once, filled and done before the next is added,
    in index order, no piece going to an item that is not open."""
    _assert_in_order(
        events, items, "response.output_item.added", _ITEM_PIECES, "response.output_item.done", "output_index"
    )


def _assert_in_order(
    events: Sequence[Any], count: int, start: str, pieces: Collection[str], stop: str, index: str
) -> None:
    """``count`` parts (blocks, items), each opened by a ``start`` event and closed by a ``stop`` one before the next
    opens, in order of their ``index`` attribute; every ``pieces`` event goes to the open one."""
    started = [getattr(e, index) for e in events if e.type == start]
    stopped = [getattr(e, index) for e in events if e.type == stop]
    assert started == stopped == list(range(count))
    open_part = None
    for e in events:
        if e.type == start:
            assert open_part is None
            open_part = getattr(e, index)
        elif e.type in pieces:
            assert getattr(e, index) == open_part
        elif e.type == stop:
            assert getattr(e, index) == open_part
            open_part = None
    assert open_part is None
