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


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON bytes; raise InvalidValueError if it is not JSON."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as e:  # UnicodeEncodeError (lone surrogates) included
        raise InvalidValueError(f"value is not JSON-serialisable: {e}") from e
