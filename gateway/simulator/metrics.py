"""Prometheus metrics for the simulator, named and labelled like vLLM's ``/metrics``.

Each app owns a private :class:`prometheus_client.CollectorRegistry`; nothing is
registered globally, so many simulators can live in one process (tests).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.simulator.engine import FifoLimiter

__all__ = ["SimMetrics"]

_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
)  # fmt: skip
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
)  # fmt: skip


class SimMetrics:
    """vLLM-compatible metrics: queue gauges, token counters and latency histograms."""

    def __init__(self, model_name: str, limiter: FifoLimiter) -> None:
        """Create the metrics for one served model, reading live queue state from ``limiter``."""
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": model_name, "engine": "0"}
        names = list(labels)
        reg = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=reg)

        gauge("vllm:num_requests_running", "Number of requests in model execution batches.").labels(
            **labels
        ).set_function(lambda: limiter.running)
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.").labels(**labels).set_function(
            lambda: limiter.waiting
        )
        for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            gauge(name, "KV-cache usage. 1 means 100 percent usage.").labels(**labels).set_function(
                lambda: limiter.running / limiter.limit
            )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", names, registry=reg
        ).labels(**labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", names, registry=reg
        ).labels(**labels)
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*names, "finished_reason"],
            registry=reg,
        )
        self._labels = labels
        for reason in ("stop", "length", "abort"):
            self._success.labels(**labels, finished_reason=reason)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            names,
            registry=reg,
            buckets=_TTFT_BUCKETS,
        ).labels(**labels)
        self.tpot = Histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            names,
            registry=reg,
            buckets=_TPOT_BUCKETS,
        ).labels(**labels)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            names,
            registry=reg,
            buckets=_E2E_BUCKETS,
        ).labels(**labels)

    def request_finished(self, finished_reason: str) -> None:
        """Count a finished request (``stop``, ``length`` or ``abort``)."""
        self._success.labels(**self._labels, finished_reason=finished_reason).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
