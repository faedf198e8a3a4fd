"""Buckets, found by URL scheme through a small registry (imported only when used).

``file:///path`` is the embedded default (any directory, a network share
included); ``gs://bucket/prefix`` is Google Cloud Storage. A new backend,
ours or a third party's, is one module with a :class:`~.base.Bucket` subclass
whose constructor takes the URL, and one call:
``register_bucket("s3", "mylab.s3_bucket:S3Bucket")``. Its module is imported
when the first URL of that scheme is opened.
"""

from __future__ import annotations

import importlib
import os
import re
import threading

from ...errors import BucketError, InvalidValueError
from .base import Bucket

ENV_BUCKET = "KACHERY_TASKS_BUCKET"

_BACKENDS = {
    "file": "kachery_tasks.storage.buckets.local:FileBucket",
    "gs": "kachery_tasks.storage.buckets.gcs:GCSBucket",
}

_open: dict[str, Bucket] = {}
_lock = threading.Lock()

# A URL scheme as RFC 3986 has it, in lowercase: a letter, then letters, digits, "+", "-", ".".
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def register_bucket(scheme: str, target: str) -> None:
    """Open ``scheme://`` URLs with the Bucket subclass ``target``, ``"package.module:Class"``.

    Nothing is imported now: the module is imported when the first URL of
    the scheme is opened, and a class that cannot be imported, or is not a
    :class:`~.base.Bucket` subclass, is then a :class:`~kachery_tasks.errors.BucketError`
    naming the scheme. Registering the same target again does nothing; a
    scheme already registered to another class is refused (file:// and gs://
    included). A registration holds for this process (and the processes it
    forks): register in a module that every process opening such URLs imports.
    """
    if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme):
        raise InvalidValueError(
            f"not a valid bucket scheme: {scheme!r}; use lowercase letters, digits, '+', '-' "
            "and '.', starting with a letter, without '://' (e.g. 's3')"
        )
    if not _is_target(target):
        raise InvalidValueError(
            f"not a valid backend for {scheme}:// buckets: {target!r}; give the class as "
            "'package.module:ClassName'"
        )
    with _lock:
        known = _BACKENDS.get(scheme)
        if known is not None and known != target:
            raise InvalidValueError(
                f"bucket scheme {scheme}:// is already registered to {known!r}; choose "
                f"another scheme for {target!r}"
            )
        _BACKENDS[scheme] = target


def _is_target(target: object) -> bool:
    """True for ``"package.module:Class"`` (dotted identifiers, one colon, one identifier)."""
    if not isinstance(target, str) or target.count(":") != 1:
        return False
    module, cls = target.split(":")
    return cls.isidentifier() and all(part.isidentifier() for part in module.split("."))


def _backend(scheme: str, url: str) -> type[Bucket]:
    """The Bucket subclass registered for ``scheme``, imported now if need be."""
    target = _BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise InvalidValueError(
            f"unknown bucket scheme in {url!r}: use one of {known} (or add a backend with "
            "kachery_tasks.register_bucket)"
        )
    module, name = target.split(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception as e:  # not installed, no such class, or the module's own failure
        why = " ".join(f"{type(e).__name__}: {e}".split())
        raise BucketError(
            f"cannot load the backend of {scheme}:// buckets, {target!r} ({why}); install "
            "the package that provides it, or register the scheme with the right class"
        ) from e
    if not (isinstance(cls, type) and issubclass(cls, Bucket)):
        raise BucketError(
            f"the backend of {scheme}:// buckets, {target!r}, is not a subclass of "
            "kachery_tasks.storage.buckets.base.Bucket; register a Bucket subclass"
        )
    return cls


def open_bucket(url: str) -> Bucket:
    """The bucket at ``url`` (one instance per URL and process)."""
    bucket = _open.get(url)
    if bucket is not None:
        return bucket
    scheme = url.split("://", 1)[0] if "://" in url else ""
    cls = _backend(scheme, url)
    with _lock:
        bucket = _open.get(url)
        if bucket is None:
            bucket = _open[url] = cls(url)
    return bucket


def bucket_schemes() -> list[str]:
    """The URL schemes buckets are registered for (``file``, ``gs`` and any added)."""
    return sorted(_BACKENDS)


def configured_bucket_url(config_url: str | None = None) -> str | None:
    """The bucket this node uses: ``$KACHERY_TASKS_BUCKET``, else config.toml's [bucket] url."""
    return os.environ.get(ENV_BUCKET) or config_url or None


__all__ = [
    "ENV_BUCKET", "Bucket", "bucket_schemes", "configured_bucket_url", "open_bucket",
    "register_bucket",
]
