"""The contract every :class:`~kachery_tasks.storage.buckets.base.Bucket` backend must pass.

Subclass :class:`BucketContract` in a test module, name the subclass
``Test...`` and give it a ``bucket`` fixture that returns a fresh, empty bucket
of the backend under test; pytest then runs every ``test_`` method below
against it::

    import pytest
    from kachery_tasks.storage.buckets import open_bucket
    from kachery_tasks.testing.buckets import BucketContract

    class TestS3Bucket(BucketContract):
        @pytest.fixture
        def bucket(self, tmp_path):
            return open_bucket(f"s3://test-bucket/{tmp_path.name}")

The suite checks what the rest of kachery-tasks relies on (see
``storage/buckets/base.py``): create-only writes (one winner among racing
writers), range reads, streamed reads in order, listing by prefix in lexical
order, deletion, key checks, and repairs that write over only the generation
they name. To see a read streamed in several pieces, it lowers
``READ_PIECE`` to 1000 bytes in every module along the bucket class's bases
that defines it: a backend that streams in pieces of its own takes their size
from a module-level ``READ_PIECE`` (as ``base``, ``local`` and ``gcs`` do).
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

from ..errors import ContentNotFoundError, InvalidValueError
from ..storage.buckets.base import Bucket

#: The piece size :meth:`BucketContract.test_get_into_streams_pieces_in_order` sets.
SMALL_PIECE = 1000


class BucketContract:
    """The behaviour kachery-tasks relies on from a bucket; see the module docstring."""

    @pytest.fixture
    def bucket(self) -> Bucket:
        """A fresh, empty bucket of the backend under test (override in the subclass)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a 'bucket' fixture returning a fresh, empty bucket"
        )

    def test_put_get_size_exists(self, bucket):
        assert bucket.put("blobs/sha256/abc", b"hello world")
        assert bucket.get("blobs/sha256/abc") == b"hello world"
        assert bucket.size("blobs/sha256/abc") == 11
        assert bucket.exists("blobs/sha256/abc")
        assert not bucket.exists("blobs/sha256/other")
        assert bucket.size("blobs/sha256/other") is None

    def test_put_is_create_only(self, bucket):
        assert bucket.put("k/one", b"first")
        assert not bucket.put("k/one", b"second")
        assert bucket.get("k/one") == b"first"

    def test_create_answers_the_generation_it_wrote(self, bucket):
        generation = bucket.create("c/one", b"first", flush=False)
        assert generation is not None and generation == bucket.stat("c/one").generation
        assert bucket.create("c/one", b"second") is None
        assert bucket.get("c/one") == b"first"
        assert bucket.replace("c/one", b"third", generation)  # the generation is usable
        assert bucket.get("c/one") == b"third"

    def test_range_reads(self, bucket):
        bucket.put("r", b"0123456789")
        assert bucket.get("r", 2, 5) == b"234"
        assert bucket.get("r", 7) == b"789"
        assert bucket.get("r", 0, 0) == b""

    def test_missing_object(self, bucket):
        with pytest.raises(ContentNotFoundError):
            bucket.get("nope/nothing")
        with pytest.raises(ContentNotFoundError):
            bucket.get_into("nope/nothing", lambda piece: None)

    def test_get_into_streams_pieces_in_order(self, bucket, monkeypatch):
        for cls in type(bucket).__mro__:  # several pieces even for a small object
            module = sys.modules.get(cls.__module__)
            if module is not None and hasattr(module, "READ_PIECE"):
                monkeypatch.setattr(module, "READ_PIECE", SMALL_PIECE)
        data = os.urandom(4500)
        bucket.put("g", data)

        def read(*args):
            pieces = []
            n = bucket.get_into("g", lambda piece: pieces.append(bytes(piece)), *args)
            assert n == sum(map(len, pieces))
            return pieces

        pieces = read()
        assert b"".join(pieces) == data and len(pieces) >= 5
        assert max(map(len, pieces)) <= SMALL_PIECE
        assert b"".join(read(1234, 3456)) == data[1234:3456]
        assert b"".join(read(4000)) == data[4000:]
        assert read(5, 5) == [] and read(4500) == []

    def test_list_by_prefix_in_order(self, bucket):
        for key in ("b/2", "a/1", "b/1", "c"):
            bucket.put(key, b"x")
        assert list(bucket.list("b/")) == ["b/1", "b/2"]
        assert list(bucket.list()) == ["a/1", "b/1", "b/2", "c"]

    def test_delete(self, bucket):
        bucket.put("d", b"x")
        assert bucket.delete("d")
        assert not bucket.delete("d")
        assert not bucket.exists("d")

    @pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "."])
    def test_bad_keys(self, bucket, key):
        with pytest.raises(InvalidValueError):
            bucket.put(key, b"x")

    def test_racing_writers_create_one_object(self, bucket):
        results = []

        def write(i):
            results.append(bucket.put("race/obj", b"same content"))

        threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count(True) == 1
        assert bucket.get("race/obj") == b"same content"

    def test_stat_tells_size_and_generation(self, bucket):
        assert bucket.stat("s/none") is None
        bucket.put("s/1", b"first")
        info = bucket.stat("s/1")
        assert info.size == 5 and info.generation
        assert bucket.stat("s/1") == info  # unchanged until replaced

    def test_replace_writes_over_only_the_generation_named(self, bucket):
        bucket.put("r/1", b"damaged")
        damaged = bucket.stat("r/1")
        assert bucket.replace("r/1", b"repaired!", damaged.generation)
        repaired = bucket.stat("r/1")
        assert repaired.size == 9 and repaired.generation != damaged.generation
        assert bucket.get("r/1") == b"repaired!"
        # A second repairer that also found the damaged object is too late: nothing is clobbered.
        assert not bucket.replace("r/1", b"other", damaged.generation)
        assert bucket.get("r/1") == b"repaired!" and bucket.stat("r/1") == repaired
        assert not bucket.replace("r/none", b"x", damaged.generation)
        assert not bucket.exists("r/none")
