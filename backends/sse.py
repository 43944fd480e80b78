"""A small incremental decoder of server-sent events that yields each event's ``data`` payload."""

from __future__ import annotations


class SSEDecoder:
    """Feed raw bytes as they arrive; get back complete events' data payloads.

    Events end with a blank line; a line ends with LF, CRLF or CR alone (the SSE spec). Multi-line ``data:``
    fields are joined with ``\\n`` as the SSE spec says; comments and other fields are ignored, and so is an event
    whose data is empty (the spec dispatches none: a keep-alive ``data:`` line is not an event).
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk`` and return the data of every event it completed."""
        buf = self._buffer + chunk
        held = b""
        if b"\r" in buf:  # CRLF, CR and LF all end a line (a CR at the end may be half a CRLF: held back)
            if buf.endswith(b"\r"):
                buf, held = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            data = self._parse(buf[start:end])
            if data is not None:
                out.append(data)
            start = end + 2
        self._buffer = buf[start:] + held
        return out

    def flush(self) -> list[bytes]:
        """Whatever complete event remains at end of stream (a final event without a blank line)."""
        rest, self._buffer = self._buffer.replace(b"\r", b"\n"), b""
        data = self._parse(rest.strip(b"\n")) if rest.strip() else None
        return [data] if data is not None else []

    @staticmethod
    def _parse(event: bytes) -> bytes | None:
        if event.startswith(b"data:") and b"\n" not in event:
            return event[5:].lstrip(b" ") or None  # the common case: one data line
        parts = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        return b"\n".join(parts) or None
