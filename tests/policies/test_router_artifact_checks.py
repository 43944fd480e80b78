"""A router artifact is checked before it serves, and written so that no reader sees a half-written or mixed one.

* loading refuses NaN/infinite weights and calibration values, arrays of the wrong length or shape, a vector
  dimension that is not the vector's, an ``adapted.json`` that is no object (the shipped-prior format too);
* at start-up such an artifact is logged and the shipped prior serves (it used to crash ``gateway serve``);
* saves go through a temporary directory and land whole: concurrent saves into one directory leave one of the
  two artifacts, never a mix, and a JSON beside another save's weights is refused.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.components import load_estimator
from gateway.config import settings_from_dict
from gateway.tokens import load_counter, load_tiktoken
from policies.router.adapt import AdaptConfig, AdaptedRouter, adapt
from policies.router.loader import load_artifact
from policies.router.model import ARTIFACT_DIR, QualityRouter
from tests.helpers.servers import serve_gateway
from tests.policies.test_router_adapt import _labels, fake_embed

MASTER = "sk-master-artifact-checks"


@pytest.fixture(scope="module")
def prior() -> QualityRouter:
    return QualityRouter.load(None, encode=load_tiktoken().encode)


@pytest.fixture(scope="module")
def fits(prior: QualityRouter) -> tuple[AdaptedRouter, AdaptedRouter]:
    """Two fits on different labels (48 and 60 rows), one per prompt vector."""
    a = adapt(_labels(48), prior, fake_embed, AdaptConfig(folds=4, vector="minilm-static"))
    b = adapt(_labels(60, seed=1), prior, fake_embed, AdaptConfig(folds=4))
    return a, b


@pytest.fixture(scope="module")
def saved(fits: tuple[AdaptedRouter, AdaptedRouter], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fits[0].save(tmp_path_factory.mktemp("saved") / "art")


def _edit(
    src: Path, dst: Path, npz: Callable[[dict[str, Any]], None], meta: Callable[[Any], Any] = lambda m: m
) -> Path:
    """A copy of the artifact ``src`` whose arrays and JSON went through ``npz`` and ``meta``."""
    shutil.copytree(src, dst)
    arrays = dict(np.load(dst / "adapted.npz"))
    npz(arrays)
    np.savez_compressed(dst / "adapted.npz", **arrays)
    (dst / "adapted.json").write_text(json.dumps(meta(json.loads((dst / "adapted.json").read_text()))))
    return dst


def _set(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(arrays: dict[str, Any]) -> None:
        arrays[name] = value(arrays[name]) if callable(value) else value

    return edit


def _nan_at_0(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[0] = np.nan
    return a


def _dim10(meta: Any) -> Any:
    meta["embedding"]["dim"] = 10
    return meta


CORRUPT: dict[str, tuple[Callable[[dict[str, Any]], None], Callable[[Any], Any], str]] = {
    "nan w_embed": (_set("w_embed", _nan_at_0), lambda m: m, "w_embed holds non-finite"),
    "nan bias": (_set("bias", np.array([np.nan])), lambda m: m, "bias holds non-finite"),
    "inf w_prior": (_set("w_prior", np.array([np.inf])), lambda m: m, "w_prior holds non-finite"),
    "nan embed_mean": (_set("embed_mean", np.array([np.nan])), lambda m: m, "embed_mean holds non-finite"),
    "nan calibration": (_set("calib_scores", _nan_at_0), lambda m: m, "calib_scores holds non-finite"),
    "truncated calibration": (_set("calib_weak", lambda a: a[:5]), lambda m: m, "calibration arrays hold"),
    "empty calibration": (
        lambda z: z.update({k: z[k][:0] for k in ("calib_scores", "calib_weak", "calib_strong")}),
        lambda m: m,
        "calibration arrays hold",
    ),
    "2-D weights": (_set("w_embed", np.zeros((384, 1), np.float32)), lambda m: m, "not a 1-D float array"),
    "10 weights": (_set("w_embed", lambda a: a[:10]), lambda m: m, "expected 384 embedding weights"),
    "10 weights, dim 10": (_set("w_embed", lambda a: a[:10]), _dim10, "embedding.dim 10, but the minilm-static"),
    "json list": (lambda z: None, lambda m: [], "adapted.json is not a JSON object"),
    "no embedding": (lambda z: None, lambda m: {k: v for k, v in m.items() if k != "embedding"}, "its embedding"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_adapted_artifact_is_refused(saved: Path, tmp_path: Path, kind: str) -> None:
    npz, meta, message = CORRUPT[kind]
    bad = _edit(saved, tmp_path / "bad", npz, meta)
    with pytest.raises(ValueError, match=message):
        load_artifact(bad, encode=load_tiktoken().encode)


def _corrupt_prior(directory: Path, name: str) -> None:
    arrays = dict(np.load(directory / "router.npz"))
    arrays[name] = _nan_at_0(arrays[name])
    np.savez_compressed(directory / "router.npz", **arrays)


@pytest.mark.parametrize("name", ["w_ngram", "w_cue", "bias", "calib_scores", "calib_weights"])
def test_a_prior_with_a_non_finite_value_is_refused(saved: Path, tmp_path: Path, name: str) -> None:
    standalone = tmp_path / "prior"
    shutil.copytree(ARTIFACT_DIR, standalone)
    _corrupt_prior(standalone, name)
    encode = load_tiktoken().encode
    with pytest.raises(ValueError, match=f"{name} holds non-finite"):
        QualityRouter.load(standalone, encode=encode)
    inside = tmp_path / "adapted"  # the prior copy of an adapted artifact
    shutil.copytree(saved, inside)
    _corrupt_prior(inside / "prior", name)
    with pytest.raises(ValueError, match=f"{name} holds non-finite"):
        load_artifact(inside, encode=encode)


def test_a_prior_whose_json_and_arrays_disagree_is_refused(tmp_path: Path) -> None:
    standalone = tmp_path / "prior"
    shutil.copytree(ARTIFACT_DIR, standalone)
    (standalone / "router.json").write_text("[]")
    with pytest.raises(ValueError, match="not a JSON object"):
        QualityRouter.load(standalone, encode=load_tiktoken().encode)
    shutil.copy(ARTIFACT_DIR / "router.json", standalone / "router.json")
    arrays = dict(np.load(standalone / "router.npz"))
    arrays["calib_weak"] = arrays["calib_weak"][:5]
    np.savez_compressed(standalone / "router.npz", **arrays)
    with pytest.raises(ValueError, match="calibration arrays"):
        QualityRouter.load(standalone, encode=load_tiktoken().encode)


def test_an_artifact_written_before_the_artifact_id_still_loads(saved: Path, tmp_path: Path) -> None:
    old = _edit(
        saved,
        tmp_path / "old",
        lambda z: z.pop("artifact_id", None),
        lambda m: {k: v for k, v in m.items() if k != "artifact_id"},
    )
    loaded = load_artifact(old, encode=load_tiktoken().encode)
    assert isinstance(loaded, AdaptedRouter) and loaded.vector == "minilm-static"


def test_a_json_beside_another_saves_weights_is_refused(
    fits: tuple[AdaptedRouter, AdaptedRouter], tmp_path: Path
) -> None:
    a, b = fits
    out_a, out_b = a.save(tmp_path / "a"), b.save(tmp_path / "b")
    shutil.copy(out_b / "adapted.npz", out_a / "adapted.npz")  # a's JSON (48 rows), b's weights (60)
    with pytest.raises(ValueError, match="different saves"):
        load_artifact(out_a, encode=load_tiktoken().encode)


def test_concurrent_saves_leave_one_whole_artifact(fits: tuple[AdaptedRouter, AdaptedRouter], tmp_path: Path) -> None:
    """Two writers saving into one directory at once (fixed temporary names used to collide: FileNotFoundError,
    or adapted.json of one fit beside adapted.npz of the other); each round ends with one fit, whole."""
    out = tmp_path / "art"
    (out / "keep").mkdir(parents=True)
    (out / "labels.jsonl").write_text("mine\n")
    errors: list[BaseException] = []
    encode = load_tiktoken().encode
    for _ in range(15):
        barrier = threading.Barrier(2)

        def save(router: AdaptedRouter, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                for _ in range(3):
                    router.save(out)
            except (OSError, ValueError, zipfile.BadZipFile) as exc:  # collected: the assertion below names it
                errors.append(exc)

        threads = [threading.Thread(target=save, args=(router,)) for router in fits]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        meta = json.loads((out / "adapted.json").read_text())
        with np.load(out / "adapted.npz") as z:
            assert z["calib_scores"].size == meta["training_data"]["rows"]
        loaded = load_artifact(out, encode=encode)
        assert isinstance(loaded, AdaptedRouter) and loaded.version in {r.version for r in fits}
    # unrelated files are left alone, and no temporary file or directory stays behind
    assert (out / "labels.jsonl").read_text() == "mine\n"
    assert {p.name for p in out.iterdir()} == {"adapted.json", "adapted.npz", "prior", "keep", "labels.jsonl"}
    assert {p.name for p in (out / "prior").iterdir()} == {"router.json", "router.npz"}


@pytest.mark.parametrize("kind", ["nan calibration", "truncated calibration", "empty calibration", "json list"])
def test_start_up_with_a_broken_artifact_serves_the_shipped_prior(
    saved: Path, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    npz, meta, _ = CORRUPT[kind]
    bad = _edit(saved, tmp_path / "bad", npz, meta)
    with caplog.at_level(logging.ERROR, logger="gateway.runtime"):
        estimator = load_estimator(load_counter(), str(bad))
    assert isinstance(estimator, QualityRouter) and estimator.version == "2"
    assert any("does not load" in r.getMessage() for r in caplog.records)


def test_gateway_serve_starts_with_a_broken_artifact(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gateway serve`` with NaN in the artifact's calibration table used to exit 3 (the routes' calibration ran
    outside the start-up fallback)."""
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER)
    bad = _edit(saved, tmp_path / "bad", *CORRUPT["nan calibration"][:2])
    upstream = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}
    settings = settings_from_dict(
        {
            "models": [
                {"name": "weak", **upstream, "input_cost_per_token": "0.0000001", "quality": 6.0},
                {"name": "strong", **upstream, "input_cost_per_token": "0.00003", "quality": 9.0},
            ],
            "routes": {"smart": {"policy": "learned", "quality_target": 0.8}},
            "router": {"artifact": str(bad), "fallback_to_prior": True},
            "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"},
            "server": {"metrics_scrape_seconds": 3600},
        }
    )
    with serve_gateway(settings) as gw:
        served = httpx.get(gw.base_url + "/admin/router", headers={"authorization": f"Bearer {MASTER}"}).json()
    assert served["kind"] == "prior" and served["version"] == "2"
