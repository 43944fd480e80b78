"""Network faults for tests: a TCP relay a test can cut and restore, to make a database or a cache unreachable
mid-test, and a server that accepts connections and never answers (a partition)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from tests.helpers.ports import free_port

__all__ = ["TcpProxy", "silent_server"]


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """The port of a TCP server on the test's loop that accepts every connection and never sends a byte, as a
    database host behind a partition looks to its clients."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client hangs up

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


class TcpProxy:
    """A TCP relay to ``127.0.0.1:target_port`` on a port of its own that stays the same across
    :meth:`stop` / :meth:`start`; stopping it also aborts every relayed connection (an outage), and
    :meth:`freeze` holds every byte while the connections stay open (a partition) until :meth:`thaw`.

    It runs on its own event loop in a thread, so it keeps relaying while the test's loop is blocked
    (e.g. in a server's start-up), and its methods are plain calls from sync and async tests alike."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        """Listen (again) and relay."""
        self._call(self._start())

    def stop(self) -> None:
        """Stop listening and cut every relayed connection."""
        self._call(self._stop())

    def freeze(self) -> None:
        """Relay nothing more, in either direction, and keep every connection open."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        """Relay again what was held, and what comes."""
        self._loop.call_soon_threadsafe(self._flowing.set)

    def close(self) -> None:
        """Stop and end the thread."""
        self.thaw()
        if self._server is not None:
            self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
