"""Backend simulator: a TEST AND DEMO stand-in for a vLLM (or hosted) OpenAI-compatible server.

It serves ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models``, ``/health`` and ``/metrics`` like vLLM does, with deterministic filler
text, a per-profile timing model, a FIFO concurrency limit and fault injection
(``/_sim/faults``), so the gateway can be tested and demoed without GPUs or API keys.
It never pretends to be a real model: responses carry an ``x-simulator`` header.

Run one with ``python -m gateway.simulator --profile llama-2-7b --port 8001``.
"""

from gateway.simulator.faults import FAULT_MODES, FaultConfig
from gateway.simulator.profiles import PROFILES, SimProfile, get_profile
from gateway.simulator.server import create_simulator_app, serve

__all__ = [
    "FAULT_MODES",
    "PROFILES",
    "FaultConfig",
    "SimProfile",
    "create_simulator_app",
    "get_profile",
    "serve",
]
