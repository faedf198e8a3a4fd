"""``kachery.File``: a task argument that names a file by its content.

A path says nothing about what a file holds, so paths are refused as task
arguments; ``File(path)`` is encoded as the SHA-256 of the file's content
(tag ``p`` of the task-id encoding) and travels to other nodes by that
content (see :mod:`.wire`).
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mod
from pathlib import Path
from typing import ClassVar

from ..errors import SourceFileError
from . import cache as cache_mod
from . import encoders


class File:
    """A file argument identified by its content, not by its path.

    ``kachery.File(path)`` hashes the file (SHA-256, remembered while its size,
    mtime and inode stay the same), so a task taking it is recomputed when
    the content changes and not when the file moves. The task receives the
    File: use ``.path`` (or pass it to ``open``) to read it.
    """

    _hashes: ClassVar[dict[tuple, str]] = {}

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()
        self._signature()  # fail early for a missing file

    def _signature(self) -> tuple:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise SourceFileError(f"kachery.File: no such file: {self.path}") from None
        except OSError as e:
            raise SourceFileError(f"kachery.File: cannot read {self.path}: {e.strerror}") from None
        if not stat_mod.S_ISREG(st.st_mode):
            raise SourceFileError(f"kachery.File: {self.path} is not a regular file")
        return (str(self.path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the file's current content."""
        sig = self._signature()
        h = File._hashes.get(sig)
        if h is None:
            try:
                with open(self.path, "rb") as f:
                    h = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as e:
                raise SourceFileError(f"kachery.File: cannot read {self.path}: {e}") from e
            File._hashes[sig] = h
        return h

    @property
    def size(self) -> int:
        return os.path.getsize(self.path)

    @property
    def uri(self) -> str:
        """The ``sha256://`` URI of the content (not stored; see :meth:`store`)."""
        from ..uris import format_uri

        return format_uri(self.sha256, label=self.path.name, size=self.size)

    def store(self) -> str:
        """Copy the file into the node's store and return its URI."""
        return cache_mod.current().store.store_file(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"File({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


def _enc_file(v: File, out: list) -> None:
    out.append(b"p" + v.sha256.encode("ascii"))


encoders.register_special(File, _enc_file)
