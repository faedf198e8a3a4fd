"""A toy bucket that keeps its objects in this process's memory, under ``mem://NAME``.

It stands for a third party's backend: one module with a Bucket subclass,
added with one call, ``register_bucket("mem", "tests.storage.buckets.memory:MemoryBucket")``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

from kachery_tasks.errors import ContentNotFoundError
from kachery_tasks.storage.buckets.base import Bucket, ObjectInfo, check_key

_generations = itertools.count(1)


class MemoryBucket(Bucket):
    """Objects in a dict: key -> (bytes, generation). Gone when the process ends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._objects: dict[str, tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes | memoryview, *, flush: bool = True) -> bool:
        check_key(key)
        with self._lock:
            if key in self._objects:
                return False
            self._objects[key] = (bytes(data), str(next(_generations)))
            return True

    def replace(self, key: str, data: bytes | memoryview, generation: str) -> bool:
        check_key(key)
        with self._lock:
            if key not in self._objects or self._objects[key][1] != generation:
                return False
            self._objects[key] = (bytes(data), str(next(_generations)))
            return True

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        check_key(key)
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise ContentNotFoundError(f"no object {key!r} in {self.url}")
        return found[0][start:end]

    def stat(self, key: str) -> ObjectInfo | None:
        check_key(key)
        with self._lock:
            found = self._objects.get(key)
        return None if found is None else ObjectInfo(len(found[0]), found[1])

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            keys = sorted(k for k in self._objects if k.startswith(prefix))
        return iter(keys)

    def delete(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return self._objects.pop(key, None) is not None
