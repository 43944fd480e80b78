#!/usr/bin/env python3
"""In-process cost of the streaming path's two per-chunk steps: SSE decoding and ``ChunkRelay.transform``.

    .venv/bin/python bench/stream_path_micro.py --tree /tmp/before   # a tree from `git archive REV`
    .venv/bin/python bench/stream_path_micro.py --tree .

Prints microseconds per stream of 64 chat chunks (~150 bytes each), decoded one event per read and in 400-byte
reads, and relayed; run the trees alternately, the machine is noisy (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", default=".", help="the source tree to measure")
    parser.add_argument("--streams", type=int, default=2000)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.tree).resolve()))
    import orjson

    from backends.sse import SSEDecoder
    from gateway.context import RequestContext
    from gateway.streaming import ChunkRelay

    delta = {"index": 0, "delta": {"content": "tok "}, "finish_reason": None}
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake", "choices": [delta]}
    payload = orjson.dumps(chunk)
    event = b"data: " + payload + b"\n\n"
    stream = event * 64
    for label, step in (("SSE, one event per read", 0), ("SSE, 400-byte reads", 400)):
        started = time.perf_counter()
        for _ in range(args.streams):
            decoder = SSEDecoder()
            pieces = [event] * 64 if not step else [stream[i : i + step] for i in range(0, len(stream), step)]
            for piece in pieces:
                decoder.feed(piece)
        print(f"{label}: {(time.perf_counter() - started) / args.streams * 1e6:.1f} us a stream")
    started = time.perf_counter()
    for _ in range(args.streams):
        relay = ChunkRelay(RequestContext(request_id="r", endpoint="chat", body={}, requested_model="m"), "m")
        for _ in range(64):
            relay.transform(payload)
    print(f"ChunkRelay.transform: {(time.perf_counter() - started) / args.streams * 1e6:.1f} us a stream")


if __name__ == "__main__":
    main()
