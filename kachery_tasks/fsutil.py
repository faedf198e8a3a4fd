"""Filesystem primitives with the two guarantees the node directory relies on.

* **Atomic publication**: content is written to a temporary file in the
  destination's filesystem, flushed with fsync, then renamed into place, and the
  directory entry is fsynced. A crash leaves either the old state or the new
  one, never a partial file under a final name.
* **Group-shared directories**: a lab may share one node directory between
  several users (the directory is setgid and group-writable). Directories and
  files created inside such a tree are made group-writable whatever the
  creating user's umask, so one member never blocks another's writes.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import stat
import sys
from pathlib import Path
from typing import Any

from .errors import StorageError, StorageFullError, StoragePermissionError

TMP_PREFIX = ".tmp-"


def is_group_shared(path: Path) -> bool:
    """True when ``path`` is a setgid directory: the mark of a lab-shared tree."""
    try:
        return bool(os.stat(path).st_mode & stat.S_ISGID)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise os_error(e, f"cannot use {path}") from e


def ensure_dir(path: Path, shared: bool = False) -> Path:
    """Create ``path`` and its parents; in a shared tree make them g+rwxs."""
    try:
        if shared:
            missing = []
            p = path
            while not p.exists():
                missing.append(p)
                p = p.parent
            for d in reversed(missing):
                try:
                    d.mkdir()
                except FileExistsError:
                    continue
                os.chmod(d, 0o2775)
        else:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, f"cannot create directory {path}") from e
    return path


def share_file(path: Path, shared: bool) -> None:
    """Make a file group-writable in a shared tree (databases, config)."""
    if shared:
        try:
            mode = os.stat(path).st_mode
            if mode & 0o060 != 0o060:
                os.chmod(path, (mode | 0o060) & 0o7777)
        except OSError:
            pass  # owned by another member, who made it shared already


def temp_path(directory: Path) -> Path:
    """A fresh temporary file name inside ``directory`` (same filesystem)."""
    return directory / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry (after a rename) to disk."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview, offset: int | None = None) -> None:
    """Write all of ``data`` to ``fd`` (at ``offset`` if given, else at its position).

    A write may take fewer bytes than offered; this loops until all are written.
    """
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def write_temp(
    tmp: Path, data: bytes | bytearray | memoryview, mode: int = 0o600, sync: bool = True
) -> None:
    """Create ``tmp`` (which must not exist) holding ``data``, flushed to disk.

    With ``sync=False`` the flush is the caller's (who batches many files).
    Raises OSError; the caller decides what the failure means and removes ``tmp``.
    """
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644, shared: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or none of it."""
    ensure_dir(path.parent, shared)
    tmp = temp_path(path.parent)
    try:
        write_temp(tmp, data)
        os.chmod(tmp, (mode | 0o060) if shared else mode)
        os.replace(tmp, path)
    except OSError as e:
        remove_quietly(tmp)
        raise os_error(e, f"cannot write {path}") from e
    fsync_dir(path.parent)


def remove_quietly(path: Path) -> None:
    """Remove a temporary file after a failure, whatever prevents it (it may not exist, or
    its very name may be what failed): the first error is the one to report."""
    try:
        os.unlink(path)
    except OSError:
        pass


def os_error(e: OSError, what: str) -> StorageError:
    """Translate an OSError into the KacheryError a user can act on."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageFullError(
            f"{what}: no space left on the device ({e.strerror}); free some space "
            "or run 'kachery-tasks gc --max-size SIZE'"
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        target = e.filename or what
        return StoragePermissionError(
            f"{what}: permission denied on {target}; check the owner and mode of "
            "that path (a node directory shared by a group should be setgid and "
            "group-writable: chmod -R g+rwX,g+s DIR)"
        )
    return StorageError(f"{what}: {e.strerror or e}")


def fsync_path(path: Path | str) -> None:
    """Flush the file at ``path`` (written earlier, through another descriptor) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def can_start_writeback() -> bool:
    """Whether :func:`start_writeback` does anything here (Linux)."""
    return _sync_file_range() is not None


def start_writeback(fd: int, offset: int = 0, size: int = 0) -> None:
    """Have the kernel start writing a file's dirty pages to disk now (a hint, Linux only).

    ``size`` 0 means to the end of the file. A later fsync then finds little
    left to write: the disk works while the program goes on computing.
    A failure only loses the head start.
    """
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, size, _SYNC_FILE_RANGE_WRITE)


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Any:
    """libc's sync_file_range (Python's os module lacks it), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn
