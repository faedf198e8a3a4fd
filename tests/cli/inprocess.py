"""Run the command line in this process: ``main(argv)`` with its own standard streams.

Much faster than a subprocess per call, which matters for generated tests.
"""

from __future__ import annotations

import io
import sys

from kachery_tasks.cli import main


class Result:
    def __init__(self, status: int, stdout: bytes, stderr: str) -> None:
        self.status, self.stdout, self.stderr = status, stdout, stderr


def run_main(*argv: str, stdin: bytes = b"") -> Result:
    """Run ``main(argv)`` with standard streams like a real process's (UTF-8, strict stdout)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace",
                           write_through=True)
    inp = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = inp, out, err
    try:
        status = main(list(argv))
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        out.flush()
        err.flush()
    return Result(status, out.buffer.getvalue(), err.buffer.getvalue().decode())


def assert_clean(r: Result) -> None:
    """The contract: status 0 or 1, at most one line on stderr, no traceback."""
    assert r.status in (0, 1), r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 1, r.stderr
    if r.status == 1 and r.stderr:
        assert r.stderr.startswith("error: "), r.stderr
