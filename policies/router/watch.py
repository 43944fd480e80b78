"""Telling, cheaply, whether a router artifact directory changed (standard library only).

Every gateway process follows ``router.artifact`` on disk (``router.watch_seconds``, :mod:`gateway.runtime`): it
takes an :class:`ArtifactStamp` of the directory at each check, a few ``stat`` calls and, for an adapted
artifact, a read of the small ``adapted.json`` for its ``artifact_id`` (no numpy, no weights). Two stamps differ
when any file of the artifact was replaced or rewritten (its inode, size or modification time) or when the JSON
names another save; the loader is only called when they do.

A save (:mod:`policies.router.store`) replaces the files one by one, ``adapted.json`` last, so a stamp taken
mid-save may mix two saves: the load that follows reads under the directory's shared lock (after the save), and
the next stamp, differing again, is compared by ``artifact_id`` with what then serves, so nothing is loaded twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from policies.router.loader import ADAPTED_JSON, PRIOR_JSON

__all__ = ["ADAPTED_FILES", "PRIOR_FILES", "ArtifactStamp", "artifact_stamp"]

#: The files of an adapted artifact (``adapted.json`` names it) and of a prior's (``router.json``).
ADAPTED_FILES = (ADAPTED_JSON, "adapted.npz", "prior/router.json", "prior/router.npz")
PRIOR_FILES = (PRIOR_JSON, "router.npz")
#: ``adapted.json`` is a few kilobytes; one far larger is not read for its id (the load then judges it).
_MAX_JSON_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class ArtifactStamp:
    """What identifies one version of the artifact in a directory, without loading it."""

    #: ``adapted``, or ``prior`` (a prior's ``router.json``: ``gateway router train --out``).
    kind: str
    #: ``adapted.json``'s ``artifact_id`` (a fresh one per save, the same in its weights); None for a prior, an
    #: artifact saved before ids existed, or a JSON that does not parse.
    artifact_id: str | None
    #: ``(relative path, inode, size, mtime in ns)`` of each of the artifact's files that exists.
    files: tuple[tuple[str, int, int, int], ...]

    def describe(self) -> str:
        """A short name for logs: the id when there is one, else the JSON file's size and time."""
        if self.artifact_id is not None:
            return f"artifact_id {self.artifact_id}"
        first = self.files[0] if self.files else None
        return f"{self.kind} artifact" + (f" ({first[0]}: {first[2]} bytes, mtime_ns {first[3]})" if first else "")


def _stat(directory: Path, names: tuple[str, ...]) -> tuple[tuple[str, int, int, int], ...]:
    found: list[tuple[str, int, int, int]] = []
    for name in names:
        try:
            st = os.stat(directory / name)
        except OSError:
            continue
        found.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(found)


def _artifact_id(path: Path) -> str | None:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            return None
        meta = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    value = meta.get("artifact_id") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def artifact_stamp(directory: Path) -> ArtifactStamp | None:
    """The stamp of the artifact in ``directory``; None when it holds none (missing, not a directory, or no
    ``adapted.json``/``router.json`` yet: background adaptation may write one later). Never raises."""
    directory = Path(directory)
    adapted = _stat(directory, ADAPTED_FILES)
    if adapted and adapted[0][0] == ADAPTED_JSON:
        return ArtifactStamp("adapted", _artifact_id(directory / ADAPTED_JSON), adapted)
    prior = _stat(directory, PRIOR_FILES)
    if prior and prior[0][0] == PRIOR_JSON:
        return ArtifactStamp("prior", None, prior)
    return None
