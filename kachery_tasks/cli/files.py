"""Commands for files and mutables: store, link, load, cat, info, pin, gc, verify, mutable."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .. import files
from ..canonical import check_depth, parse_json
from ..errors import InvalidValueError
from ..nodes import current_node
from ..sizes import format_size
from ..storage.local import check_range
from ..zarr_arrays import zarr_info
from . import command
from .args import Arg, arg, file_path, json_flag, progress_flag, size, whole_number


def _store(args: argparse.Namespace) -> int:
    print(files.store_file(args.path, label=args.label, progress=args.progress))
    return 0


def _link(args: argparse.Namespace) -> int:
    print(files.link_file(args.path, label=args.label, progress=args.progress))
    return 0


def _load(args: argparse.Namespace) -> int:
    print(files.load_file(args.uri, dest=args.dest, verify=args.verify))
    return 0


def _cat(args: argparse.Namespace) -> int:
    path = files.load_file(args.uri)  # fetched from the bucket when not local
    start, end = check_range(args.start, args.end, os.path.getsize(path))
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            piece = f.read(min(1 << 20, remaining))
            if not piece:
                break
            out.write(piece)
            remaining -= len(piece)
    out.flush()
    return 0


def _info(args: argparse.Namespace) -> int:
    info = files.load_file_info(args.uri)
    array = zarr_info(args.uri) if info.path else None
    if args.json:
        doc = dict(info.__dict__)
        if array is not None:
            doc["zarr"] = array.__dict__
        print(json.dumps(doc, indent=2))
        return 0
    rows = [
        ("uri", info.uri),
        ("size", f"{info.size} bytes ({format_size(info.size)})"),
        ("label", info.label or "-"),
        ("path", info.path),
        ("linked", info.linked_path or "no"),
        ("chunks", f"{info.chunks} (manifest {info.manifest_uri})" if info.chunks else "none"),
        ("sha1", info.sha1 or "-"),
        ("pinned", "yes" if info.pinned else "no"),
        ("last used", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.last_access))),
    ]
    if array is not None:
        what = f"zarr {array.node_type}"
        if array.shape is not None:
            what += f", shape {array.shape}, {array.dtype}, chunks {array.chunks}"
        rows.append(("zarr", what))
        rows.append(("blobs", f"{array.blobs} named, {array.blobs_here} here "
                              f"({format_size(array.bytes_here)})"))
    for key, value in rows:
        print(f"{key + ':':<11}{value}")
    return 0



def _ls(args: argparse.Namespace) -> int:
    for row in current_node().store.list():
        if args.pinned and not row.pinned:
            continue
        where = "linked" if not row.in_store else ("pinned" if row.pinned else "")
        label = row.label or ""
        print(f"sha256://{row.sha256}  {format_size(row.size):>10}  {where:<6}  {label}")
    return 0


def _pin(args: argparse.Namespace) -> int:
    store = current_node().store
    # Every URI is checked before any is changed, so a bad one leaves all as they were.
    uris = [f"sha256://{store.resolve(uri)}" for uri in args.uri]
    for uri in uris:
        store.load_file(uri)  # ContentNotFoundError when it is not here
    for uri in uris:
        store.pin(uri, args.pinned)
    return 0


def _gc(args: argparse.Namespace) -> int:
    report = current_node().store.gc(args.max_size)
    evicted = (
        f"evicted {report.evicted} blobs ({format_size(report.freed)})"
        if args.max_size is not None else "evicted nothing (no --max-size)"
    )
    print(
        f"{evicted}; store now holds {format_size(report.remaining)} "
        f"({format_size(report.pinned_bytes)} pinned)"
    )
    if report.kept_recent:
        print(f"kept {report.kept_recent} blobs used in the last minute")
    if report.temp_removed:
        print(f"removed {report.temp_removed} stale temporary files")
    if report.partials_removed:
        print(f"removed {report.partials_removed} abandoned partial downloads "
              f"({format_size(report.partial_bytes)})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = current_node().store.verify(progress=args.progress)
    print(f"checked {report.checked} blobs")
    for sha256 in report.corrupt:
        print(f"corrupt, removed: sha256://{sha256}")
    for sha256 in report.broken_links:
        print(f"linked original changed or missing, link removed: sha256://{sha256}")
    for sha256 in report.manifests_rebuilt:
        print(f"manifest missing or damaged, made again from the intact file: sha256://{sha256}")
    if report.adopted:
        print(f"indexed {report.adopted} blobs that had no index entry")
    if report.dangling_rows:
        print(f"dropped {report.dangling_rows} index entries whose blob was missing")
    return 1 if report.corrupt or report.broken_links else 0


def _import_kachery(args: argparse.Namespace) -> int:
    from ..storage.kachery_import import import_kachery_dir

    report = import_kachery_dir(args.dir, current_node().store, progress=args.progress)
    print(f"imported {report.imported} files ({format_size(report.bytes)}), "
          f"{report.already} already here")
    for path, why in report.failed:
        print(f"skipped {path}: {why}", file=sys.stderr)
    return 1 if report.failed else 0


def _mutable_set(args: argparse.Namespace) -> int:
    value: object = args.value
    if not args.string:
        try:
            check_depth(args.value, "VALUE")  # too deep to parse: an error, not a string
        except InvalidValueError as e:
            raise InvalidValueError(f"{e}, or pass --string to store it as text") from e
        try:
            value = parse_json(args.value, "VALUE")
        except InvalidValueError:  # not JSON, or not a value JSON can hold: a string
            value = args.value
    files.set_mutable(args.key, value)
    return 0


_ABSENT = object()


def _mutable_get(args: argparse.Namespace) -> int:
    value = files.get_mutable(args.key, _ABSENT)
    if value is _ABSENT:
        print(f"error: no mutable named {args.key!r}", file=sys.stderr)
        return 1
    print(value if isinstance(value, str) and not args.json else json.dumps(value))
    return 0


def _mutable_delete(args: argparse.Namespace) -> int:
    if not files.delete_mutable(args.key):
        print(f"error: no mutable named {args.key!r}", file=sys.stderr)
        return 1
    return 0


def _mutable_ls(args: argparse.Namespace) -> int:
    for key, value in files.list_mutables(args.prefix).items():
        print(f"{key}\t{json.dumps(value)}")
    return 0


def _source_file(help: str) -> tuple[Arg, ...]:
    """The arguments of store and link: the file, its label, progress."""
    return (
        arg("path", type=file_path, help=help),
        arg("--label", help="a name kept as a hint in the URI (default: the file name)"),
        progress_flag(),
    )


_URI = arg("uri")
_KEY = arg("key")

COMMANDS = (
    command(
        "store", "Copy a file into the node's store and print its URI.",
        "kachery-tasks store raw.dat --label raw.dat",
        "The file is hashed while it is copied (one read). Large files also get a\n"
        "chunk manifest so they can travel between nodes in verified pieces.",
        args=_source_file("the file to store"),
        run=_store,
    ),
    command(
        "link", "Register a large file where it is, without copying it.",
        "kachery-tasks link /data/session1.bin",
        "The file's size, modification time and inode are recorded. If the original\n"
        "changes or disappears, loading its URI fails instead of serving wrong bytes.",
        args=_source_file("the file to register"),
        run=_link,
    ),
    command(
        "load", "Print the local path of content, or copy it to --dest.",
        "kachery-tasks load 'sha256://<hex>' --dest copy.dat",
        "Accepts sha256:// URIs and, for kachery users, sha1:// URIs of content that\n"
        "was stored or imported here.",
        args=[
            _URI,
            arg("--dest", type=file_path,
                help="copy the content to this file instead of printing its path"),
            arg("--verify", action="store_true", help="re-hash the content before using it"),
        ],
        run=_load,
    ),
    command(
        "cat", "Write content (or a byte range of it) to standard output.",
        "kachery-tasks cat 'sha256://<hex>' --start 100 --end 200",
        args=[
            _URI,
            arg("--start", type=whole_number(0), default=0, help="first byte (default 0)"),
            arg("--end", type=whole_number(0), default=None,
                help="end byte, exclusive (default: the end)"),
        ],
        run=_cat,
    ),
    command(
        "info",
        "Show size, local path, chunks and label of content; for a zarr array's URI also "
        "its shape, dtype, chunking and how many of its blobs are here.",
        "kachery-tasks info 'sha256://<hex>'",
        args=[_URI, json_flag()],
        run=_info,
    ),
    command(
        "ls", "List the content in this node's store.", "kachery-tasks ls --pinned",
        args=[arg("--pinned", action="store_true", help="only pinned content")],
        run=_ls,
    ),
    command(
        "pin", "Keep content through garbage collection.", "kachery-tasks pin 'sha256://<hex>'",
        args=[arg("uri", nargs="+")], run=_pin, defaults={"pinned": True},
    ),
    command(
        "unpin", "Let garbage collection evict content again.",
        "kachery-tasks unpin 'sha256://<hex>'",
        args=[arg("uri", nargs="+")], run=_pin, defaults={"pinned": False},
    ),
    command(
        "gc",
        "Remove leftovers of interrupted writes; with --max-size also evict least recently "
        "used content until the store fits.",
        "kachery-tasks gc --max-size 50GiB",
        "Leftovers are temporary files of writers that have ended and partial downloads\n"
        "abandoned for a day. Pinned content is never evicted, nor content used in the\n"
        "last minute. Linked originals are never deleted.",
        args=[arg("--max-size", type=size,
                  help="size limit, e.g. 500MB, 50GiB (default: evict nothing)")],
        run=_gc,
    ),
    command(
        "verify", "Re-hash every stored blob; remove what no longer matches its id.",
        "kachery-tasks verify",
        "Also adopts blobs left without an index entry by a crash, checks linked\n"
        "originals, and makes again from the intact file the manifest of a large\n"
        "file when it is missing or damaged. Exits with status 1 if anything was\n"
        "corrupt.",
        args=[progress_flag()],
        run=_verify,
    ),
    command(
        "import-kachery", "Import a kachery or kachery-cloud storage directory.",
        "kachery-tasks import-kachery ~/.kachery-cloud",
        "Every file under DIR/sha1/ is verified against its SHA-1 and stored; its\n"
        "sha1:// URI then resolves here. Files that fail verification are reported\n"
        "and skipped.",
        args=[arg("dir", type=file_path), progress_flag()],
        run=_import_kachery,
    ),
    command(
        "mutable", "Get and set node-local mutables (JSON values under string keys).",
        "kachery-tasks mutable set alias/latest 'sha256://<hex>'",
        actions=[
            command(
                "set", "Set a mutable.", "kachery-tasks mutable set alias/latest 'sha256://...'",
                "VALUE is parsed as JSON when it is valid JSON (so 3 is a number and\n"
                "'{\"a\": 1}' an object); anything else is stored as a string, including\n"
                "NaN, Infinity and numbers too large for a float, which JSON cannot hold.\n"
                "JSON may nest at most 100 arrays and objects deep.",
                args=[
                    _KEY,
                    arg("value"),
                    arg("--string", action="store_true",
                        help="store VALUE as a string, never JSON"),
                ],
                run=_mutable_set,
            ),
            command("get", "Print a mutable's value.", "kachery-tasks mutable get alias/latest",
                    args=[_KEY, json_flag("print strings as JSON too")], run=_mutable_get),
            command("delete", "Remove a mutable.", "kachery-tasks mutable delete alias/latest",
                    args=[_KEY], run=_mutable_delete),
            command("ls", "List mutables.", "kachery-tasks mutable ls alias/",
                    args=[arg("prefix", nargs="?", default="")], run=_mutable_ls),
        ],
    ),
)
