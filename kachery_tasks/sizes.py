"""Byte sizes as people write them: ``20MiB``, ``50GiB``, ``1.5GB``, ``4096``."""

from __future__ import annotations

import re

from .errors import InvalidValueError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Return the number of bytes that ``text`` names.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary units (KiB,
    MiB, GiB, TiB, or K, M, G, T) powers of 1024; a bare number is bytes.
    """
    if isinstance(text, bool):
        raise InvalidValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise InvalidValueError(f"a size cannot be negative: {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidValueError(
            f"not a size: {text!r} (write e.g. 4096, 20MiB, 50GiB or 1.5GB)"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: int) -> str:
    """Format a byte count with a binary unit, e.g. ``20.0 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
