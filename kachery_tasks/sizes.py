"""Byte sizes as people write them: ``20MiB``, ``50GiB``, ``1.5GB``, ``4096``."""

from __future__ import annotations

import re
from decimal import Decimal, localcontext

from .errors import InvalidValueError

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "eb": 10**18,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
    "eib": 2**60,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}

MAX_SIZE = 2**63 - 1
"""The largest size accepted (8 EiB): what a file offset or an SQLite integer can hold."""

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Return the number of bytes that ``text`` names.

    Decimal units (kB, MB, GB, TB, PB, EB) are powers of 1000, binary units
    (KiB, MiB, GiB, TiB, PiB, EiB, or K, M, G, T) powers of 1024; a bare
    number is bytes, and a fraction of a byte is dropped. Sizes above
    :data:`MAX_SIZE` are refused, however they are written.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidValueError(
            f"not a size: {_show(text)} (write e.g. 4096, 20MiB, 50GiB or 1.5GB)"
        )
    if isinstance(text, int):
        if text < 0:
            raise InvalidValueError(f"a size cannot be negative: {_show(text)}")
        return _bounded(text, text)
    m = _SIZE_RE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidValueError(
            f"not a size: {_show(text)} (write e.g. 4096, 20MiB, 50GiB or 1.5GB)"
        )
    number = Decimal(m.group(1))  # exact, whatever its length (float() would overflow)
    if number.adjusted() > 30:  # far above MAX_SIZE in any unit; skip the arithmetic
        return _bounded(MAX_SIZE + 1, text)
    with localcontext() as ctx:
        ctx.prec = 60  # enough for every digit of 10**31 * 2**60
        return _bounded(int(number * _UNITS[m.group(2).lower()]), text)


def _bounded(n: int, text: str | int) -> int:
    if n > MAX_SIZE:
        raise InvalidValueError(
            f"size {_show(text)} is too large: the largest is {MAX_SIZE} bytes (just under 8 EiB)"
        )
    return n


def _show(value: object) -> str:
    """``repr(value)``, shortened so an error message stays one readable line."""
    if isinstance(value, int) and not -(10**40) < value < 10**40:
        return f"(a number of {value.bit_length()} bits)"  # str() of a huge int is slow
    shown = repr(value)
    if len(shown) <= 40:
        return shown
    n = len(value) if isinstance(value, str) else len(shown)
    return f"{shown[:30]}... ({n} characters)"


def format_size(n: int) -> str:
    """Format a byte count with a binary unit, e.g. ``20.0 MiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if value < 1024 or unit == "EiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
