"""The feed functions of the public API, acting on the current node.

A feed of another node is pulled through the current node's remotes when it
is loaded (see :meth:`kachery_tasks.nodes.Node.load_feed`); everything else
works on the node's own copy. The formats are in ``docs/feeds.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import IO, Any

from .feeds.feed import Feed, FeedInfo, Subfeed
from .feeds.messages import Message
from .feeds.transfer import ImportReport, parse_lines
from .nodes import current_node


def create_feed(label: str | None = None) -> Feed:
    """Create a feed: a new Ed25519 key pair whose private key stays in this node.

    ``label`` is a local name shown by ``list_feeds``; it is not part of the
    feed's identity and does not travel with exports.
    """
    return current_node().create_feed(label)


def load_feed(uri: str) -> Feed:
    """The feed ``feed://<id>``: this node's own, or another node's, pulled (verified)
    through the node's remotes.

    The feed is writable only where its private key is. FeedNotFoundError for
    a feed found nowhere; InvalidURIError for a malformed URI or a subfeed URI
    (use :func:`load_subfeed`).
    """
    return current_node().load_feed(uri)


def load_subfeed(uri: str) -> Subfeed:
    """The subfeed ``feed://<id>/<name>`` (``feed://<id>`` means its "main" subfeed)."""
    return current_node().load_subfeed(uri)


def list_feeds() -> list[FeedInfo]:
    """Every feed this node knows, in the order it learnt of them."""
    return current_node().list_feeds()


def import_messages(messages: Iterable[Mapping[str, Any] | Message]) -> ImportReport:
    """Verify and store messages received from elsewhere (see :mod:`.feeds.transfer`)."""
    return current_node().import_messages(messages)


def import_lines(lines: Iterable[bytes | str]) -> ImportReport:
    """Import messages from JSON lines (the export format)."""
    return current_node().import_messages(parse_lines(lines))


def import_feed(path: str | os.PathLike[str]) -> ImportReport:
    """Import a JSON-lines file written by :func:`export_feed` (or a feed snapshot)."""
    return current_node().import_feed(path)


def export_feed(uri: str, out: str | os.PathLike[str] | IO[bytes]) -> int:
    """Write a feed (or one subfeed) as JSON lines to ``out``; return the message count.

    ``out`` is a binary file object or a path; a path is written atomically.
    """
    return current_node().export_feed(uri, out)
