"""The command line's contract for bad input, checked in-process by main(argv).

Whatever the arguments, ``kachery-tasks`` exits with status 0 or 1 and prints
at most one line to standard error: never a traceback, never "internal error".
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kachery_tasks.cli import build_parser
from kachery_tasks.cli.args import file_path
from tests.cli.inprocess import assert_clean, run_main

# ------------------------------------------------------------ the generator

def _leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) for every runnable command, found in the real parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _leaf_commands(sub, (*path, name))


# Options that would wait forever, print progress bars or change how errors are shown.
_SKIPPED_OPTIONS = {"--follow", "-f", "--help", "-h", "--debug", "--progress"}
# Commands that serve until stopped; their bad input is tested in their own tests.
_SERVERS = {("broker", "start"), ("node", "start")}
_COMMANDS = [c for c in _leaf_commands(build_parser()) if c[0] not in _SERVERS]

HEX = st.text(alphabet="0123456789abcdef", min_size=0, max_size=70)
# Relative names only (the test runs as whatever user, in its own directory).
NAMES = st.sampled_from(
    ["bin.dat", "lines.jsonl", "deep.jsonl", "nan.jsonl", "dir", "missing", "new.out", ".",
     os.fsdecode(b"caf\xe9.dat")]
)
_SAFE_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20
) | st.binary(max_size=20).filter(lambda b: b"\x00" not in b).map(os.fsdecode)
TEXT = _SAFE_TEXT.filter(lambda t: not t.startswith(("/", "~", "-")) and ".." not in t)
NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.sampled_from(["0", "-1", "1e26", "1e400", "nan", "inf", "0x10", "1.5", "", " 3 "]),
)
SIZES = st.one_of(
    NUMBERS,
    st.from_regex(r"\A[0-9]{1,420}(\.[0-9]{0,5})?\s?(b|kb|MB|GiB|TiB|EiB|k|parsecs)?\Z"),
)
URIS = st.one_of(
    HEX.map(lambda h: f"sha256://{h}"),
    HEX.map(lambda h: f"sha1://{h}"),
    st.tuples(HEX, TEXT).map(lambda t: f"sha256://{t[0]}?label={t[1]}&size=-1"),
    st.tuples(HEX, TEXT).map(lambda t: f"feed://{t[0]}/{t[1]}"),
    st.sampled_from(["sha256:", "feed://", "file://{cwd}/bucket", "file://{cwd}/missing/b",
                     "file://{cwd}/bin.dat", "http://example.invalid/x"]),
    st.sampled_from(["{stored}", "{feed}", "{feed}/main", "{feed}/other"]),  # ones that exist
    st.sampled_from(["sha256:" + "0" * 64, "sha256:" + "0" * 3]),
)
JSON_TEXTS = st.one_of(
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3),
                 max_leaves=6).map(lambda v: json.dumps(v, allow_nan=True)),
    st.integers(min_value=1, max_value=3000).map(lambda n: "[" * n + "]" * (n % 2) * n),
    st.sampled_from(["NaN", "-Infinity", "1e400", "[1, NaN]", "{", '"\\ud800"', "{'a': 1}"]),
)
VALUES = st.one_of(NAMES, TEXT, NUMBERS, SIZES, URIS, JSON_TEXTS)
LONG_NAME = "n" * 300  # longer than a file name may be
PATHS = st.one_of(NAMES, TEXT, st.just(LONG_NAME), st.just(LONG_NAME + "/x"))

_ELSEWHERE: dict[tuple[str, ...], set[str]] = {}  # inputs left out for a command, if any


@st.composite
def command_lines(draw) -> list[str]:
    words, parser = draw(st.sampled_from(_COMMANDS))
    argv = list(words)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        values = PATHS if action.type is file_path else VALUES
        if not action.option_strings:  # a positional: usually given, sometimes not
            n = {"?": (0, 1), "+": (1, 3), None: (1, 1)}.get(action.nargs, (0, 2))
            count = draw(st.integers(*n)) if draw(st.integers(0, 9)) else 0
            argv += [draw(values) for _ in range(count)]
            continue
        options = [o for o in action.option_strings if o not in _SKIPPED_OPTIONS]
        if not options or not draw(st.booleans()):
            continue
        argv.append(draw(st.sampled_from(options)))
        if action.nargs != 0:
            argv.append(draw(values))
    if not draw(st.integers(0, 9)):
        argv.insert(draw(st.integers(0, len(argv))), draw(VALUES))  # a stray word
    assume(not _ELSEWHERE.get(words, set()) & set(argv))
    return argv


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with the files the generator names, made the current directory."""
    work = tmp_path / "work"
    (work / "dir").mkdir(parents=True)
    (work / "bin.dat").write_bytes(b'{"a": 1}\n\xff\xfe\x00 not text\n')
    (work / "lines.jsonl").write_text('{"unit": 3}\n[1, 2]\n')
    (work / "deep.jsonl").write_text("[" * 5000 + "]" * 5000 + "\n")
    (work / "nan.jsonl").write_text("NaN\n")
    (work / os.fsdecode(b"caf\xe9.dat")).write_bytes(b"a file whose name is not UTF-8")
    monkeypatch.chdir(work)
    monkeypatch.delenv("KACHERY_TASKS_DEBUG", raising=False)
    return work


