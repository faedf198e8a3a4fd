"""The claims a provider left, written down in its node directory.

A provider leaves the claim of a pure call once the result record is
published (:meth:`~.claims.Claim.leave`), and deletes it from the bucket once it
has expired and the provider is idle (:meth:`~.claims.Claims.sweep`). The list
of claims waiting for that lives in memory; this journal keeps a copy on
disk, so that a provider stopped (or killed) before its claims expired
deletes them after its next start instead of leaving them in the bucket for
ever.

The file holds one JSON object per line (task id, function, claim token,
generation, start and expiry). Lines are appended as claims are left and
handed to the system at once (a killed process loses none), without waiting
for the disk: losing the last lines in a power cut only leaves those
claims in the bucket, where they do no harm (they are expired and ignored by
every provider). A line cut short by a crash, or anything else unreadable, is
skipped. The file is rewritten with the claims still waiting when the
provider starts, and whenever the lines of claims deleted since outnumber the
waiting ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO, Any

from ...errors import KacheryError
from ...fsutil import ensure_dir, write_atomic

log = logging.getLogger("kachery_tasks.network.tasks")

FILE_NAME = "claims-left.jsonl"
"""The journal's name in a joined channel's directory (``<node>/channels/<key>/``)."""

REWRITE_SLACK = 1000
"""Lines of claims already deleted the file may hold before it is rewritten."""


class LeftJournal:
    """Append-only lines at ``path``, rewritten on demand (not thread-safe: the caller
    holds its lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0  # lines in the file, as far as this process wrote or read them
        self._file: IO[str] | None = None

    def load(self) -> list[dict[str, Any]]:
        """The entries in the file (objects only; unreadable lines are skipped)."""
        try:
            with open(self.path, encoding="utf-8", errors="replace", newline="") as f:
                text = f.read()  # lines end with "\n" alone: no other character splits one
        except FileNotFoundError:
            return []
        except OSError as e:
            log.warning("cannot read the claims this node left, %s: %s", self.path, e)
            return []
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        entries = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if type(entry) is dict:
                entries.append(entry)
        self.lines = len(lines)
        return entries

    def append(self, entry: dict[str, Any]) -> None:
        """Add one entry (a failure to write is logged: the claim then only stays in the
        bucket, expired, if the provider stops before it is swept)."""
        try:
            if self._file is None:
                ensure_dir(self.path.parent)
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._file.flush()
            self.lines += 1
        except (OSError, KacheryError) as e:
            log.warning("cannot note a left claim in %s: %s", self.path, e)

    def needs_rewrite(self, waiting: int) -> bool:
        """Whether the file holds many more lines than the ``waiting`` claims."""
        return self.lines > 2 * waiting + REWRITE_SLACK or (waiting == 0 and self.lines > 0)

    def rewrite(self, entries: list[dict[str, Any]]) -> None:
        """Replace the file's lines by ``entries`` (the file goes when there are none)."""
        self.close()
        try:
            if entries:
                data = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
                write_atomic(self.path, data.encode("utf-8"))
            else:
                self.path.unlink(missing_ok=True)
            self.lines = len(entries)
        except (OSError, KacheryError) as e:
            log.warning("cannot rewrite the claims this node left, %s: %s", self.path, e)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
