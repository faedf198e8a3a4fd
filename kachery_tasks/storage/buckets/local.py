"""``file://`` buckets: a directory (a network share included) used as a bucket.

An object is a file at ``<root>/<key>``. A create-only write goes to a
file with no name yet (``O_TMPFILE``; where the filesystem has none, a
temporary name in the destination directory), is fsynced (unless the writer
says it need not be: claims and turns), and is then hard-linked to its final
name: ``link`` fails if the name exists, so exactly one writer creates the
object and readers never see a partial one. A file with no name spares
adding and removing a temporary directory entry, two metadata updates of
the disk for each object.

An object's generation is its file's inode and change time: a repair
(:meth:`FileBucket.replace`) renames a new file over the old one, which
gives it a new inode and change time. A directory has no compare-and-swap,
so a repair checks the generation and then renames: two repairs racing
within that instant both write the verified bytes they hold, which is the
same content.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from ...errors import (
    BucketAccessError,
    BucketNotFoundError,
    ContentNotFoundError,
    InvalidValueError,
    StorageError,
)
from ...fsutil import (
    TMP_PREFIX,
    ensure_dir,
    fsync_dir,
    os_error,
    temp_path,
    write_all,
    write_temp,
)
from .base import READ_PIECE, Bucket, ObjectInfo, check_key


class FileBucket(Bucket):
    """A bucket kept in a local or mounted directory."""

    requests_at_once = 1  # a look is a stat or an open: 15 us here, 90 us from 8 threads

    def __init__(self, url: str, create: bool = True) -> None:
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise BucketNotFoundError(
                f"{url}: file:// buckets must be local paths, e.g. file:///mnt/share/kachery"
            )
        path = unquote(parsed.path)
        if not path.startswith("/"):
            raise InvalidValueError(
                f"{url!r} names no directory: a file:// bucket needs an absolute path, "
                "e.g. file:///mnt/lab-share/kachery"
            )
        self.url = url
        self.root = Path(path)
        self._unnamed = _O_TMPFILE != 0  # files with no name, until the system refuses one
        try:
            exists = self.root.is_dir()
        except OSError as e:
            raise self._error(e, "open the bucket") from e
        if not exists:
            if not create:
                raise BucketNotFoundError(f"bucket directory {self.root} does not exist")
            ensure_dir(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _error(self, e: OSError, what: str) -> StorageError:
        """The KacheryError for a failed filesystem call on this bucket."""
        if e.errno in (errno.EACCES, errno.EPERM):
            return BucketAccessError(
                f"cannot {what} in {self.url}: permission denied on {e.filename or self.root}; "
                "check the owner and mode of the bucket directory"
            )
        return os_error(e, f"cannot {what} in {self.url}")

    def put(self, key: str, data: bytes | memoryview, *, flush: bool = True) -> bool:
        return self._link_new(key, data, flush, keep_open=False) is not None

    def create(self, key: str, data: bytes | memoryview, *, flush: bool = True) -> str | None:
        fd = self._link_new(key, data, flush, keep_open=True)
        if fd is None:
            return None
        # Read now, with the temporary name gone (removing it changed the change time, part
        # of the generation); the open file keeps its inode from being reused meanwhile.
        try:
            mine = os.fstat(fd)
            current = self._stat(key)
        except OSError as e:
            raise self._error(e, f"write {key}") from e
        finally:
            os.close(fd)
        if current is None or (current.st_ino, current.st_ctime_ns) != (mine.st_ino,
                                                                        mine.st_ctime_ns):
            return None  # replaced (or removed) at once by another writer
        return _generation(mine)

    def _link_new(self, key: str, data: bytes | memoryview, flush: bool,
                  keep_open: bool) -> int | None:
        """Create ``key`` (unless it exists: None) from a file with no name, or from a
        temporary file whose name is then removed. With ``keep_open``, a descriptor open
        on the new file is returned (the caller closes it); else 0."""
        if self.stat(key) is not None:
            return None
        final = self._path(key)
        ensure_dir(final.parent)
        if self._unnamed:
            try:
                return self._link_unnamed(final, key, data, flush, keep_open)
            except _NoUnnamedFiles:
                self._unnamed = False  # (this filesystem, or this system, has none)
        tmp = temp_path(final.parent)
        fd = None
        try:
            write_temp(tmp, data, mode=0o644, sync=flush)
            if keep_open:
                fd = os.open(tmp, os.O_RDONLY)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return None
            opened, fd = fd, None
            return 0 if opened is None else opened
        except OSError as e:
            raise self._error(e, f"write {key}") from e
        finally:
            if fd is not None:
                os.close(fd)
            _unlink_quietly(tmp)

    def _link_unnamed(self, final: Path, key: str, data: bytes | memoryview, flush: bool,
                      keep_open: bool) -> int | None:
        """:meth:`_link_new` through a file with no name (raises _NoUnnamedFiles where
        there are none, before anything is linked)."""
        try:
            fd = os.open(final.parent, os.O_WRONLY | _O_TMPFILE, 0o644)
        except OSError as e:
            if e.errno in _NO_TMPFILE:
                raise _NoUnnamedFiles from e
            raise self._error(e, f"write {key}") from e
        name = f"/proc/self/fd/{fd}"
        linked = False
        try:
            write_all(fd, data)
            if flush:
                os.fsync(fd)
            try:  # (the source is absolute: the descriptor given only selects linkat)
                os.link(name, final, src_dir_fd=fd)
            except FileExistsError:
                return None
            except FileNotFoundError as e:
                if not os.path.exists(name):  # no /proc on this system
                    raise _NoUnnamedFiles from e
                raise
            linked = True
        except OSError as e:
            raise self._error(e, f"write {key}") from e
        finally:
            if not (linked and keep_open):
                os.close(fd)
        return fd if keep_open else 0

    def replace(self, key: str, data: bytes | memoryview, generation: str) -> bool:
        if not self._is(key, generation):
            return False
        final = self._path(key)
        tmp = temp_path(final.parent)
        try:
            write_temp(tmp, data, mode=0o644)
            if not self._is(key, generation):  # (checked again: the write took a while)
                return False
            os.replace(tmp, final)
            fsync_dir(final.parent)
            return True
        except OSError as e:
            raise self._error(e, f"replace {key}") from e
        finally:
            _unlink_quietly(tmp)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read() if end is None else f.read(max(end - start, 0))
        except FileNotFoundError:
            raise ContentNotFoundError(f"{key} is not in bucket {self.url}") from None
        except OSError as e:
            raise self._error(e, f"read {key}") from e

    def get_into(
        self, key: str, consume: Callable[[memoryview], object], start: int = 0,
        end: int | None = None,
    ) -> int:
        buf = memoryview(bytearray(READ_PIECE))
        got = 0
        try:
            f = open(self._path(key), "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise ContentNotFoundError(f"{key} is not in bucket {self.url}") from None
        except OSError as e:
            raise self._error(e, f"read {key}") from e
        with f:
            while end is None or start + got < end:
                want = READ_PIECE if end is None else min(READ_PIECE, end - start - got)
                try:
                    n = f.readinto(buf[:want]) if got else _read_at(f, buf[:want], start)
                except OSError as e:
                    raise self._error(e, f"read {key}") from e
                if not n:
                    break
                consume(buf[:n])  # its own errors are not read errors
                got += n
        return got

    def _is(self, key: str, generation: str) -> bool:
        current = self.stat(key)
        return current is not None and current.generation == generation

    def stat(self, key: str) -> ObjectInfo | None:
        st = self._stat(key)
        return None if st is None else ObjectInfo(st.st_size, _generation(st))

    def _stat(self, key: str) -> os.stat_result | None:
        try:
            return os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._error(e, f"look up {key}") from e

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = []

        def fail(e: OSError) -> None:
            raise self._error(e, "list objects")

        for dirpath, _dirs, names in os.walk(self.root, onerror=fail):
            rel = os.path.relpath(dirpath, self.root)
            for name in names:
                if name.startswith(TMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self._path(key))
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._error(e, f"delete {key}") from e


_O_TMPFILE = getattr(os, "O_TMPFILE", 0)  # Linux only
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP})
"""What ``open`` says where a filesystem (or an old kernel) has no file with no name."""


class _NoUnnamedFiles(Exception):
    """This bucket's filesystem cannot link a file with no name: use a temporary name."""


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _read_at(f, buf: memoryview, offset: int) -> int:
    f.seek(offset)
    return f.readinto(buf)


def _generation(st: os.stat_result) -> str:
    """An object's generation: its file's inode and change time (see the module docstring)."""
    return f"{st.st_ino}-{st.st_ctime_ns}"
