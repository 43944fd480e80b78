"""Checks on the files of an adapted router artifact (``adapted.json``, ``adapted.npz``), made before it serves.

A weight that is NaN or infinite makes every score NaN (every decision weak, every ``min_quality`` route
refused); arrays of another length than recorded, or the JSON of one save beside the weights of another, score
with the wrong model. :func:`check_meta` and :func:`read_weights` refuse such artifacts with a ``ValueError``
naming what is wrong; :func:`policies.router.adapt.load_adapted` runs them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policies.router.loader import ADAPTED_JSON

__all__ = [
    "ADAPTED_FORMAT",
    "ARTIFACT_FILES",
    "NPZ",
    "PRIOR",
    "VECTORS",
    "VECTOR_DIMS",
    "check_meta",
    "read_weights",
]

FloatArray = NDArray[np.float64]

#: Layout version of an adapted artifact (``adapted.json`` + ``adapted.npz`` + ``prior/``): 1 reads the full
#: MiniLM embedding (``embedding.vector`` absent or ``minilm``); 2 names another vector, so that a gateway too old
#: to compute it refuses the artifact rather than score it with the wrong vector.
ADAPTED_FORMAT = 2
FORMATS = (1, 2)
NPZ = "adapted.npz"
PRIOR = "prior"
#: The prompt vectors an adapted router can read: the sentence embedding, or the static one
#: (:mod:`policies.router.adapt`).
VECTORS = ("minilm", "minilm-static")
#: Their dimensions (both MiniLM's hidden size): an artifact or an embedder of another width is refused.
VECTOR_DIMS = {"minilm": 384, "minilm-static": 384}
#: The files of an adapted artifact, in the order a save puts them in place (``adapted.json``, which names the
#: artifact and is read first, last).
ARTIFACT_FILES = (f"{PRIOR}/router.json", f"{PRIOR}/router.npz", NPZ, ADAPTED_JSON)
_FLOATS = ("w_embed", "w_prior", "bias", "embed_mean", "calib_scores", "calib_weak", "calib_strong")


def check_meta(meta: Any) -> dict[str, Any]:
    """``adapted.json``'s content if it is an adapted artifact this version reads.

    Raises:
        ValueError: it is not (not an object, another format, an unknown vector, a dimension not the vector's).
    """
    if not isinstance(meta, dict):
        raise ValueError(f"{ADAPTED_JSON} is not a JSON object")
    if meta.get("format") not in FORMATS:
        raise ValueError(f"adapted router format {meta.get('format')!r}; this version reads {FORMATS}")
    embedding = meta.get("embedding")
    if not isinstance(embedding, dict):
        raise ValueError(f"corrupt adapted artifact: {ADAPTED_JSON} does not describe its embedding")
    vector = embedding.get("vector", "minilm")
    if vector not in VECTORS:
        raise ValueError(f"adapted router reads an unknown prompt vector {vector!r}")
    dim, max_tokens, expected = embedding.get("dim"), embedding.get("max_tokens"), VECTOR_DIMS[vector]
    if dim != expected or isinstance(dim, bool):
        raise ValueError(f"corrupt adapted artifact: embedding.dim {dim!r}, but the {vector} vector has {expected}")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"corrupt adapted artifact: embedding.max_tokens {max_tokens!r}")
    if not isinstance(meta.get("prior"), dict) or not isinstance(meta.get("held_out", {}), dict):
        raise ValueError(f"corrupt adapted artifact: {ADAPTED_JSON} has no prior (or a held_out that is no object)")
    return meta


def read_weights(path: Path) -> tuple[dict[str, FloatArray], str | None]:
    """The float arrays of ``adapted.npz`` (1-D, finite) and its ``artifact_id`` (None: written before it existed).

    Raises:
        OSError: the file is missing. ValueError: it is not a readable archive of such arrays.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {name: np.asarray(z[name]) for name in z.files}
    except (zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ValueError(f"{path.name}: not a readable .npz archive ({exc})") from None
    missing = [name for name in _FLOATS if name not in raw]
    if missing:
        raise ValueError(f"corrupt adapted artifact: {path.name} lacks {', '.join(missing)}")
    arrays: dict[str, FloatArray] = {}
    for name in _FLOATS:
        a = raw[name]
        if a.ndim != 1 or a.dtype.kind != "f":
            raise ValueError(f"corrupt adapted artifact: {name} is not a 1-D float array ({a.dtype}, shape {a.shape})")
        if not np.isfinite(a).all():
            raise ValueError(f"corrupt adapted artifact: {name} holds non-finite values (NaN or infinity)")
        arrays[name] = a.astype(np.float64)
    artifact_id = raw.get("artifact_id")
    if artifact_id is None:
        return arrays, None
    if artifact_id.shape != () or artifact_id.dtype.kind != "U":
        raise ValueError("corrupt adapted artifact: artifact_id is not a string")
    return arrays, str(artifact_id.item())
