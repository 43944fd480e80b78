"""Checks on the order of the front doors' stream events, shared by the tests that drive them with the SDKs."""

from __future__ import annotations

from collections.abc import Sequence
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
    started = [e.index for e in events if e.type == "content_block_start"]
    stopped = [e.index for e in events if e.type == "content_block_stop"]
    assert started == stopped == list(range(blocks))
    open_block = None
    for e in events:
        if e.type == "content_block_start":
            assert open_block is None
            open_block = e.index
        elif e.type == "content_block_delta":
            assert e.index == open_block
        elif e.type == "content_block_stop":
            assert e.index == open_block
            open_block = None
    assert open_block is None


def assert_items_in_order(events: Sequence[Any], items: int) -> None:
    """Responses stream events: ``items`` output items, each added once, filled and done before the next is added,
    in index order, no piece going to an item that is not open."""
    added = [e.output_index for e in events if e.type == "response.output_item.added"]
    done = [e.output_index for e in events if e.type == "response.output_item.done"]
    assert added == done == list(range(items))
    open_item = None
    for e in events:
        if e.type == "response.output_item.added":
            assert open_item is None
            open_item = e.output_index
        elif e.type in _ITEM_PIECES:
            assert e.output_index == open_item
        elif e.type == "response.output_item.done":
            assert e.output_index == open_item
            open_item = None
    assert open_item is None
