"""A small incremental decoder of server-sent events that yields each event's ``data`` payload."""

from __future__ import annotations

#: The most one event may hold: a stream's events are chunks of an answer (kilobytes at most), so a longer one is
#: an upstream that never ends its line, whose bytes would otherwise be held without bound.
MAX_EVENT_BYTES = 16 << 20


class EventTooLarge(ValueError):
    """An event grew past the decoder's ``max_event_bytes`` without ending."""


class SSEDecoder:
    """Feed raw bytes as they arrive; get back complete events' data payloads.

    Events end with a blank line; a line ends with LF, CRLF or CR alone (the SSE spec). Multi-line ``data:``
    fields are joined with ``\\n`` as the SSE spec says; comments and other fields are ignored, and so is an event
    whose data is empty (the spec dispatches none: a keep-alive ``data:`` line is not an event).

    The pending bytes live in one buffer that grows in place and is searched only where new bytes arrived, so an
    event fed in many small pieces costs time in proportion to its length; one past ``max_event_bytes`` raises
    :class:`EventTooLarge`.
    """

    __slots__ = ("_buffer", "_held", "_scanned", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._held = b""  # a CR that ended the last piece: maybe half a CRLF
        self._scanned = 0  # the buffer's bytes already searched for an event's end
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk`` and return the data of every event it completed.

        Raises:
            EventTooLarge: the pending event is longer than ``max_event_bytes``.
        """
        piece = self._held + chunk if self._held else chunk
        self._held = b""
        if b"\r" in piece:  # CRLF, CR and LF all end a line (a CR at the end may be half a CRLF: held back)
            if piece.endswith(b"\r"):
                piece, self._held = piece[:-1], b"\r"
            piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buffer
        out: list[bytes] = []
        start = 0
        if not buf:  # the common case: the piece begins an event, and is read as it is
            while (end := piece.find(b"\n\n", start)) >= 0:
                data = self._parse(piece[start:end])
                if data is not None:
                    out.append(data)
                start = end + 2
            buf += piece[start:]
        else:
            buf += piece
            pos = max(self._scanned - 1, 0)  # an event's end may straddle the last piece's end
            while (end := buf.find(b"\n\n", pos)) >= 0:
                data = self._parse(bytes(buf[start:end]))
                if data is not None:
                    out.append(data)
                start = pos = end + 2
            del buf[:start]
        self._scanned = len(buf)
        if len(buf) > self.max_event_bytes:
            raise EventTooLarge(f"an event over {self.max_event_bytes} bytes")
        return out

    def flush(self) -> list[bytes]:
        """Whatever complete event remains at end of stream (a final event without a blank line)."""
        rest = (bytes(self._buffer) + self._held).replace(b"\r", b"\n")
        self._buffer, self._held, self._scanned = bytearray(), b"", 0
        data = self._parse(rest.strip(b"\n")) if rest.strip() else None
        return [data] if data is not None else []

    @staticmethod
    def _parse(event: bytes) -> bytes | None:
        if event.startswith(b"data:") and b"\n" not in event:
            return event[5:].lstrip(b" ") or None  # the common case: one data line
        parts = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        return b"\n".join(parts) or None
