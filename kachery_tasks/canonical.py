"""Canonical JSON: one byte string per value, so hashes and signatures agree.

Object keys are sorted, there is no insignificant whitespace, text is UTF-8
(not ``\\u`` escaped), and NaN or infinite floats are refused because JSON has
no spelling for them. Every format that is hashed or signed (manifests, feed
messages, result records, channel documents) is encoded this way.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidValueError

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
        return _ENCODE(value).encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate in a string
        raise InvalidValueError(f"{what} is not valid Unicode text: {e}") from e
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidValueError(f"{what} is not JSON-serialisable: {e}") from e
