"""Remotes: where a node looks for what it lacks and offers what it has.

A remote is opened from a URL through a small registry keyed by URL scheme,
imported only when first used (like buckets). A URL whose scheme names a
bucket backend (``file://``, ``gs://`` and any added with
``kachery.register_bucket``) is a :class:`~.bucket.BucketRemote`. A new kind
of remote is one module with a :class:`~.base.Remote` subclass and one
:func:`register_remote` call.
"""

from __future__ import annotations

import importlib
import re
import threading

from ..errors import InvalidValueError
from ..storage.buckets import bucket_schemes
from .base import Remote

_BUCKET_REMOTE = "kachery_tasks.remotes.bucket:BucketRemote"
_REMOTES: dict[str, str] = {}
_open: dict[str, Remote] = {}
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
        for url in [u for u in _open if u.startswith(f"{scheme}:")]:
            del _open[url]


def open_remote(url: str) -> Remote:
    """The remote at ``url`` (one instance per URL and process)."""
    remote = _open.get(url)
    if remote is not None:
        return remote
    scheme = url.split(":", 1)[0] if ":" in url else ""
    target = _REMOTES.get(scheme)
    if target is None and scheme in bucket_schemes():
        target = _BUCKET_REMOTE
    if target is None:
        known = ", ".join(f"{s}:" for s in sorted({*_REMOTES, *bucket_schemes()}))
        raise InvalidValueError(f"unknown remote {url!r}: use a URL starting with {known}")
    module, cls = target.split(":")
    with _lock:
        remote = _open.get(url)
        if remote is None:
            try:
                factory = getattr(importlib.import_module(module), cls)
            except (ImportError, AttributeError) as e:
                raise InvalidValueError(
                    f"the remote class {target} registered for {scheme}: cannot be loaded: {e}"
                ) from e
            remote = _open[url] = factory(url)
    return remote


__all__ = ["Remote", "open_remote", "register_remote"]
