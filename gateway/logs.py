"""Structured (one JSON object per line) logging for the gateway process."""

from __future__ import annotations

import json
import logging
import queue
import select
import sys
import threading
import time
from typing import Any, TextIO

import orjson

_SECRET_HINTS = ("authorization", "api_key", "password", "secret")


class JSONFormatter(logging.Formatter):
    """Formats records as JSON lines; a record's ``gateway`` extra is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "gateway", None)
        if isinstance(extra, dict):
            out.update({k: v for k, v in extra.items() if k not in _SECRET_HINTS})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(out, default=str).decode()
        except TypeError:  # an integer past 64 bits (orjson's limit), from an upstream's absurd figure
            return json.dumps(out, default=str)


class BackgroundStreamHandler(logging.Handler):
    """Writes each record's line to ``stream`` where it is logged when the stream takes it at once, else from a
    thread of its own.

    No log line may hold up requests: written on the event loop, the log froze the whole server as soon as its
    reader stopped reading (a paused terminal, a log shipper fallen behind or down) and the pipe's 64 KiB
    filled. A line is written in place only when nothing waits before it and the stream's file descriptor takes
    it without waiting (a pipe with room for it, up to ``PIPE_BUF`` bytes: such a write is atomic; a file); else
    it waits in a queue of ``capacity`` for the writer thread, so a reader that keeps up costs no thread
    handoff. When the queue is full, new lines are dropped and counted, and a warning with the count follows once
    there is room again. (Each request also has its ledger row: the log is not the record of what was served.)
    """

    #: Most lines joined into one write when they come faster than the stream takes them.
    BATCH = 256

    def __init__(self, stream: TextIO | None = None, capacity: int = 10_000) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self._lines: queue.Queue[str | None] = queue.Queue(capacity)
        self._dropped = 0
        #: lines queued and not written yet (in place only at 0, so that lines keep their order)
        self._pending = 0
        self._mutex = threading.Lock()
        try:
            self._fd: int | None = self.stream.fileno()
        except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both: not a file (StringIO)
            self._fd = None
        self._writer = threading.Thread(target=self._write, name="gateway-log-writer", daemon=True)
        self._writer.start()

    @property
    def dropped(self) -> int:
        """Lines dropped since the last warning about them was queued."""
        return self._dropped

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's contract (as StreamHandler's): a record that fails is reported
            self.handleError(record)
            return
        if not self._writer.is_alive():  # stopped (the server is shutting down): written here, as StreamHandler does
            self._write_text(f"{line}\n")
            return
        with self._mutex:
            if self._pending == 0:
                text = f"{self._dropped_warning()}\n{line}\n" if self._dropped else f"{line}\n"
                if self._takes_at_once(text):
                    self._write_text(text)
                    self._dropped = 0
                    return
        if self._dropped:
            if not self._queue(self._dropped_warning()):
                self._dropped += 1
                return
            self._dropped = 0
        if not self._queue(line):
            self._dropped += 1

    def _takes_at_once(self, text: str) -> bool:
        """Whether the stream takes ``text`` now without waiting."""
        if self._fd is None:
            return False
        if len(text.encode()) > select.PIPE_BUF:
            return False  # a pipe with room for PIPE_BUF bytes may not have it for more
        try:
            return bool(select.select([], [self._fd], [], 0)[1])
        except (OSError, ValueError):  # closed
            return False

    def _queue(self, line: str) -> bool:
        with self._mutex:
            self._pending += 1
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            with self._mutex:
                self._pending -= 1
            return False
        return True

    def _dropped_warning(self) -> str:
        record = logging.LogRecord(
            "gateway.logs",
            logging.WARNING,
            __file__,
            0,
            "%d log lines dropped: the log stream was not read as fast as lines came",
            (self._dropped,),
            None,
        )
        return self.format(record)

    def _write(self) -> None:
        while True:
            batch = [self._lines.get()]
            while len(batch) < self.BATCH:
                try:
                    batch.append(self._lines.get_nowait())
                except queue.Empty:
                    break
            lines = [line for line in batch if line is not None]
            self._write_text("".join(f"{line}\n" for line in lines))
            with self._mutex:
                self._pending -= len(lines)
            if len(lines) < len(batch):
                return

    def _write_text(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a broken or closed stream: nowhere left to say so
            pass

    def stop_writer(self) -> None:
        """Write what is queued (waiting at most 5 s for a stream that does not take it) and stop the thread: later
        lines are written where they are logged. For the end of serving: uvicorn ends a process by raising the
        signal it got again, so nothing runs after its last lines (neither atexit nor a finalizer) to write them."""
        if self._writer.is_alive():
            try:
                self._lines.put(None, timeout=5)
            except queue.Full:
                pass
            self._writer.join(5)
        if self._dropped:  # not reported yet: now, in place
            self._write_text(f"{self._dropped_warning()}\n")
            self._dropped = 0

    def close(self) -> None:
        """Write what is queued, then stop (:meth:`stop_writer`)."""
        self.stop_writer()
        super().close()


class OutageLog:
    """Warnings about a dependency's failures, at most one per ``interval_s`` (with how many were held back), and
    one line when it answers again: an outage must not log a line per request."""

    def __init__(self, logger: logging.Logger, interval_s: float = 30.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.failing = False
        self._last = -float("inf")
        self._last_recovered = -float("inf")
        self._held = 0

    def failed(self, message: str) -> None:
        """One failure (``message`` says what and why)."""
        now = time.monotonic()
        self.failing = True
        if now - self._last < self.interval_s:
            self._held += 1
            return
        extra = f" ({self._held} more since the last report)" if self._held else ""
        self.logger.warning("%s%s", message, extra)
        self._last = now
        self._held = 0

    def recovered(self, message: str) -> None:
        """A success: ``message`` is logged if it ends a failure (once per interval: failures and successes may
        interleave)."""
        if self.failing:
            self.failing = False
            now = time.monotonic()
            if now - self._last_recovered >= self.interval_s:
                self.logger.warning("%s", message)
                self._last_recovered = now


class OncePer(logging.Filter):
    """Lets through at most one record per ``interval_s`` (per logger), the next saying how many were held back: for
    a library that logs each failure of a dependency (OpenTelemetry's exporter logs every batch a collector refuses,
    ~24 lines a second under load), as :class:`OutageLog` does for the gateway's own."""

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last.get(record.name, -float("inf")) < self.interval_s:
            self._held[record.name] = self._held.get(record.name, 0) + 1
            return False
        self._last[record.name] = now
        held = self._held.pop(record.name, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like it in the last {self.interval_s:.0f} s)"
            record.args = None
        return True


def stop_background_writers() -> None:
    """Make the root logger's :class:`BackgroundStreamHandler` write in place from now on, having written what
    is queued: called once the server no longer serves."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BackgroundStreamHandler):
            handler.stop_writer()


def tune_stdlib_logging() -> None:
    """Skip what every log record would otherwise compute and the JSON lines never show: the calling
    frame, thread, process and task names (the "Optimization" table of the logging HOWTO). Halves the
    cost of the per-request log line. For the server process only (``gateway serve`` and its workers)."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):
        logging.logAsyncioTasks = False


def setup_logging(level: str = "info") -> None:
    """Send JSON lines to stderr at ``level``."""
    tune_stdlib_logging()
    handler = BackgroundStreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo's httpx driver: one line per request is noise
    logging.Formatter.converter = time.gmtime


def logging_config(level: str = "info") -> dict[str, Any]:
    """The same setup as :func:`setup_logging` as a ``logging.config.dictConfig`` mapping: uvicorn applies
    it in every worker process it spawns (``--workers N``), where :func:`setup_logging` never ran."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "gateway.logs.JSONFormatter"}},
        "handlers": {
            "stderr": {
                "class": "gateway.logs.BackgroundStreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {"httpx": {"level": "WARNING"}},
    }
