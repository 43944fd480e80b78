"""A request's ``Cache-Control`` directives: read by the cache (``no-cache``, ``no-store``) and by the quality
monitor (``no-store``: the prompt is not kept with a verdict either). Imports nothing heavy: the monitor is
built at every start-up, the semantic cache's numpy only when a route uses it."""

from __future__ import annotations


def cache_control(headers: dict[str, str]) -> set[str]:
    """The request's ``Cache-Control`` directives, lower-cased (``max-age=0`` counts as ``no-cache``; without a
    ``Cache-Control`` header, HTTP/1.0's ``Pragma: no-cache`` does, as RFC 9111 says)."""
    out = {d.strip().lower() for d in headers.get("cache-control", "").split(",") if d.strip()}
    if "max-age=0" in out:
        out.add("no-cache")
    if "cache-control" not in headers and "no-cache" in headers.get("pragma", "").lower():
        out.add("no-cache")
    return out
