"""Canonical JSON: one byte string per value, so hashes and signatures agree.

Object keys are sorted, there is no insignificant whitespace, text is UTF-8
(not ``\\u`` escaped), and NaN or infinite floats are refused because JSON has
no spelling for them. Every format that is hashed or signed (manifests, feed
messages, published result records, zarr indexes) is encoded this way.

Values may nest at most :data:`MAX_DEPTH` arrays and objects deep, when
encoded and when parsed with :func:`parse_json`. The limit is fixed (not
Python's recursion limit, which depends on how deep the caller already is),
so a value is accepted or refused the same way everywhere.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from .errors import InvalidValueError

MAX_DEPTH = 100
"""Most arrays and objects a JSON value may nest (``[[1]]`` nests 2)."""

# Built once: json.dumps with keyword arguments builds a new encoder per call,
# a measurable cost where every feed append encodes a body.
_ENCODE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def canonical_json(value: Any, what: str = "value") -> bytes:
    """Encode ``value`` as canonical JSON bytes; raise InvalidValueError if it is not JSON.

    ``what`` names the value in the error ("message body", say).
    """
    try:
        data = _ENCODE(value).encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate in a string
        raise InvalidValueError(f"{what} is not valid Unicode text: {e}") from e
    except RecursionError as e:
        raise _too_deep(what) from e
    except (TypeError, ValueError) as e:
        raise InvalidValueError(f"{what} is not JSON-serialisable: {e}") from e
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH:  # else it cannot be too deep
        check_depth(data, what)
    return data


def parse_json(text: str | bytes, what: str = "value") -> Any:
    """Parse JSON text, refusing what JSON cannot say and what nests too deeply.

    Unlike ``json.loads`` this refuses ``NaN``, ``Infinity`` and numbers too
    large for a float (they would not encode back), and text nested deeper
    than :data:`MAX_DEPTH` (``json.loads`` would recurse until RecursionError).
    Every refusal is an InvalidValueError that names ``what``.
    """
    check_depth(text, what)
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as e:  # the caller was already deep in the stack
        raise _too_deep(what) from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, the two refusals below
        raise InvalidValueError(f"{what} is not JSON: {e}") from e


def check_depth(text: str | bytes, what: str = "value") -> None:
    """Raise InvalidValueError if JSON ``text`` nests arrays and objects over MAX_DEPTH deep.

    Brackets inside strings do not count. For text that is not JSON the
    depth is counted as a parser would see it up to the first mistake, or
    more, never less; so text that passes can be parsed without deep recursion.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return  # the common case, at the cost of two scans in C
    brackets = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    left = brackets
    for _ in range(MAX_DEPTH):  # well-nested text loses a level per round (in C)
        inner = _PAIR.sub(b"", left)  # one scan: only pairs innermost before it
        if not inner:
            return
        if len(inner) == len(left):
            break  # mismatched brackets: count them one by one
        left = inner
    if max(accumulate(_STEP[b] for b in brackets), default=0) > MAX_DEPTH:
        raise _too_deep(what)


_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def is_text(s: str) -> bool:
    """Whether ``s`` is valid Unicode, so it can be encoded, stored in SQLite and printed.

    Python turns bytes that are not UTF-8 (in argv, in file names) into lone
    surrogates; a string holding one is not text.
    """
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(s: str, what: str) -> str:
    """Return ``s``, or raise InvalidValueError naming ``what`` if it is not valid Unicode."""
    if not is_text(s):
        raise InvalidValueError(f"{what} must be valid Unicode text, not {s!r}")
    return s


def _too_deep(what: str) -> InvalidValueError:
    return InvalidValueError(
        f"{what} nests arrays or objects more than {MAX_DEPTH} levels deep; flatten it"
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is too large for a 64-bit float")
    return value
