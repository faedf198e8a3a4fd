"""``file://`` buckets: a directory (a network share included) used as a bucket.

An object is a file at ``<root>/<key>``. A create-only write goes to a
temporary file in the destination directory, is fsynced, and is then
hard-linked to its final name: ``link`` fails if the name exists, so exactly
one writer creates the object and readers never see a partial one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from ...errors import BucketNotFoundError, ContentNotFoundError
from ...fsutil import TMP_PREFIX, ensure_dir, os_error, temp_path, write_temp
from .base import READ_PIECE, Bucket, check_key


class FileBucket(Bucket):
    """A bucket kept in a local or mounted directory."""

    def __init__(self, url: str, create: bool = True) -> None:
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise BucketNotFoundError(
                f"{url}: file:// buckets must be local paths, e.g. file:///mnt/share/kachery"
            )
        self.url = url
        self.root = Path(unquote(parsed.path))
        if not self.root.is_dir():
            if not create:
                raise BucketNotFoundError(f"bucket directory {self.root} does not exist")
            ensure_dir(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | memoryview) -> bool:
        final = self._path(key)
        if final.exists():
            return False
        ensure_dir(final.parent)
        tmp = temp_path(final.parent)
        try:
            write_temp(tmp, data, mode=0o644)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            return True
        except OSError as e:
            raise os_error(e, f"cannot write {key} to {self.url}") from e
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read() if end is None else f.read(max(end - start, 0))
        except FileNotFoundError:
            raise ContentNotFoundError(f"{key} is not in bucket {self.url}") from None
        except OSError as e:
            raise os_error(e, f"cannot read {key} from {self.url}") from e

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
            raise os_error(e, f"cannot read {key} from {self.url}") from e
        with f:
            while end is None or start + got < end:
                want = READ_PIECE if end is None else min(READ_PIECE, end - start - got)
                try:
                    n = f.readinto(buf[:want]) if got else _read_at(f, buf[:want], start)
                except OSError as e:
                    raise os_error(e, f"cannot read {key} from {self.url}") from e
                if not n:
                    break
                consume(buf[:n])  # its own errors are not read errors
                got += n
        return got

    def size(self, key: str) -> int | None:
        try:
            return os.path.getsize(self._path(key))
        except FileNotFoundError:
            return None

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = []
        for dirpath, _dirs, names in os.walk(self.root):
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


def _read_at(f, buf: memoryview, offset: int) -> int:
    f.seek(offset)
    return f.readinto(buf)
