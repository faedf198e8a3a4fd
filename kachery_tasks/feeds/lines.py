"""Writing signed messages as JSON lines: one message's signed bytes per line.

The format is described in :mod:`.transfer`; this module only writes it, to a
binary file object or, atomically, to a path (readers never see a partial
export).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from ..fsutil import fsync_dir, os_error, remove_quietly, temp_path


def write_lines(lines: Iterable[bytes], out: str | os.PathLike[str] | IO[bytes]) -> int:
    """Write ``lines`` (each ending in ``\\n``) to ``out``; return how many."""
    if not isinstance(out, (str, os.PathLike)):
        return _write(lines, out)
    path = Path(out)
    tmp = temp_path(path.absolute().parent)
    try:
        with open(tmp, "wb") as f:
            n = _write(lines, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.absolute().parent)  # the new name survives a crash too
    except OSError as e:
        remove_quietly(tmp)
        raise os_error(e, f"cannot write {path}") from e
    except BaseException:
        remove_quietly(tmp)
        raise
    return n


def _write(lines: Iterable[bytes], f: IO[bytes]) -> int:
    n = 0
    for line in lines:
        f.write(line)
        f.write(b"\n")
        n += 1
    return n
