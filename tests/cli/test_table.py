"""Commands declared as table entries (kachery_tasks/cli/table.py) become the parser."""

from __future__ import annotations

import argparse
import importlib

import pytest

from kachery_tasks.cli import _MODULES, Parser, UsageError, build_parser
from kachery_tasks.cli.args import arg, whole_number
from kachery_tasks.cli.table import Command, add_commands, command


def _run(args: argparse.Namespace) -> int:
    return 0


def _parser(*commands: Command) -> Parser:
    parser = Parser(prog="tool")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"), commands)
    return parser


def test_an_entry_makes_a_command_with_its_help_arguments_and_handler():
    parser = _parser(command(
        "count", "Count things.", "tool count --limit 3 a b", "Counts every thing\nit is given.",
        args=[arg("things", nargs="+"), arg("--limit", type=whole_number(1), default=10,
                                            help="at most this many")],
        run=_run, defaults={"mode": "fast"},
    ))
    args = parser.parse_args(["count", "a", "b", "--limit", "3"])
    assert (args.things, args.limit, args.mode, args.func) == (["a", "b"], 3, "fast", _run)
    sub = next(a for a in parser._actions if a.dest == "command").choices["count"]
    help_text = sub.format_help()
    assert help_text.startswith("usage: tool count [-h] [--limit LIMIT] things [things ...]\n")
    assert "\nCount things.\n\nCounts every thing\nit is given.\n" in help_text
    assert help_text.endswith("example:\n  tool count --limit 3 a b\n")
    assert "Count things." in parser.format_help()  # the summary is the line in the list
    with pytest.raises(UsageError, match="--limit: must be a whole number"):
        parser.parse_args(["count", "a", "--limit", "0"])


def test_a_group_chooses_one_of_its_actions():
    parser = _parser(command(
        "box", "Work with boxes.", "tool box open", actions=[
            command("open", "Open a box.", "tool box open", run=_run),
            command("shut", "Shut a box.", "tool box shut --hard",
                    args=[arg("--hard", action="store_true")], run=_run),
        ],
    ))
    args = parser.parse_args(["box", "shut", "--hard"])
    assert (args.box_command, args.hard, args.func) == ("shut", True, _run)
    with pytest.raises(UsageError, match="required: ACTION"):
        parser.parse_args(["box"])


@pytest.mark.parametrize(
    "extra", [{}, {"run": _run, "actions": [command("x", "X.", "x", run=_run)]}]
)
def test_an_entry_runs_a_function_or_holds_actions_not_both(extra):
    with pytest.raises(ValueError, match="either run= or actions="):
        command("odd", "Odd.", "tool odd", **extra)


def test_every_command_of_the_tool_comes_from_a_module_table():
    tables = [importlib.import_module(f"kachery_tasks.cli.{m}").COMMANDS for m in _MODULES]
    names = [c.name for table in tables for c in table]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == names
    assert all(isinstance(c, Command) for table in tables for c in table)
