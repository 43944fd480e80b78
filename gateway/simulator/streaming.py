"""A response class that runs a generation job and cancels it when the client leaves.

Starlette's own responses only notice a disconnected client when they next write, which
for a request waiting in the queue (or hanging on purpose) may be never.  ``SimResponse``
listens for ``http.disconnect`` while the job runs and cancels the job at once, so the
request promptly leaves the running/waiting counts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.simulator.engine import SimStats
from gateway.simulator.faults import abort_connection

__all__ = ["AbortConnection", "PartialBody", "SimResponse", "cut_job", "sse"]


class AbortConnection(Exception):
    """Raised by a job to have the connection closed abruptly (faults ``reset``/``cut_stream``)."""


class SimulatedConnectionReset(ConnectionResetError):
    """Raised to the ASGI server when the transport cannot be aborted directly.

    Under ``httpx.ASGITransport`` this surfaces in the client as this exception.
    """


@dataclass(frozen=True, slots=True)
class PartialBody:
    """Start a non-streaming response announcing ``total_length`` bytes but send only ``data``."""

    data: bytes
    total_length: int


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class SimResponse(Response):
    """Runs ``job`` (an async iterator of body parts) while watching for disconnects.

    Streaming responses send their headers at once (``text/event-stream``) and every
    part as it comes.  Non-streaming responses send headers and body together when the
    job yields its single body part, so nothing reaches the client before it is ready.
    """

    def __init__(
        self,
        stats: SimStats,
        job: AsyncIterator[bytes | PartialBody],
        *,
        stream: bool,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Wrap ``job``; ``stats`` counts connections the job asks to abort as failed."""
        super().__init__(
            status_code=200,
            headers=headers,
            media_type="text/event-stream" if stream else "application/json",
        )
        if stream:
            self.headers["cache-control"] = "no-cache"
        self._stats = stats
        self._job = job
        self._stream = stream
        self._aborting = False

    def _start(self, content_length: int | None) -> dict[str, Any]:
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        if content_length is not None:
            headers.append((b"content-length", str(content_length).encode()))
        return {"type": "http.response.start", "status": self.status_code, "headers": headers}

    async def _run(self, scope: Scope, send: Send) -> None:
        started = False
        try:
            if self._stream:
                await send(self._start(None))
                started = True
            async for part in self._job:
                if isinstance(part, PartialBody):
                    await send(self._start(part.total_length))
                    await send({"type": "http.response.body", "body": part.data, "more_body": True})
                    started = True
                elif started:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                else:
                    await send(self._start(len(part)))
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                    started = True
            if not started:
                await send(self._start(0))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except AbortConnection:
            self._aborting = True
            self._stats.failed += 1
            if not await abort_connection(scope):
                raise SimulatedConnectionReset("simulated connection reset") from None
            for _ in range(3):  # let the server see the lost connection before we return
                await asyncio.sleep(0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the response, cancelling the job if the client disconnects first."""
        run = asyncio.ensure_future(self._run(scope, send))
        watch = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({run, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            run.cancel()
            watch.cancel()
            raise
        if not run.done() and not self._aborting:
            run.cancel()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        try:
            await run
        except asyncio.CancelledError:
            if not watch.cancelled() and watch.done():
                return  # the client went away: nothing left to answer
            raise


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def cut_job(raw: bytes) -> AsyncIterator[bytes | PartialBody]:
    """A job that announces ``raw`` but sends only its first half, then cuts the connection."""
    yield PartialBody(raw[: len(raw) // 2], len(raw))
    raise AbortConnection
