"""A request's ``Cache-Control`` directives: read by the cache (``no-cache``, ``no-store``) and by the quality
monitor (``no-store``: the prompt is not kept with a verdict either). Imports nothing heavy: the monitor is
built at every start-up, the semantic cache's numpy only when a route uses it."""

from __future__ import annotations


def cache_control(headers: dict[str, str]) -> set[str]:
    """The request's ``Cache-Control`` directives, lower-cased (``max-age=0`` counts as ``no-cache``)."""
    out = {d.strip().lower() for d in headers.get("cache-control", "").split(",") if d.strip()}
    if "max-age=0" in out:
        out.add("no-cache")
    return out
