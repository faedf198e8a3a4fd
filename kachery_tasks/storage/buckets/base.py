"""The bucket protocol: what every bucket backend provides.

A bucket is a flat space of objects under a prefix, named by ``/``-separated
keys (``blobs/sha256/<hex>``, ``chunks/sha256/<hex>``, ...). Content-addressed
objects are written **create-only**: :meth:`Bucket.put` never replaces an
existing object and says whether it wrote one, so a retry or a race between
two writers of the same key is harmless. The one way to change an object is
:meth:`Bucket.replace`, which repairs a damaged object: it writes only over
the very object (the *generation*, see :meth:`Bucket.stat`) the caller found
damaged, so a repair never clobbers a concurrent repair. Reads may ask for a byte range, and
:meth:`Bucket.get_into` streams a read piece by piece into the caller's code
(no whole-object ``bytes``: a download hashes and writes each piece while it
is still in the CPU cache).

Every backend raises KacheryError subclasses only: ContentNotFoundError for an
absent object, BucketNotFoundError, BucketAccessError (credentials,
permission) and TransferError (transient failure after retries). No backend
puts a credential in a message.

The contract is tested once, by :class:`kachery_tasks.testing.buckets.BucketContract`,
which ships with the package and runs against every backend (a third party's too).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

#: The size of the pieces :meth:`Bucket.get_into` hands over (small enough to stay in cache).
READ_PIECE = 2**20


@dataclass(frozen=True)
class ObjectInfo:
    """One object as the bucket holds it now."""

    size: int
    generation: str  # which write made it: changes whenever the object is replaced


class Bucket(ABC):
    """A place shared by nodes where objects are written once and read by many."""

    url: str
    requests_at_once: int = 8
    """Small requests (a look for each of many records) worth sending side by side: over
    a network each waits a round trip, which threads overlap; a bucket whose requests are
    system calls of microseconds says 1 (threads would only contend)."""

    @abstractmethod
    def put(self, key: str, data: bytes | memoryview, *, flush: bool = True) -> bool:
        """Create object ``key`` with ``data`` unless it exists; True if this call wrote it.

        ``flush=False`` is for short-lived coordination objects (claims, turns):
        a bucket that flushes each write to disk may skip it, so such an object
        can be missing (never half-written) after the machine stops; a cloud
        bucket's write is durable once acknowledged either way."""

    def create(self, key: str, data: bytes | memoryview, *, flush: bool = True) -> str | None:
        """:meth:`put`, answering the generation of the object it created.

        None when the object is not (or no longer) the one this call wrote: it
        existed, another writer replaced it at once, or the write was retried
        after an answer that was lost (read the object to tell). For an object
        replaced by generation later (a claim), whose writer needs its
        generation. This default reads the object back after :meth:`put`; a
        backend whose write answers the generation returns it directly.
        """
        from ...errors import ContentNotFoundError

        if not self.put(key, data, flush=flush):
            return None
        before = self.stat(key)
        try:
            now = self.get(key)
        except ContentNotFoundError:
            return None
        after = self.stat(key)
        if before is None or after != before or now != bytes(data):
            return None
        return before.generation

    @abstractmethod
    def replace(self, key: str, data: bytes | memoryview, generation: str) -> bool:
        """Write ``data`` over object ``key`` if it still is ``generation``; True if written.

        For repairs: the caller found the object of that generation damaged
        (its bytes do not match its name, or a result record it would never
        serve) and holds bytes it verified. When the object was replaced or
        removed meanwhile nothing is written and False is returned.
        """

    @abstractmethod
    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive; default the end) of object ``key``."""

    def get_into(
        self, key: str, consume: Callable[[memoryview], object], start: int = 0,
        end: int | None = None,
    ) -> int:
        """Stream bytes ``start`` to ``end`` of object ``key`` to ``consume``; return the count.

        ``consume`` is called with consecutive pieces, in order, each a
        memoryview that is valid only during the call (backends reuse the
        buffer). A backend that retries a dropped transfer resumes where it
        stopped, so every byte is handed over exactly once; an exception raised
        by ``consume`` ends the read and propagates. This default reads the
        range with :meth:`get` and hands it over in pieces.
        """
        data = memoryview(self.get(key, start, end))
        for offset in range(0, len(data), READ_PIECE):
            consume(data[offset : offset + READ_PIECE])
        return len(data)

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and generation of object ``key``, or None if it does not exist."""

    def size(self, key: str) -> int | None:
        """The size of object ``key``, or None if it does not exist."""
        info = self.stat(key)
        return None if info is None else info.size

    def exists(self, key: str) -> bool:
        """True when object ``key`` exists."""
        return self.size(key) is not None

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys of the objects whose key starts with ``prefix``, in lexical order."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove object ``key``; True if it existed."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (optional)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def check_key(key: str) -> str:
    """Refuse keys that could escape the bucket prefix or name nothing."""
    from ...errors import InvalidValueError

    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise InvalidValueError(f"not a valid bucket key: {key!r}")
    return key
