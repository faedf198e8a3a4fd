"""Import a kachery or kachery-cloud storage directory into this node's store.

Both keep files at ``<dir>/sha1/ab/cd/ef/<40 hex sha1>``. Each file is
copied into the store in one pass that computes its SHA-256 and SHA-1 (see
:mod:`.hashing`); the SHA-1 must equal the file's name or the file is skipped
and reported. Imported content then answers to its old ``sha1://`` URI
through the SHA-1 alias index.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KacheryError, SourceFileError
from ..progress import progress_bar
from .local import LocalStore

_SHA1_NAME = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class ImportReport:
    """What an import did."""

    imported: int = 0
    already: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def find_kachery_files(root: Path) -> list[Path]:
    """Every file under ``root/sha1`` whose name is a SHA-1."""
    base = root / "sha1"
    try:
        is_dir = base.is_dir()
    except OSError as e:  # a name too long, a loop of links, ...
        raise SourceFileError(f"cannot read {root}: {e.strerror or e}") from None
    if not is_dir:
        raise SourceFileError(
            f"{root} is not a kachery storage directory: it has no sha1/ folder "
            "(give the directory that contains sha1/, e.g. ~/.kachery-cloud)"
        )
    found = []
    for dirpath, _dirs, names in os.walk(base):
        for name in names:
            if _SHA1_NAME.match(name):
                found.append(Path(dirpath) / name)
    return sorted(found)


def import_kachery_dir(
    root: str | os.PathLike[str], store: LocalStore, progress: bool | None = None
) -> ImportReport:
    """Verify and store every file of a kachery storage directory into ``store``."""
    report = ImportReport()
    sizes = {}
    for path in find_kachery_files(Path(root).expanduser()):
        try:
            sizes[path] = path.stat().st_size
        except OSError as e:
            report.failed.append((str(path), str(_unreadable(path, e))))
    threshold = store.node.config.progress_threshold
    with progress_bar(sum(sizes.values()), "import", threshold, progress) as bar:
        for path, size in sizes.items():
            sha1 = path.name
            existing = store.index.by_sha1(sha1)
            if existing is not None and store.has(f"sha256://{existing.sha256}"):
                report.already += 1
            else:
                try:
                    store.store_file(path, label=None, progress=False, expect_sha1=sha1)
                except KacheryError as e:
                    report.failed.append((str(path), str(e)))
                    continue
                report.imported += 1
                report.bytes += size
            if bar:
                bar(size)
    return report


def _unreadable(path: Path, e: OSError) -> SourceFileError:
    """The error for a file of the directory that cannot even be looked at."""
    if path.is_symlink() and isinstance(e, FileNotFoundError):
        return SourceFileError(
            f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; "
            "restore the file it points to or remove the link"
        )
    return SourceFileError(f"cannot read {path}: {e.strerror}")
