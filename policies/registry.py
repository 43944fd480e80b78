"""Name-to-class registry of routing policies."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from policies.base import Policy

_REGISTRY: dict[str, type[Policy]] = {}
P = TypeVar("P", bound=type[Policy])


def register(name: str) -> Callable[[P], P]:
    """Class decorator adding a policy under ``name``.

    The built-in policies call it after their class (``register(NAME)(BalancedPolicy)``) instead of decorating:
    mypyc compiles a decorated class as an ordinary Python class, whose attributes and methods every request
    would then reach through generic lookups."""

    def deco(cls: P) -> P:
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_builtin() -> None:
    # Importing the modules runs their register() calls.
    import importlib

    from policies import balanced, cost, latency, quality  # noqa: F401

    try:
        importlib.import_module("policies.learned")
    except ImportError:  # the learned policy needs its shipped artifact's module
        pass


def names() -> set[str]:
    """Every registered policy name."""
    if not _REGISTRY:
        _load_builtin()
    return set(_REGISTRY)


def get(name: str) -> type[Policy]:
    """The policy class registered as ``name`` (KeyError if none)."""
    if not _REGISTRY:
        _load_builtin()
    return _REGISTRY[name]
