"""Plots are an optional extra (``pip install 'llm-hybrid-gateway[plot]'``): matplotlib is imported only by the
commands that draw, and they check for it before doing any work."""

from __future__ import annotations

import importlib.util
from types import ModuleType

#: What to install for the plots.
INSTALL = "pip install 'llm-hybrid-gateway[plot]'"


class PlottingUnavailable(RuntimeError):
    """matplotlib is not installed."""


def require() -> None:
    """Raise :class:`PlottingUnavailable`, saying what to install, unless matplotlib can be imported.

    Raises:
        PlottingUnavailable: matplotlib is missing.
    """
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # a module object without a spec, e.g. a test's stand-in for a missing one
        found = False
    if not found:
        raise PlottingUnavailable(f"plots need matplotlib, which is not installed: {INSTALL}")


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display needed).

    Raises:
        PlottingUnavailable: matplotlib is missing.
    """
    require()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
