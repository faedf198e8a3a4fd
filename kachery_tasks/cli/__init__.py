"""The ``kachery-tasks`` command.

Each command group lives in its own module, which declares its commands as a
table, ``COMMANDS``: one :func:`~kachery_tasks.cli.table.command` entry per
command (name, summary, example, details, arguments, the function that runs
it); :func:`build_parser` adds every module's table to the top-level parser.
A command's function takes the parsed arguments and returns an exit code.
Errors a user can cause
(every :class:`~kachery_tasks.errors.KacheryError`, and a command line that
does not parse) print one line to standard error and exit with status 1;
``--debug`` shows the traceback instead. Unlike argparse's default (status 2
and the usage text), a usage error is one line like every other error,
pointing to ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import InvalidValueError, KacheryError
from .args import text
from .table import Formatter, add_commands, command

# Command modules, in the order their commands appear in --help.
_MODULES = ("files", "transfer", "feeds", "node", "tasks", "channel", "broker")

DESCRIPTION = """\
Share files, signed feeds and cached computations between research labs.

Every node keeps its state in a node directory: $KACHERY_TASKS_DIR, or
~/.kachery-tasks when that is unset.
"""

EPILOG = """\
examples:
  kachery-tasks store raw.dat --label raw.dat
  kachery-tasks load 'sha256://<hex>' --dest copy.dat
  kachery-tasks info 'sha256://<hex>'
  kachery-tasks feed create curation

Run 'kachery-tasks COMMAND --help' for the options and an example of each command.
"""


class UsageError(InvalidValueError):
    """The command line does not parse: unknown command, missing or malformed argument."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one-line KacheryErrors (exit status 1).

    An argument that takes a value and declares no ``type`` gets
    :func:`~kachery_tasks.cli.args.text` (valid Unicode); file names declare
    ``type=file_path``.
    """

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        if "type" not in kwargs and kwargs.get("action", "store") in ("store", "append"):
            kwargs["type"] = text
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())  # one line, whatever argparse wrote
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="kachery-tasks", description=DESCRIPTION, epilog=EPILOG, formatter_class=Formatter
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks for errors"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        add_commands(commands, importlib.import_module(f"{__name__}.{name}").COMMANDS)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kachery-tasks")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kachery-tasks`` console script; returns the exit status."""
    parser = build_parser()
    debug = os.environ.get("KACHERY_TASKS_DEBUG") == "1"
    if isinstance(sys.stdout, io.TextIOWrapper):
        # File names given as bytes that are not UTF-8 print back as those bytes.
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help and --version print, then exit
            return e.code if isinstance(e.code, int) else 0
        debug = debug or args.debug
        if not getattr(args, "func", None):
            parser.print_help()
            return 1
        return int(args.func(args) or 0)
    except KacheryError as e:
        if debug:
            raise
        _print_error(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); that is not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:
        if debug:
            raise
        _print_error(
            f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback, "
            "and please report it)"
        )
        return 1


def _print_error(line: str) -> None:
    """Print an error as one line, even if it quotes text with line breaks (a file name).

    Characters that are not printable (line breaks, other control characters,
    the lone surrogates of bytes that are not UTF-8) are shown escaped.
    """
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line)
    print(shown, file=sys.stderr)


__all__ = ["Formatter", "Parser", "UsageError", "build_parser", "command", "main"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