@pytest.fixture
def placeholders(workdir: Path) -> dict[str, str]:
    """What ``{cwd}``, ``{stored}`` and ``{feed}`` in generated words stand for."""
    import kachery_tasks as kachery

    feed = kachery.create_feed("fuzz")
    feed.subfeed("main").append({"unit": 3})
    return {"{cwd}": str(workdir), "{stored}": kachery.store_file("lines.jsonl"),
            "{feed}": feed.uri}


def _fill(word: str, placeholders: dict[str, str]) -> str:
    for key, value in placeholders.items():
        word = word.replace(key, value)
    return word


@settings(
    max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(command_lines())
def test_no_command_line_is_an_internal_error(placeholders, argv):
    assert_clean(run_main(*(_fill(word, placeholders) for word in argv)))


# ------------------------------------------------------- the cases by name

@pytest.mark.parametrize(
    "argv",
    [
        ["gc", "--max-size", "9" * 400],
        ["gc", "--max-size", "9" * 400 + "GiB"],
        ["gc", "--max-size", "1e400"],
        ["gc", "--max-size", "-1"],
        ["tasks", "ls", "--limit", "1e26"],
        ["tasks", "ls", "--limit", "100000000000000000000000000"],  # over 2**63 - 1
        ["tasks", "ls", "--limit", "-1"],
        ["tasks", "ls", "--limit", "0"],
        ["tasks", "ls", "--limit", "many"],
        ["mutable", "set", "k", "[" * 100_000],
        ["mutable", "set", "k", "[" * 1000 + "]" * 1000],
        ["feed", "append", "{feed}", "[" * 100_000],
        ["feed", "append", "{feed}", "--lines", "bin.dat"],
        ["feed", "append", "{feed}", "--lines", "deep.jsonl"],
        ["feed", "read", "{feed}", "--start", "9" * 30],
        ["cat", "{stored}", "--start", "9" * 30],
        ["cat", "{stored}", "--end", "-1"],
        ["mutable", "get", "\udcff"],
        ["pin", "{stored}", "bad"],
        ["node", "init", "--dir", LONG_NAME],
        ["load", "{stored}", "--dest", LONG_NAME],
        ["feed", "export", "{feed}", "--output", LONG_NAME + "/x"],
        ["store", "bin.dat", "--label", "\udcff"],
        ["nope"],
        ["node"],
        ["store"],
        [],
    ],
    ids=lambda argv: " ".join(argv)[:40],
)
def test_bad_input_is_one_line_and_status_1(placeholders, argv):
    r = run_main(*(_fill(word, placeholders) for word in argv))
    assert_clean(r)
    assert r.status == 1


def test_usage_errors_are_one_line_pointing_to_help(workdir):
    r = run_main("tasks", "ls", "--limit", "1e26")
    assert r.status == 1
    assert r.stderr.startswith("error: kachery-tasks tasks ls: argument --limit:")
    assert "'kachery-tasks tasks ls --help'" in r.stderr and r.stderr.count("\n") == 1


def test_help_and_version_exit_0(workdir):
    r = run_main("--help")
    assert r.status == 0 and b"COMMAND" in r.stdout
    assert run_main("--version").status == 0
    assert run_main("gc", "--help").status == 0


def test_error_quoting_a_line_break_stays_one_line(workdir):
    r = run_main("store", "two\nlines")
    assert r.status == 1 and r.stderr == "error: no such file: two\\nlines\n"
    r = run_main("store", os.fsdecode(b"\x1cnot\xffhere"))
    assert r.status == 1 and r.stderr == "error: no such file: \\x1cnot\\udcffhere\n"


def test_file_names_that_are_not_utf8(workdir):
    name = os.fsdecode(b"caf\xe9.dat")
    r = run_main("store", name)
    assert r.status == 0 and r.stdout.startswith(b"sha256://") and b"caf%EF%BF%BD.dat" in r.stdout
    r = run_main("link", name)
    assert r.status == 1 and "name is not UTF-8" in r.stderr
    r = run_main("node", "init", "--dir", os.fsdecode(b"d\xe9"))
    assert r.status == 0 and str(workdir).encode() + b"/d\xe9\n" in r.stdout  # its own bytes


def _examples() -> list[str]:
    """Every example command line shown by --help, top-level and per command."""
    texts = [p.epilog or "" for _, p in _all_parsers(build_parser())]
    return [line.strip() for text in texts for line in text.splitlines()
            if "kachery-tasks " in line and not line.strip().startswith("Run ")]


def _all_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, (*path, name))


@pytest.mark.parametrize("example", _examples())
def test_every_example_in_the_help_parses(example):
    import shlex

    words = shlex.split(example.split(" > ")[0])
    words = words[words.index("kachery-tasks") + 1:]  # after VAR=value settings
    args = build_parser().parse_args(words)
    assert getattr(args, "func", None) is not None, example
