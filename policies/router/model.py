"""Inference for the quality router: load the artifact, score prompts, calibrate thresholds.

``score(prompt, ids)`` is the model's probability-like estimate (in [0, 1]) that the strong model is
needed for this prompt (higher = route to strong). A routing policy sends a prompt to the strong
model when ``score >= threshold``; the threshold comes from the config, either as a share of
strong calls (:meth:`QualityRouter.threshold_for_strong_share`) or as a quality target in PGR
(:meth:`QualityRouter.threshold_for_quality_target`), both calibrated on the out-of-fold scores
of the training prompts stored in the artifact. The router reads the prompt's ``cl100k_base`` token ids,
which the gateway computed anyway to count the prompt's tokens (:mod:`policies.router.features`). Serving
needs only the stdlib: the artifact is read with :mod:`zipfile` and :mod:`array`, the calibration runs on
:mod:`policies.router.curve`; numpy is imported only by the evaluation helpers (:meth:`QualityRouter.score_many`,
:meth:`QualityRouter.calibration_curve`).
"""

from __future__ import annotations

import ast
import bisect
import json
import math
import sys
import zipfile
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policies.router.curve import CurvePoints, pgr_points
from policies.router.features import CUE_NAMES, analyze, token_value

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from policies.router import metrics

__all__ = ["ARTIFACT_DIR", "QualityRouter"]

#: Directory of the artifact shipped with the package.
ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
_NPZ = "router.npz"
_JSON = "router.json"
#: The artifact layout this module reads (see ``policies.router.train.ARTIFACT_FORMAT``).
_FORMAT = 2

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class _Calibration:
    scores: Sequence[float]
    weights: Sequence[float]
    weak: Sequence[float]
    strong: Sequence[float]


#: ``.npy`` dtypes in the artifact -> :mod:`array` type codes (little-endian on disk).
_TYPECODES = {"<f4": "f", "<f8": "d", "|u1": "B", "<u1": "B", "<u4": "I", "<i8": "q"}


