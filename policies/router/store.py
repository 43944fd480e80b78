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

**Work directories** (a save's ``.tmp-artifact-*``, a background fit's ``.staging-*``: :func:`work_directory`)
are removed when their block ends, but a process killed meanwhile leaves its own behind. Each is therefore held,
while in use, by an ``flock`` on its ``.owner`` file, which the kernel releases when its process dies, and every
save (and the gateway's start, and background adaptation's) first removes the **stale** ones beside it
(:func:`remove_stale`): those whose owner lock it can take (no live process, in this one or another, holds it)
and that have not changed for :data:`STALE_AFTER_S` (one created a moment ago may not be locked yet). A directory
without an owner file (an older version's, or one whose process died before creating it), or on a file system
without ``flock``, is stale only after :data:`UNOWNED_STALE_AFTER_S`, longer than any fit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

if sys.platform != "win32":
    import fcntl

__all__ = [
    "STAGING_PREFIX",
    "STALE_AFTER_S",
    "TMP_PREFIX",
    "UNOWNED_STALE_AFTER_S",
    "directory_lock",
    "install",
    "remove_stale",
    "work_directory",
    "write_atomically",
]

log = logging.getLogger("policies.router")

#: Name prefix of the temporary directories (hidden; removed once the files are in place).
TMP_PREFIX = ".tmp-artifact-"
#: Name prefix of background adaptation's staging directories inside ``router.artifact`` (removed after each try).
STAGING_PREFIX = ".staging-"
_WORK_PREFIXES = (TMP_PREFIX, STAGING_PREFIX)
#: The file inside a work directory whose ``flock`` its process holds while it uses the directory.
OWNER = ".owner"
#: A work directory whose owner lock is free is stale once unchanged this long (seconds): it covers the moment
#: between creating a directory and locking it.
STALE_AFTER_S = 60.0
#: A work directory without an owner lock to test is stale once unchanged this long (seconds): longer than a fit.
UNOWNED_STALE_AFTER_S = 3600.0


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


def _own(directory: Path) -> int | None:
    """Create ``directory``'s owner file and hold its lock (the descriptor; None where ``flock`` is missing)."""
    fd = os.open(directory / OWNER, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    if sys.platform == "win32":
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without flock: the directory is then judged by its age alone
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def work_directory(parent: Path, prefix: str) -> Iterator[Path]:
    """A fresh hidden directory named ``prefix...`` inside ``parent`` (created), held by this process until the
    block ends, then removed. Stale work directories in ``parent`` (:func:`remove_stale`) are removed first."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    fd: int | None = None
    try:
        fd = _own(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # still holding the lock: nobody else removes it meanwhile
        if fd is not None:
            os.close(fd)


def remove_stale(directory: Path, *, now: float | None = None) -> list[Path]:
    """Remove the work directories in ``directory`` that no live process holds (see the module docstring); the
    ones removed. Never raises: a directory that cannot be read or written is left as it is (logged)."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    removed: list[Path] = []
    for entry in entries:
        if not entry.name.startswith(_WORK_PREFIXES):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        path = Path(entry.path)
        if age >= STALE_AFTER_S and _remove_if_abandoned(path, age):
            removed.append(path)
    if removed:
        log.info("removed %d stale work directories in %s: %s", len(removed), directory, [p.name for p in removed])
    return removed


def _remove_if_abandoned(path: Path, age: float) -> bool:
    """Remove ``path`` if no process holds its owner lock (or, with none to test, it is old enough)."""
    try:
        fd = os.open(path / OWNER, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return age >= UNOWNED_STALE_AFTER_S and _rmtree(path)
    except OSError:
        return False
    try:
        if sys.platform == "win32":
            return age >= UNOWNED_STALE_AFTER_S and _rmtree(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live process (this one or another) is using it
        except OSError:
            if age < UNOWNED_STALE_AFTER_S:  # no flock here: its age alone
                return False
        return _rmtree(path)  # holding its lock: a second cleaner skips it meanwhile
    finally:
        os.close(fd)


def _rmtree(path: Path) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("could not remove the stale work directory %s (permissions?)", path)
        return False
    return True


def write_atomically(target: Path, files: Sequence[str], write: Callable[[Path], None]) -> Path:
    """Write an artifact of ``files`` (relative paths, in the order they go into place: the one readers open
    first, last) into ``target``: ``write(tmp)`` creates them in a fresh temporary directory inside ``target``,
    then they replace the previous ones under ``target``'s exclusive lock. The temporary directory is removed
    whatever happens, and stale ones left by killed writers first; other files in ``target`` are left alone.
    Returns ``target``.

    Raises:
        OSError: ``target`` cannot be written. Whatever ``write`` raises (nothing is then replaced).
    """
    with work_directory(target, TMP_PREFIX) as tmp:
        write(tmp)
        with directory_lock(target):
            install(tmp, target, files)
    return target
