"""Remotes: where a node looks for what it lacks and offers what it has.

A remote is opened from a URL through a small registry keyed by URL scheme,
imported only when first used (like buckets). A URL whose scheme names a
bucket backend (``file://``, ``gs://`` and any added with
``kachery.register_bucket``) is a :class:`~.bucket.BucketRemote`; a
``channel:NAME`` URL is the channel NAME this node joined
(:class:`kachery_tasks.network.channels.remote.ChannelRemote`, named here as
a string, so nothing below the network layer imports it). A new kind of
remote is one module with a :class:`~.base.Remote` subclass and one
:func:`register_remote` call.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from typing import Any

from ..errors import InvalidValueError
from ..storage.buckets import bucket_schemes
from .base import Remote

_BUCKET_REMOTE = "kachery_tasks.remotes.bucket:BucketRemote"
_REMOTES: dict[str, str] = {
    "channel": "kachery_tasks.network.channels.remote:ChannelRemote",
}
_open: dict[tuple[str, str | None], Remote] = {}
_lock = threading.Lock()
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def register_remote(scheme: str, target: str) -> None:
    """Open URLs of ``scheme`` with the Remote class at ``target`` (``"module:Class"``).

    The module is imported when such a URL is first opened.
    """
    if not isinstance(scheme, str) or not _SCHEME.match(scheme):
        raise InvalidValueError(f"a URL scheme is lowercase letters and digits, not {scheme!r}")
    if not isinstance(target, str) or not _TARGET.match(target):
        raise InvalidValueError(f"a remote class is named 'module:Class', not {target!r}")
    with _lock:
        _REMOTES[scheme] = target
        for key in [k for k in _open if k[0].startswith(f"{scheme}:")]:
            del _open[key]


def open_remote(url: str, node: Any = None) -> Remote:
    """The remote at ``url``: one instance per URL and process.

    A remote class whose ``per_node`` is true acts for one node (a channel
    signs its requests with the node's key): it is built as ``Class(url,
    node)``, one instance per URL and node directory, and needs ``node`` (a
    :class:`~kachery_tasks.nodes.Node`). Other classes are built as
    ``Class(url)`` and ``node`` is ignored.
    """
    remote = _open.get((url, None))
    if remote is None and node is not None:
        remote = _open.get((url, str(node.path)))
    if remote is not None:
        return remote
    factory = _remote_class(url)
    per_node = bool(getattr(factory, "per_node", False))
    if per_node and node is None:
        raise InvalidValueError(
            f"the remote {url!r} acts for a node: open it with kachery.node(path, "
            f"remotes=[{url!r}]) or list it in the node's remotes")
    key = (url, str(node.path) if per_node else None)
    with _lock:
        remote = _open.get(key)
        if remote is None:
            remote = _open[key] = factory(url, node) if per_node else factory(url)
    return remote


def _remote_class(url: str) -> Callable[..., Remote]:
    """The class registered for ``url``'s scheme (imported now)."""
    scheme = url.split(":", 1)[0] if ":" in url else ""
    target = _REMOTES.get(scheme)
    if target is None and scheme in bucket_schemes():
        target = _BUCKET_REMOTE
    if target is None:
        known = ", ".join(f"{s}:" for s in sorted({*_REMOTES, *bucket_schemes()}))
        raise InvalidValueError(f"unknown remote {url!r}: use a URL starting with {known}")
    module, cls = target.split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise InvalidValueError(
            f"the remote class {target} registered for {scheme}: cannot be loaded: {e}"
        ) from e


__all__ = ["Remote", "open_remote", "register_remote"]
