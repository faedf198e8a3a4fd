"""Commands as data: each command is one :func:`command` entry in its module's ``COMMANDS``.

An entry says everything the command line shows and does: the name, a
one-line summary (the line in the parent's --help), an example, optional
details, the arguments (:func:`~kachery_tasks.cli.args.arg`) and the function
that runs it. A group of commands (``feed``, ``mutable``, ...) is an entry
whose ``actions`` are entries in turn; its action is chosen by the next word
(parsed into ``<group>_command``). :func:`add_commands` turns the entries into
argparse subparsers, so every command's --help has the same layout:
summary, details, options, then ``example:``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .args import Arg

#: What a command runs: the parsed arguments in, the exit status out.
Handler = Callable[[argparse.Namespace], int]


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-written line breaks of descriptions and examples."""


@dataclass(frozen=True)
class Command:
    """One command, or a group of them (see the module docstring)."""

    name: str
    summary: str
    example: str
    details: str = ""
    args: Sequence[Arg] = ()
    run: Handler | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    actions: Sequence[Command] = ()

    def __post_init__(self) -> None:
        if (self.run is None) == (not self.actions):
            raise ValueError(f"command {self.name!r} needs either run= or actions=, not both")


def command(
    name: str, summary: str, example: str, details: str = "", *, args: Sequence[Arg] = (),
    run: Handler | None = None, defaults: Mapping[str, Any] | None = None,
    actions: Sequence[Command] = (),
) -> Command:
    """A command entry; ``defaults`` are extra attributes set on the parsed arguments."""
    return Command(name, summary, example, details, tuple(args), run, dict(defaults or {}),
                   tuple(actions))


def add_commands(subparsers: argparse._SubParsersAction, commands: Sequence[Command]) -> None:
    """Add ``commands`` (and the actions of groups) to ``subparsers``, in order."""
    for c in commands:
        p = subparsers.add_parser(
            c.name,
            help=c.summary,
            description=c.summary + (f"\n\n{c.details}" if c.details else ""),
            epilog=f"example:\n  {c.example}",
            formatter_class=Formatter,
        )
        for a in c.args:
            p.add_argument(*a.names, **a.options)
        if c.actions:
            sub = p.add_subparsers(dest=f"{c.name}_command", metavar="ACTION", required=True)
            add_commands(sub, c.actions)
        else:
            p.set_defaults(func=c.run, **c.defaults)
