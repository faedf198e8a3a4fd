"""Partial downloads in a store's ``incoming/`` directory, and who owns them.

A large file being downloaded lives in three files named after its id::

    partial-<hex>        the file being filled, chunk by chunk
    partial-<hex>.done   which chunks are in it (see :mod:`.fetch`)
    partial-<hex>.lock   held (flock) by the process downloading it

Only the holder of the lock writes the other two, so two downloads of one
file on one node never write the same partial file: the second waits, then
finds the file in the store. The lock dies with its holder, so a partial
whose lock nobody holds is abandoned; it is kept a day (a later download
resumes it) and then ``gc`` removes it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import locks

PREFIX = "partial-"
ABANDONED_AGE = 24 * 3600.0  # an abandoned partial is kept this long for a resume


def partial_path(incoming: Path, sha256: str) -> Path:
    return incoming / f"{PREFIX}{sha256}"


def done_path(incoming: Path, sha256: str) -> Path:
    return incoming / f"{PREFIX}{sha256}.done"


def lock_path(incoming: Path, sha256: str) -> Path:
    return incoming / f"{PREFIX}{sha256}.lock"


def discard(incoming: Path, sha256: str) -> None:
    """Remove a partial download and its record (its lock stays with its holder)."""
    for path in (partial_path(incoming, sha256), done_path(incoming, sha256)):
        path.unlink(missing_ok=True)


def remove_abandoned(incoming: Path, max_age: float = ABANDONED_AGE) -> tuple[int, int]:
    """Remove partial downloads nobody is writing and nobody touched for ``max_age`` seconds.

    Returns (partial files removed, their bytes). Lock files nobody holds go
    too (they hold no data).
    """
    ids = set()
    for entry in os.scandir(incoming):
        if entry.name.startswith(PREFIX):
            ids.add(entry.name[len(PREFIX):].split(".", 1)[0])
    cutoff = time.time() - max_age
    removed = freed = 0
    for sha256 in sorted(ids):
        lock = lock_path(incoming, sha256)
        with locks.hold(lock, blocking=False) as held:
            if not held:
                continue  # its download is running
            changed, size = _last_change_and_size(incoming, sha256)
            if changed < cutoff:
                discard(incoming, sha256)
                if size is not None:
                    removed += 1
                    freed += size
            locks.remove_held(lock)  # gc's lock file; a resumed download makes its own
    return removed, freed


def _last_change_and_size(incoming: Path, sha256: str) -> tuple[float, int | None]:
    """When a partial download last changed (0 without files) and the disk its data uses."""
    changed, size = 0.0, None
    for path in (partial_path(incoming, sha256), done_path(incoming, sha256)):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        changed = max(changed, st.st_mtime)
        if path.name.endswith(sha256):
            size = st.st_blocks * 512  # it may be sparse: what removing it frees
    return changed, size
