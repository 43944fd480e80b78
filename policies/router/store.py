"""Writing a router artifact directory so that no reader ever sees a half-written or mixed one (standard library).

An artifact is a few files that belong together (``adapted.json`` + ``adapted.npz`` + ``prior/``, or a prior's
``router.json`` + ``router.npz``). :func:`write_atomically` writes them all into a fresh temporary directory
inside the target (unique per writer: ``tempfile.mkdtemp``, on the target's file system), then, holding the
target directory's exclusive lock, moves each into place with :func:`os.replace` (atomic per file), the file a
reader opens first (the JSON that names the artifact) last. Concurrent writers into one directory take turns
(the last one's files all win); readers take the shared lock (:func:`directory_lock`), so a reload never reads
one save's JSON beside another's weights. Files of the directory that are not the artifact's are left alone.

The lock is ``flock`` on the directory's own descriptor: no lock file is left behind, and it is released when
the process dies. Where it is not available (another OS, a file system that refuses it) the writes are still
atomic per file, and the adapted artifact's loader refuses a JSON and weights from two saves (their
``artifact_id``s differ).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

if sys.platform != "win32":
    import fcntl

__all__ = ["TMP_PREFIX", "directory_lock", "install", "write_atomically"]

#: Name prefix of the temporary directories (hidden; removed once the files are in place).
TMP_PREFIX = ".tmp-artifact-"


@contextlib.contextmanager
def directory_lock(directory: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold ``directory``'s advisory lock (exclusive for writers, ``shared`` for readers) for the block.

    Best effort: a directory that cannot be opened or locked (missing, another OS, a file system without
    ``flock``) is used without the lock."""
    if sys.platform == "win32":
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def install(staged: Path, target: Path, files: Sequence[str]) -> None:
    """Move ``files`` (paths relative to ``staged``) into ``target`` in this order, each with :func:`os.replace`
    (the caller holds ``target``'s lock). Their parent directories are created as needed."""
    for name in files:
        dst = target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / name, dst)


def write_atomically(target: Path, files: Sequence[str], write: Callable[[Path], None]) -> Path:
    """Write an artifact of ``files`` (relative paths, in the order they go into place: the one readers open
    first, last) into ``target``: ``write(tmp)`` creates them in a fresh temporary directory inside ``target``,
    then they replace the previous ones under ``target``'s exclusive lock. The temporary directory is removed
    whatever happens; other files in ``target`` are left alone. Returns ``target``.

    Raises:
        OSError: ``target`` cannot be written. Whatever ``write`` raises (nothing is then replaced).
    """
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=target))
    try:
        write(tmp)
        with directory_lock(target):
            install(tmp, target, files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
