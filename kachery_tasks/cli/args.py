"""Arguments of the command modules: how one is declared, and the shared types and flags.

An argument is declared with :func:`arg`, which takes what argparse's
``add_argument`` takes. An argparse ``type=`` function that raises
ArgumentTypeError makes argparse report ``argument --limit: <message>``; the
parser turns that into the one-line usage error of
:class:`kachery_tasks.cli.Parser`. Validating here, while the command line is
parsed, means a command with one bad argument does nothing at all.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..canonical import is_text
from ..errors import KacheryError
from ..sizes import parse_size

MAX_INT = 2**63 - 1
"""The largest count, offset or seq accepted: what SQLite stores in an integer."""


@dataclass(frozen=True)
class Arg:
    """One argument of a command: the names and keywords of its ``add_argument`` call."""

    names: tuple[str, ...]
    options: Mapping[str, Any]


def arg(*names: str, **options: Any) -> Arg:
    """An argument, declared as to ``add_argument`` (``arg("--limit", type=..., help=...)``)."""
    return Arg(names, options)


def json_flag(help: str = "print JSON instead of text") -> Arg:
    """``--json``: a machine-readable output."""
    return arg("--json", action="store_true", help=help)


def progress_flag() -> Arg:
    """``--progress/--no-progress`` (default: a bar on a terminal, for large work)."""
    return arg(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar (default: on a terminal, for large files)",
    )


def text(value: str) -> str:
    """The default argparse type: text that is valid Unicode.

    Python turns command-line bytes that are not UTF-8 into lone surrogates;
    such a string cannot be a URI, key, name or JSON, nor be stored in SQLite
    or printed. File names are the exception: they are declared with
    :func:`file_path`.
    """
    if not is_text(value):
        raise argparse.ArgumentTypeError(f"must be UTF-8 text; {value!r} holds bytes that are not")
    return value


def file_path(value: str) -> str:
    """The argparse type of a file or directory name: any bytes the system allows."""
    return value


def whole_number(minimum: int, maximum: int = MAX_INT) -> Callable[[str], int]:
    """An argparse type for a whole number from ``minimum`` to ``maximum``."""
    bounds = f"{minimum} or more" if maximum == MAX_INT else f"from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:  # not a number, or one of over 4300 digits
            n = None
        if n is None or not minimum <= n <= maximum:
            shown = repr(text) if len(text) <= 30 else f"{text[:20]!r}... ({len(text)} characters)"
            raise argparse.ArgumentTypeError(f"must be a whole number, {bounds}, not {shown}")
        return n

    parse.__name__ = "whole number"
    return parse


def seconds(text: str) -> float:
    """An argparse type for a duration in seconds, above 0 and at most a day."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 and at most "
                                         f"86400 (a day), not {text[:30]!r}")
    return value


def size(text: str) -> int:
    """An argparse type for a byte size such as ``50GiB`` (see :func:`parse_size`)."""
    try:
        return parse_size(text)
    except KacheryError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
