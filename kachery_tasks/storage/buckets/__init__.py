"""Buckets, found by URL scheme through a small registry (imported only when used).

``file:///path`` is the embedded default (any directory, a network share
included); ``gs://bucket/prefix`` is Google Cloud Storage. A new backend is one
module with a :class:`~.base.Bucket` subclass and one line in ``_BACKENDS``.
"""

from __future__ import annotations

import importlib
import os
import threading

from ...errors import InvalidValueError
from .base import Bucket

ENV_BUCKET = "KACHERY_TASKS_BUCKET"

_BACKENDS = {
    "file": "kachery_tasks.storage.buckets.local:FileBucket",
    "gs": "kachery_tasks.storage.buckets.gcs:GCSBucket",
}

_open: dict[str, Bucket] = {}
_lock = threading.Lock()


def open_bucket(url: str) -> Bucket:
    """The bucket at ``url`` (one instance per URL and process)."""
    bucket = _open.get(url)
    if bucket is not None:
        return bucket
    scheme = url.split("://", 1)[0] if "://" in url else ""
    target = _BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise InvalidValueError(f"unknown bucket scheme in {url!r}: use one of {known}")
    module, cls = target.split(":")
    with _lock:
        bucket = _open.get(url)
        if bucket is None:
            bucket = _open[url] = getattr(importlib.import_module(module), cls)(url)
    return bucket


def configured_bucket_url(config_url: str | None = None) -> str | None:
    """The bucket this node uses: ``$KACHERY_TASKS_BUCKET``, else config.toml's [bucket] url."""
    return os.environ.get(ENV_BUCKET) or config_url or None


__all__ = ["ENV_BUCKET", "Bucket", "configured_bucket_url", "open_bucket"]
