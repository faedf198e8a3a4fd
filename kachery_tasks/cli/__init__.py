"""The ``kachery-tasks`` command.

Each command group lives in its own module and exposes ``register(commands)``,
which adds its subcommands to the top-level parser; a command's function
takes the parsed arguments and returns an exit code. Errors a user can cause
(every :class:`~kachery_tasks.errors.KacheryError`) print one line and exit
with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import KacheryError

# Command modules, in the order their commands appear in --help.
_MODULES = ("files", "transfer", "feeds", "node", "tasks", "broker")

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
  kachery-tasks demo

Run 'kachery-tasks COMMAND --help' for the options and an example of each command.
"""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-written line breaks of descriptions and examples."""


def command(
    commands: argparse._SubParsersAction, name: str, summary: str, example: str, details: str = ""
) -> argparse.ArgumentParser:
    """Add a subcommand whose --help shows ``summary``, ``details`` and an example."""
    description = summary + (f"\n\n{details}" if details else "")
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=Formatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kachery-tasks", description=DESCRIPTION, epilog=EPILOG, formatter_class=Formatter
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks for errors"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        importlib.import_module(f"{__name__}.{name}").register(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kachery-tasks")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kachery-tasks`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("KACHERY_TASKS_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except KacheryError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
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
        print(
            f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback, "
            "and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
