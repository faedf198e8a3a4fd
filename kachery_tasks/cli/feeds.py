"""Commands for feeds: feed create, append, read, verify, export, import, ls, info, snapshot."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..canonical import check_depth, parse_json
from ..errors import InvalidValueError
from ..feed_functions import (
    create_feed,
    export_feed,
    import_feed,
    import_lines,
    list_feeds,
    load_feed,
    load_subfeed,
)
from ..feeds import DEFAULT_SUBFEED, Message, parse_feed_uri
from . import command
from .args import arg, file_path, json_flag, whole_number

URI_HELP = "feed://<feed id>/<subfeed>; without /<subfeed>, the subfeed 'main'"


def _create(args: argparse.Namespace) -> int:
    print(create_feed(args.label).uri)
    return 0


def _parse_json(text: str, what: str) -> object:
    check_depth(text, what)
    try:
        return parse_json(text, what)
    except InvalidValueError as e:
        raise InvalidValueError(f"{e} (quote it for the shell, e.g. '{{\"unit\": 3}}')") from e


def _append(args: argparse.Namespace) -> int:
    sub = load_subfeed(args.uri)
    if not args.lines:
        print(sub.append(_parse_json(args.body, "the message body")).seq)
        return 0
    bodies = [_parse_json(line, f"line {n}") for n, line in _lines(args.body) if line.strip()]
    msgs = sub.append_many(bodies)
    if msgs:
        print(f"appended seq {msgs[0].seq}..{msgs[-1].seq}")
    return 0


def _lines(path: str) -> list[tuple[int, str]]:
    """The numbered lines of a UTF-8 file ('-': standard input); InvalidValueError otherwise."""
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise InvalidValueError(f"cannot read {name}: {e.strerror}") from e
    lines = []
    for n, line in enumerate(data.splitlines(), 1):
        try:
            lines.append((n, line.decode("utf-8")))
        except UnicodeDecodeError as e:
            raise InvalidValueError(
                f"line {n} of {name} is not UTF-8 text (byte {e.start} of the line); "
                "JSON lines must be UTF-8"
            ) from e
    return lines


def _line(m: Message, raw: bool) -> str:
    if raw:
        return m.to_bytes().decode()
    return json.dumps({"seq": m.seq, "time": m.time, "body": m.body}, ensure_ascii=False)


def _read(args: argparse.Namespace) -> int:
    sub = load_subfeed(args.uri)
    out = sys.stdout
    if args.follow:
        if args.end is not None:
            raise InvalidValueError("--follow and --end cannot be used together")
        for m in sub.follow(args.start):
            out.write(_line(m, args.raw) + "\n")
            out.flush()
        return 0  # pragma: no cover - follow only ends by interruption
    if args.raw:  # the stored signed bytes, as they are
        for data in sub.export_lines(args.start, args.end):
            out.write(data.decode() + "\n")
        return 0
    for m in sub.read(args.start, args.end):
        out.write(_line(m, False) + "\n")
    return 0


def _verify(args: argparse.Namespace) -> int:
    parsed = parse_feed_uri(args.uri)
    t0 = time.perf_counter()
    if parsed.subfeed is not None:
        counts = {parsed.subfeed: load_subfeed(args.uri).verify(not args.chain)}
    else:
        counts = load_feed(args.uri).verify(not args.chain)
    dt = time.perf_counter() - t0
    total = sum(counts.values())
    for name, n in counts.items():
        print(f"{name}: {n} messages ok")
    print(f"verified {total} messages in {len(counts)} subfeeds ({dt:.2f} s): ok")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.output:
        n = export_feed(args.uri, args.output)
    else:
        n = export_feed(args.uri, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    print(f"exported {n} messages", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    report = import_lines(sys.stdin.buffer) if args.path == "-" else import_feed(args.path)
    print(report)
    return 0


def _ls(args: argparse.Namespace) -> int:
    feeds = list_feeds()
    if args.json:
        print(json.dumps([f.to_dict() for f in feeds], indent=2))
        return 0
    for f in feeds:
        mode = "writable " if f.writable else "read-only"
        print(f"{f.uri}  {mode}  {f.messages:>8} messages  {f.label or ''}")
    return 0


def _info(args: argparse.Namespace) -> int:
    info = load_feed(args.uri).info()
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    print(f"uri:       {info.uri}")
    print(f"label:     {info.label or '-'}")
    print(f"writable:  {'yes (this node holds the key)' if info.writable else 'no (read-only)'}")
    print(f"subfeeds:  {len(info.subfeeds) or 'none'}")
    for name, n in info.subfeeds.items():
        marker = " (default)" if name == DEFAULT_SUBFEED else ""
        print(f"  {name}{marker}: {n} messages")
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    print(load_subfeed(args.uri).snapshot())
    return 0


_SUBFEED_URI = arg("uri", help=URI_HELP)
_FEED_URI = arg("uri", help="feed://<feed id>, or a subfeed URI")

COMMANDS = (
    command(
        "feed", "Create, append to, read, verify and move signed feeds.",
        "kachery-tasks feed create curation",
        "A feed is a set of append-only logs (subfeeds) signed by a key that stays in\n"
        "this node's directory. Anyone with the messages can read and verify them;\n"
        "only this node can append.",
        actions=[
            command(
                "create", "Create a feed (a new key pair) and print its URI.",
                "kachery-tasks feed create curation",
                "The private key is saved, readable only by you, in <node>/feeds/keys/.",
                args=[arg("label", nargs="?",
                          help="a local name for the feed (shown by 'feed ls')")],
                run=_create,
            ),
            command(
                "append", "Append a JSON message to a subfeed and print its seq.",
                "kachery-tasks feed append feed://<id>/unit-labels "
                '\'{"unit": 3, "label": "noise"}\'',
                "With --lines, BODY is a file ('-' for standard input) holding one JSON value\n"
                "per line; they are appended together, all or none.",
                args=[
                    _SUBFEED_URI,
                    arg(  # JSON text, or a file name: any bytes
                        "body", type=file_path,
                        help="the message body as JSON (or, with --lines, a file or '-')",
                    ),
                    arg("--lines", action="store_true", help="append one message per JSON line"),
                ],
                run=_append,
            ),
            command(
                "read", "Print the messages of a subfeed, one JSON object per line.",
                "kachery-tasks feed read feed://<id>/unit-labels --start 10 --follow",
                'Each line is {"seq", "time", "body"}; --raw prints the signed messages\n'
                "instead (the export format). --follow keeps waiting for new messages.",
                args=[
                    _SUBFEED_URI,
                    arg("--start", type=whole_number(0), default=0,
                        help="first seq to print (default 0)"),
                    arg("--end", type=whole_number(0), default=None, help="stop before this seq"),
                    arg("--follow", "-f", action="store_true",
                        help="wait for and print new messages"),
                    arg("--raw", action="store_true", help="print the signed messages"),
                ],
                run=_read,
            ),
            command(
                "verify", "Re-check every stored message of a feed (or one subfeed).",
                "kachery-tasks feed verify feed://<id>",
                "Checks each message's signature, seq and hash link; exits with status 1 and\n"
                "names the first bad message if any fails.",
                args=[
                    _FEED_URI,
                    arg("--chain", action="store_true",
                        help="check every hash link but only one signature per 1000 messages "
                        "(much faster, equally safe against anyone without the key)"),
                ],
                run=_verify,
            ),
            command(
                "export", "Write a feed (or one subfeed) as JSON lines.",
                "kachery-tasks feed export feed://<id> > feed.jsonl",
                "One signed message per line, subfeeds in name order, each from seq 0.\n"
                "'feed import' on any node verifies and loads it.",
                args=[
                    _FEED_URI,
                    arg("--output", "-o", type=file_path,
                        help="write to this file instead of standard output"),
                ],
                run=_export,
            ),
            command(
                "import", "Verify and load messages from a JSON-lines export.",
                "kachery-tasks feed import feed.jsonl",
                "Every message is checked (signature, seq, hash link) before it is stored;\n"
                "messages already here are skipped, so importing twice changes nothing.\n"
                "A feed whose key this node lacks becomes readable, not writable.",
                args=[arg("path", type=file_path,
                          help="the JSON-lines file, or '-' for standard input")],
                run=_import,
            ),
            command("ls", "List the feeds this node knows.", "kachery-tasks feed ls --json",
                    args=[json_flag()], run=_ls),
            command(
                "info", "Show a feed's subfeeds and their lengths.",
                "kachery-tasks feed info feed://<id>",
                args=[arg("uri", help="feed://<feed id>"), json_flag()],
                run=_info,
            ),
            command(
                "snapshot", "Store a subfeed's messages in the content store; print the URI.",
                "kachery-tasks feed snapshot feed://<id>/unit-labels",
                "The snapshot is the subfeed in export format as an immutable sha256:// file;\n"
                "'feed import' loads it on any node (after 'kachery-tasks load URI').",
                args=[_SUBFEED_URI],
                run=_snapshot,
            ),
        ],
    ),
)