def _read_npz(path: Path) -> dict[str, array[Any]]:
    """The 1-D arrays of an ``.npz`` written by ``numpy.savez_compressed``, without numpy.

    Raises:
        OSError: the file is missing. ValueError: it is not such an archive (corrupt, truncated, another layout).
    """
    try:
        with zipfile.ZipFile(path) as z:
            return {name.removesuffix(".npy"): _read_npy(name, z.read(name)) for name in z.namelist()}
    except (zipfile.BadZipFile, EOFError, SyntaxError, KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{path.name}: not a readable .npz archive ({exc})") from None


def _read_npy(name: str, raw: bytes) -> array[Any]:
    if raw[:6] != b"\x93NUMPY":
        raise ValueError(f"{name}: not a .npy array")
    major = raw[6]
    size_bytes = 2 if major == 1 else 4
    header_len = int.from_bytes(raw[8 : 8 + size_bytes], "little")
    start = 8 + size_bytes + header_len
    header = ast.literal_eval(raw[8 + size_bytes : start].decode("latin-1"))
    code = _TYPECODES.get(header["descr"])
    if code is None or header["fortran_order"] or len(header["shape"]) != 1:
        raise ValueError(f"{name}: unsupported array {header}")
    values = array(code)
    values.frombytes(raw[start:])
    if sys.byteorder == "big" and code != "B":
        values.byteswap()
    if len(values) != header["shape"][0]:
        raise ValueError(f"{name}: truncated array")
    return values


#: The arrays of a prior's ``router.npz``: token ids, then float arrays.
_INT_ARRAYS = ("vocab",)
_FLOAT_ARRAYS = ("w_ngram", "w_cue", "bias", "calib_scores", "calib_weights", "calib_weak", "calib_strong")
_CALIB_ARRAYS = ("calib_scores", "calib_weights", "calib_weak", "calib_strong")


def _check_meta(meta: Any) -> dict[str, Any]:
    """``meta`` (``router.json``) if it is an object in the layout this version reads.

    Raises:
        ValueError: it is not.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"{_JSON} is not a JSON object")
    if meta.get("format") != _FORMAT:
        raise ValueError(f"router artifact format {meta.get('format')!r}; this version reads {_FORMAT}")
    return meta


def _check_arrays(meta: dict[str, Any], npz: dict[str, array[Any]]) -> None:
    """Whether the arrays of ``router.npz`` make one valid prior with ``meta``: every weight and calibration value
    finite, the lengths consistent with each other and with what the JSON records.

    Raises:
        ValueError: what is wrong (a corrupt artifact, or files of two different ones).
    """
    features = meta.get("features")
    if not isinstance(features, dict):
        raise ValueError(f"corrupt router artifact: {_JSON} has no features")
    n_vocab = features.get("n_vocab")
    if not isinstance(n_vocab, int) or isinstance(n_vocab, bool) or n_vocab <= 0:
        raise ValueError(f"corrupt router artifact: {_JSON} has no features.n_vocab")
    missing = [name for name in (*_INT_ARRAYS, *_FLOAT_ARRAYS) if name not in npz]
    if missing:
        raise ValueError(f"corrupt router artifact: {_NPZ} lacks {', '.join(missing)}")
    for name in _INT_ARRAYS:
        if npz[name].typecode not in "BIq":
            raise ValueError(f"corrupt router artifact: {name} is not an integer array")
    for name in _FLOAT_ARRAYS:
        if npz[name].typecode not in "fd":
            raise ValueError(f"corrupt router artifact: {name} is not a float array")
        if not all(map(math.isfinite, npz[name])):
            raise ValueError(f"corrupt router artifact: {name} holds non-finite values (NaN or infinity)")
    vocab = npz["vocab"]
    if len(vocab) != len(npz["w_ngram"]):
        raise ValueError("corrupt router artifact: vocabulary and weights differ in length")
    if vocab and not 0 <= min(vocab) <= max(vocab) < n_vocab:
        raise ValueError("corrupt router artifact: token ids outside the encoding")
    if len(npz["w_cue"]) != len(CUE_NAMES) or len(npz["bias"]) != 1:
        raise ValueError(f"corrupt router artifact: expected {len(CUE_NAMES)} cue weights and one bias")
    sizes = {len(npz[name]) for name in _CALIB_ARRAYS}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError("corrupt router artifact: the calibration arrays are empty or differ in length")
    weights = npz["calib_weights"]
    if not all(0.0 <= s <= 1.0 for s in npz["calib_scores"]) or min(weights) < 0 or not math.fsum(weights) > 0:
        raise ValueError("corrupt router artifact: calibration scores outside [0, 1], or weights not positive")
    _expect(features.get("vocab_size"), len(vocab), "features.vocab_size", "vocabulary")
    training = meta.get("training_data")
    rows = training.get("rows") if isinstance(training, dict) else None
    _expect(rows, sizes.pop(), "training_data.rows", "calibration")


def _expect(recorded: object, actual: int, field: str, what: str) -> None:
    """Refuse an artifact whose JSON records another size than its arrays hold (files of two different saves)."""
    if recorded is not None and recorded != actual:
        raise ValueError(
            f"corrupt router artifact: {_JSON} records {field} = {recorded!r} but the {what} holds {actual} "
            "(files of two different artifacts?)"
        )


class QualityRouter:
    """A trained router: prompt -> score in [0, 1] (higher = the strong model is more needed)."""

    needs_embedding = False

    def __init__(
        self,
        token_weights: dict[int, float],
        cue_weights: tuple[float, ...],
        bias: float,
        calibration: _Calibration,
        metadata: dict[str, Any],
        encode: Encode,
    ) -> None:
        """Build from raw parts; use :meth:`load` to read an artifact. ``encode``: text -> ``cl100k_base``
        ids, for :meth:`score` calls that bring no ids."""
        if len(cue_weights) != len(CUE_NAMES):
            raise ValueError(f"expected {len(CUE_NAMES)} cue weights, got {len(cue_weights)}")
        self._token_weights = token_weights
        self._cue_weights = cue_weights
        self._bias = bias
        self._calib = calibration
        self._encode = encode
        self._points: CurvePoints | None = None
        self.metadata: dict[str, Any] = metadata

    @classmethod
    def load(cls, path: Path | None = None, *, encode: Encode) -> QualityRouter:
        """Load an artifact directory (``router.npz`` + ``router.json``); ``None`` = the shipped one.

        ``encode`` turns text into ``cl100k_base`` token ids for calls that bring none (the gateway passes
        its token counter's, so one tokenizer serves both: ``gateway.tokens.load_counter().encode``).

        Raises:
            OSError: missing files. ValueError: an unreadable, incompatible or corrupt artifact (a non-finite
            weight, arrays of inconsistent lengths or types, an empty calibration table).
        """
        directory = ARTIFACT_DIR if path is None else Path(path)
        if directory.is_file():
            directory = directory.parent
        meta = _check_meta(json.loads((directory / _JSON).read_text(encoding="utf-8")))
        npz = _read_npz(directory / _NPZ)
        _check_arrays(meta, npz)
        calib = _Calibration(  # float32 on disk, float64 here (exactly), compact either way
            scores=array("d", npz["calib_scores"]),
            weights=array("d", npz["calib_weights"]),
            weak=array("d", npz["calib_weak"]),
            strong=array("d", npz["calib_strong"]),
        )
        weights = dict(zip(npz["vocab"].tolist(), npz["w_ngram"].tolist(), strict=True))
        return cls(weights, tuple(npz["w_cue"].tolist()), float(npz["bias"][0]), calib, meta, encode)

    # ----------------------------------------------------------------- metadata
    @property
    def version(self) -> str:
        """Artifact version string."""
        return str(self.metadata.get("version", "unknown"))

    @property
    def training_data_sha256(self) -> str:
        """SHA-256 of the training data file."""
        return str(self.metadata.get("training_data", {}).get("sha256", ""))

    @property
    def cv_metrics(self) -> dict[str, Any]:
        """Cross-validated metrics per benchmark (router, random and perfect baselines)."""
        result: dict[str, Any] = self.metadata.get("cv_metrics", {})
        return result

    # ------------------------------------------------------------------ scoring
    def logit(self, prompt: str, ids: Sequence[int] | None = None) -> float:
        """Raw linear score of ``prompt`` (monotone in :meth:`score`); ``ids``: its token ids, if known.

        The features are those training reads (:func:`~policies.router.features.analyze` and
        :func:`~policies.router.features.token_value`): the weights of the prompt's distinct in-vocabulary token
        ids, each at the token value, plus the weighted cues."""
        tokens, cues = analyze(prompt, self._encode(prompt) if ids is None else ids)
        weights = [w for w in map(self._token_weights.get, tokens) if w is not None]
        z = self._bias + (sum(weights) * token_value(len(weights)) if weights else 0.0)
        return z + sum(w * c for w, c in zip(self._cue_weights, cues, strict=True))

    def score(self, prompt: str, ids: Sequence[int] | None = None, vector: object = None) -> float:
        """Probability-like score in [0, 1] that ``prompt`` needs the strong model (``ids``: the prompt's
        ``cl100k_base`` token ids when the caller has them; encoded here otherwise). ``vector`` is ignored (the
        prior reads no embedding; an adapted router does)."""
        z = self.logit(prompt, ids)
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def score_many(self, prompts: Iterable[str]) -> NDArray[np.float64]:
        """Scores of many prompts as a float64 array (evaluation; imports numpy)."""
        import numpy as np

        return np.fromiter((self.score(p) for p in prompts), dtype=np.float64)

    def needs_strong(self, prompt: str, threshold: float) -> bool:
        """Routing decision: ``True`` (use the strong model) when ``score >= threshold``."""
        return self.score(prompt) >= threshold

    # -------------------------------------------------------------- calibration
    def threshold_for_strong_share(self, share: float) -> float:
        """Threshold sending about ``share`` (0..1) of prompts to the strong model.

        Calibrated on the stored out-of-fold score distribution (benchmark weights per the recipe) of the
        training prompts. ``share <= 0`` gives ``inf`` (never strong), ``share >= 1`` gives 0.
        """
        if math.isnan(share):
            raise ValueError("share must be a number in [0, 1]")
        if share <= 0.0:
            return math.inf
        if share >= 1.0:
            return 0.0
        points = self._calibration_points()
        shares = points.shares[1:]  # after routing the k+1 highest-scored prompts
        k = bisect.bisect_left(shares, share - 1e-12)
        return points.thresholds[1 + min(k, len(shares) - 1)]

    def _calibration_points(self) -> CurvePoints:
        if self._points is None:
            c = self._calib
            self._points = pgr_points(c.scores, c.weak, c.strong, c.weights)
        return self._points

    def calibration_curve(self) -> metrics.PGRCurve:
        """The PGR curve of the stored calibration data (pooled, benchmark-weighted), as numpy arrays."""
        import numpy as np

        from policies.router import metrics

        p = self._calibration_points()
        return metrics.PGRCurve(np.asarray(p.shares), np.asarray(p.pgr), np.asarray(p.thresholds))

    def strong_share_for_quality_target(self, target_pgr: float) -> float:
        """Smallest share of strong calls whose calibrated PGR reaches ``target_pgr``."""
        return self._calibration_points().share_for_pgr(target_pgr)

    def threshold_for_quality_target(self, target_pgr: float) -> float:
        """Threshold whose calibrated PGR (share of the weak-strong quality gap recovered) reaches
        ``target_pgr`` (e.g. 0.8) with the fewest strong calls; ``<= 0`` gives ``inf``.
        """
        return self._calibration_points().threshold_for_pgr(target_pgr)

    def __repr__(self) -> str:
        return f"QualityRouter(version={self.version!r}, tokens={len(self._token_weights)})"
