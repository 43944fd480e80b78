"""Shared helpers of the hardening suite: the ledger read back by request id, SSE parsing, OpenAI error-shape
checks and the simulator's fault controls (servers, the TCP proxy and Redis are in ``tests.helpers``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.accounting.schema import ledger

LEDGER_TABLE = ledger.name
ERROR_KEYS = {"message", "type", "param", "code"}


# -- OpenAI shapes ------------------------------------------------------------------------------------------


def assert_openai_error(body: Any, *, status: int | None = None) -> dict[str, Any]:
    """``body`` is ``{"error": {"message", "type", "param", "code"}}``; returns the inner object."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert "Traceback" not in err["message"], err
    return err


def sse_events(text: str) -> list[Any]:
    """The data payloads of an SSE body, JSON-decoded (``"[DONE]"`` kept as the string)."""
    out: list[Any] = []
    for event in text.split("\n\n"):
        if not event.strip():
            continue
        assert event.startswith("data: "), event
        payload = event[6:]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# -- the ledger, read back ------------------------------------------------------------------------------


@dataclass(slots=True)
class LedgerFile:
    """A SQLite ledger written by a gateway, read with the standard library (no engine shared)."""

    path: Path

    @property
    def url(self) -> str:
        return f"sqlite+aiosqlite:///{self.path}"

    def rows(self, request_id: str) -> list[dict[str, Any]]:
        """Every row recorded for ``request_id``."""
        if not self.path.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as conn:
            conn.row_factory = sqlite3.Row
            try:
                cur = conn.execute(f"SELECT * FROM {LEDGER_TABLE} WHERE request_id = ?", (request_id,))
            except sqlite3.OperationalError:  # not migrated yet
                return []
            return [dict(r) for r in cur.fetchall()]

    def count(self) -> int:
        """Rows in the ledger."""
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {LEDGER_TABLE}").fetchone()[0])

    async def one_row(self, request_id: str, wait_s: float = 10.0) -> dict[str, Any]:
        """The single row of ``request_id``, waiting for the background writer; fails on none or several."""
        deadline = time.monotonic() + wait_s
        rows = self.rows(request_id)
        while not rows and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            rows = self.rows(request_id)
        assert rows, f"no ledger row for {request_id} after {wait_s} s"
        await asyncio.sleep(0.15)  # a second row would have been queued with the first
        rows = self.rows(request_id)
        assert len(rows) == 1, f"{len(rows)} ledger rows for {request_id}: {rows}"
        return rows[0]


# -- the simulator ------------------------------------------------------------------------------------------


def set_fault(sim_url: str, **fault: Any) -> None:
    """Configure the simulator's fault (``POST /_sim/faults``)."""
    r = httpx.post(f"{sim_url}/_sim/faults", json=fault, timeout=5)
    r.raise_for_status()


def clear_fault(sim_url: str) -> None:
    """Remove the simulator's fault."""
    httpx.delete(f"{sim_url}/_sim/faults", timeout=5).raise_for_status()


def sim_stats(sim_url: str) -> dict[str, Any]:
    """The simulator's request counters."""
    stats: dict[str, Any] = httpx.get(f"{sim_url}/_sim/stats", timeout=5).json()
    return stats
