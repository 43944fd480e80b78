"""Every hardening test also checks that nothing it did made the gateway log a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No log record of the test carries a traceback (an unhandled exception in the gateway or uvicorn)."""
    caplog.set_level(logging.WARNING)
    yield
    with_trace = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not with_trace, [f"{r.name}: {r.getMessage()}" for r in with_trace]
