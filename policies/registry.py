"""Name-to-class registry of routing policies.

The built-in policies are registered before anything else can be: the first use of the registry
(:func:`register`, :func:`get` or :func:`names`) imports them. A name is registered once; registering a
taken name raises :class:`ValueError` unless the caller asks to replace it (``replace=True``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TypeVar

from policies.base import Policy

P = TypeVar("P", bound=type[Policy])

#: The modules of the built-in policies (importing one registers its class).
BUILTIN_MODULES = (
    "policies.balanced",
    "policies.cascade",
    "policies.cost",
    "policies.latency",
    "policies.learned",
    "policies.quality",
)

_REGISTRY: dict[str, type[Policy]] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # first: the imports below call register(), which calls this
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def register(name: str, *, replace: bool = False) -> Callable[[P], P]:
    """Class decorator registering a :class:`~policies.base.Policy` subclass as ``name``.

    Raises:
        TypeError: the class is not a :class:`~policies.base.Policy`.
        ValueError: ``name`` is taken by another class and ``replace`` is false.
    """
    _load_builtins()

    def deco(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"policy '{name}': {cls!r} is not a subclass of policies.base.Policy")
        taken = _REGISTRY.get(name)
        if taken is not None and taken is not cls and not replace:
            raise ValueError(
                f"a routing policy named '{name}' is registered already ({taken.__module__}.{taken.__qualname__}); "
                "choose another name, or pass replace=True to replace it"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> set[str]:
    """Every registered policy name."""
    _load_builtins()
    return set(_REGISTRY)


def get(name: str) -> type[Policy]:
    """The policy class registered as ``name`` (KeyError if none)."""
    _load_builtins()
    return _REGISTRY[name]
