"""Loading a router artifact directory: a prior (the shipped one or one trained with ``gateway router train``),
read with the standard library only, or an adapted router (:mod:`policies.router.adapt`), which needs numpy.

numpy is imported only when an adapted artifact is loaded: a gateway serving the shipped prior does not hold it
(about 11 MiB of the server's memory).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from policies.router.model import QualityRouter
from policies.router.store import directory_lock

if TYPE_CHECKING:
    from policies.router.adapt import AdaptedRouter, Embed

__all__ = ["ADAPTED_JSON", "ArtifactState", "artifact_state", "is_adapted", "load_artifact"]

#: The file that marks an adapted artifact directory (a prior's is ``router.json``).
ADAPTED_JSON = "adapted.json"
#: The file that marks a prior's artifact directory (``gateway router train --out``).
PRIOR_JSON = "router.json"
#: What a configured artifact path holds, before anything is loaded (:func:`artifact_state`).
ArtifactState = Literal["artifact", "empty", "missing", "not_a_directory", "unreadable"]


def is_adapted(directory: Path) -> bool:
    """Whether ``directory`` holds an adapted artifact (else a plain prior artifact, or nothing)."""
    return (Path(directory) / ADAPTED_JSON).is_file()


def artifact_state(directory: Path) -> ArtifactState:
    """What ``directory`` holds, without loading it: ``artifact`` (the JSON that names an adapted or a prior
    artifact is there: it still has to load), ``empty`` (a directory without one: nothing saved yet, or only
    ``labels.jsonl`` and work directories), ``missing`` (no such path), ``not_a_directory`` or ``unreadable``
    (this process may not look inside)."""
    directory = Path(directory)
    try:
        if not directory.exists():
            return "missing"
        if not directory.is_dir():
            return "not_a_directory"
        if (directory / ADAPTED_JSON).is_file() or (directory / PRIOR_JSON).is_file():
            return "artifact"
    except OSError:  # a permission error: Path.exists/is_file raise it rather than answer False
        return "unreadable"
    return "empty"


def load_artifact(
    directory: Path | None, *, encode: Callable[[str], list[int]], embed: Embed | None = None
) -> QualityRouter | AdaptedRouter:
    """Load a router artifact directory: an adapted one (``adapted.json``) or a prior (``router.json``;
    ``None``: the shipped prior). ``encode``: text -> ``cl100k_base`` ids (the prior's features); ``embed``:
    attached to an adapted router for calls that bring no vector.

    The directory is read under its shared lock (:mod:`policies.router.store`): never while a save is moving a
    new artifact's files into place. Every numeric array is checked (finite, of the recorded lengths).

    Raises:
        OSError: missing files. ValueError: an unreadable, incompatible or corrupt artifact (what is wrong).
    """
    if directory is None:
        return QualityRouter.load(None, encode=encode)
    directory = Path(directory)
    try:
        with directory_lock(directory, shared=True):
            if not is_adapted(directory):
                return QualityRouter.load(directory, encode=encode)
            from policies.router.adapt import load_adapted  # numpy: only for an adapted artifact

            return load_adapted(directory, encode=encode, embed=embed)
    except (TypeError, AttributeError, IndexError) as exc:  # a layout the checks did not foresee: still a refusal
        raise ValueError(f"corrupt router artifact in {directory}: {exc!r}") from exc
