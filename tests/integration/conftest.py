"""Fixtures that run the real vLLM OpenAI server (CPU, tiny random Llama) for integration tests.

The servers start lazily, once per session, only when a test asks for them. They are never skipped:
if the vLLM venv or the model cannot be prepared, or the server does not come up, the requesting tests
fail with the reason and the server log's tail (CI must prove the gateway against the real server).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.integration.vllm_server import VLLMServer, VLLMSetupError, start_vllm_server


def _serve(max_num_seqs: int | None = None) -> Iterator[VLLMServer]:
    try:
        server = start_vllm_server(max_num_seqs=max_num_seqs)
    except VLLMSetupError as exc:
        reason = str(exc)
    else:
        reason = ""
    if reason:
        pytest.fail(f"could not start the real vLLM server: {reason}", pytrace=False)
    print(
        f"\n[vllm] {server.served_model_name} ready at {server.base_url} after {server.startup_s:.1f} s"
        f" (log: {server.log_path})",
        file=sys.stderr,
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def vllm_server(vllm_server_queued: VLLMServer) -> VLLMServer:
    """The session's real vLLM server (model "tiny-llama", max_model_len 1024).

    One server serves every test: a second one costs ~3 GB and ~50 s of start-up on these 2-core machines,
    and nothing here needs more than the queued server's two concurrent sequences.
    """
    return vllm_server_queued


@pytest.fixture(scope="session")
def vllm_server_queued() -> Iterator[VLLMServer]:
    """A real vLLM server with --max-num-seqs 2, so concurrent requests queue ("waiting" in /metrics)."""
    yield from _serve(max_num_seqs=2)
