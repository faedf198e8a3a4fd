"""Commands that move content through a bucket: upload, download."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..nodes import Node, current_node
from ..remotes.bucket import BucketRemote
from ..storage.buckets import ENV_BUCKET
from ..uris import parse_uri
from . import command
from .args import arg, progress_flag

_BUCKET_HELP = f"bucket URL (default: ${ENV_BUCKET}, else [bucket] url in config.toml)"
_BUCKET = arg("--bucket", help=_BUCKET_HELP)
#: The arguments of upload and download: URIs, a bucket, progress.
_URIS_AND_BUCKET = (arg("uri", nargs="+"), _BUCKET, progress_flag())


def node_from(args: argparse.Namespace) -> Node:
    """The current node, with the bucket named on the command line as its only remote
    (else the remotes its configuration names; at least one is needed)."""
    node = current_node()
    if args.bucket:
        return Node(node.path, [BucketRemote(args.bucket)])
    if not node.remotes:
        raise ConfigError(
            f"no bucket configured: pass --bucket URL, set {ENV_BUCKET}, or set "
            "[bucket] url in config.toml"
        )
    return node


def _upload(args: argparse.Namespace) -> int:
    store = current_node().store
    for uri in args.uri:  # all well-formed and here before anything is uploaded
        store.load_file(uri)
    node = node_from(args)
    for uri in args.uri:
        for _remote, r in node.offer(uri, progress=args.progress, repair=args.repair):
            print(f"{uri}: {r.summary(args.repair)}")
    return 0


def _download(args: argparse.Namespace) -> int:
    for uri in args.uri:  # all well-formed before anything is downloaded
        parse_uri(uri)
    node = node_from(args)
    for uri in args.uri:
        print(node.load_file(uri, progress=args.progress))
        node.fetch_members(uri, progress=args.progress)
    return 0


def _sync(args: argparse.Namespace) -> int:
    from ..runtime import cache, shared

    node = node_from(args)
    published = shared.publish_all(cache.for_node(node))
    pushed, pulled = node.sync_feeds()
    print(f"published {published} task results; "
          f"pushed {pushed.messages} messages of {len(pushed.feeds)} feeds; "
          f"pulled {pulled.messages} messages of {len(pulled.feeds)} feeds")
    return 0


COMMANDS = (
    command(
        "upload", "Put stored content into the shared bucket.",
        "KACHERY_TASKS_BUCKET=gs://lab-share/kachery kachery-tasks upload 'sha256://<hex>'",
        "Content above the chunk size travels as chunks plus a manifest. Writes are\n"
        "create-only and whatever the bucket already has is skipped. Every byte sent\n"
        "is checked against its hash; damaged local content is removed, never sent.",
        args=[
            *_URIS_AND_BUCKET,
            arg("--repair", action="store_true",
                help="read back what the bucket has of the content and replace damaged or "
                "missing objects with this node's verified bytes"),
        ],
        run=_upload,
    ),
    command(
        "download", "Fetch content from the shared bucket into the store.",
        "kachery-tasks download 'sha256://<hex>' --bucket file:///mnt/share/kachery",
        "Chunks are fetched in parallel and verified on arrival; an interrupted\n"
        "download resumes where it stopped. Prints the local path. The URI of a\n"
        "zarr array fetches every blob of the array (load_zarr alone fetches\n"
        "chunks as they are read).",
        args=_URIS_AND_BUCKET,
        run=_download,
    ),
    command(
        "sync", "Push this node's feeds to the shared bucket and pull the others'.",
        "kachery-tasks sync --bucket file:///mnt/share/kachery",
        "Feeds travel as append-only segments; pulled messages are verified\n"
        "(signatures and hash chain) before they are stored. Pure task results this\n"
        "node computed are published, signed, for collaborators to load instead of\n"
        "recomputing. Files travel on demand (upload, download, load_file).",
        args=[_BUCKET],
        run=_sync,
    ),
)
