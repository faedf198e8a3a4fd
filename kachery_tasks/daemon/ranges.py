"""HTTP ``Range`` headers (RFC 9110, section 14): one byte range per request.

:func:`parse_range` turns a header and the content's size into the half-open
span ``[start, end)`` to send, None for the whole content, or raises
:class:`RangeNotSatisfiable` (answered 416 with ``Content-Range: bytes */size``).

Supported: ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` (the last n bytes). A
header with several ranges is refused with 416 rather than answered as
multipart, and so is one that does not parse: a client asking for a range
wants those bytes, and sending the whole file instead would surprise it.
"""

from __future__ import annotations

import re

from ..errors import InvalidValueError

_SPEC = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(InvalidValueError):
    """The Range header cannot be served for content of this size."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The span ``(start, end)`` (end exclusive) that ``header`` asks for; None: everything."""
    if header is None:
        return None
    text = header.strip()
    if "," in text:
        raise RangeNotSatisfiable(
            "several byte ranges in one request are not served: ask for one range at a time",
            size)
    m = _SPEC.fullmatch(text)
    if m is None or m.group(1) == m.group(2) == "":
        raise RangeNotSatisfiable(
            f"Range {text[:80]!r} is not of the form bytes=START-END, bytes=START- or "
            "bytes=-SUFFIX", size)
    first, last = m.group(1), m.group(2)
    if first == "":  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"Range {text[:80]!r} asks for no bytes (the content is "
                                      f"{size} bytes)", size)
        return max(0, size - n), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or (last != "" and int(last) < start):
        raise RangeNotSatisfiable(
            f"Range {text[:80]!r} does not overlap the content, which is {size} bytes", size)
    return start, end
