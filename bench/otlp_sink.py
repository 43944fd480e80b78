"""A minimal OTLP/HTTP traces sink for benchmarks: accepts ``POST /v1/traces`` (protobuf), counts the spans
it decodes, and prints the count when stopped. It stands in for an OpenTelemetry Collector so that the
gateway's exporter does real work (encoding, HTTP) during a traced benchmark.

    python bench/otlp_sink.py --port 4318
"""

from __future__ import annotations

import argparse
import signal

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    counts = {"spans": 0, "requests": 0}

    async def traces(request: web.Request) -> web.Response:
        msg = ExportTraceServiceRequest()
        msg.ParseFromString(await request.read())
        counts["requests"] += 1
        counts["spans"] += sum(len(ss.spans) for rs in msg.resource_spans for ss in rs.scope_spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def report(app: web.Application) -> None:
        print(f"otlp_sink: {counts['spans']} spans in {counts['requests']} exports", flush=True)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.on_shutdown.append(report)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
