"""register_bucket: a third party's backend is one module and one call."""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kachery_tasks
from kachery_tasks.errors import BucketError, InvalidValueError
from kachery_tasks.storage import buckets
from kachery_tasks.storage.buckets import open_bucket, register_bucket
from kachery_tasks.testing.buckets import BucketContract
from tests.storage.buckets.memory import MemoryBucket

MEMORY = "tests.storage.buckets.memory:MemoryBucket"


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """The registry and the open buckets as they were before the test, restored after it."""
    monkeypatch.setattr(buckets, "_BACKENDS", dict(buckets._BACKENDS))
    monkeypatch.setattr(buckets, "_open", dict(buckets._open))


class TestRegisteredMemoryBucket(BucketContract):
    @pytest.fixture
    def bucket(self):
        kachery_tasks.register_bucket("mem", MEMORY)
        bucket = open_bucket(f"mem://{uuid.uuid4().hex}")
        assert type(bucket) is MemoryBucket
        return bucket


def test_the_public_face_exports_register_bucket():
    assert kachery_tasks.register_bucket is register_bucket
    assert "register_bucket" in kachery_tasks.__all__


def test_content_travels_between_nodes_through_a_registered_backend(tmp_path):
    from kachery_tasks.storage.sync import download, upload
    from tests.storage.nodes import _node

    register_bucket("mem", MEMORY)
    a, b = _node(tmp_path, "a"), _node(tmp_path, "b")
    bucket = open_bucket("mem://lab-share")
    data = os.urandom(3 * 65536 + 17)  # above the chunk size: chunks and a manifest
    uri = a.store_bytes(data)
    assert upload(a, bucket, uri).objects_written >= 4
    with open(download(b, bucket, uri), "rb") as f:
        assert f.read() == data
    assert open_bucket("mem://lab-share") is bucket  # one instance per URL


def test_the_backend_module_is_imported_on_first_use(tmp_path, monkeypatch):
    (tmp_path / "lab_buckets.py").write_text(
        "from tests.storage.buckets.memory import MemoryBucket as LabBucket\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_bucket("lab+mem", "lab_buckets:LabBucket")
    assert "lab_buckets" not in sys.modules
    bucket = open_bucket("lab+mem://x")
    assert "lab_buckets" in sys.modules and isinstance(bucket, MemoryBucket)
    monkeypatch.delitem(sys.modules, "lab_buckets")


def test_registering_the_same_backend_again_changes_nothing():
    register_bucket("mem", MEMORY)
    register_bucket("mem", MEMORY)
    assert buckets._BACKENDS["mem"] == MEMORY


@pytest.mark.parametrize("scheme", ["file", "gs"])
def test_a_scheme_keeps_its_backend(scheme):
    before = buckets._BACKENDS[scheme]
    with pytest.raises(InvalidValueError, match=f"{scheme}:// is already registered"):
        register_bucket(scheme, MEMORY)
    assert buckets._BACKENDS[scheme] == before


def test_an_unknown_scheme_names_the_registered_ones():
    register_bucket("mem", MEMORY)
    with pytest.raises(InvalidValueError, match=r"file://, gs://, mem:// .*register_bucket"):
        open_bucket("s3://bucket/x")


@pytest.mark.parametrize(
    "target, why",
    [
        ("tests.storage.buckets.no_such_module:MemoryBucket", "ModuleNotFoundError"),
        ("tests.storage.buckets.memory:NoSuchBucket", "AttributeError"),
        ("broken_backend:Whatever", "RuntimeError: cannot reach the service"),
    ],
)
def test_a_backend_that_cannot_be_imported_is_an_error_naming_the_scheme(
    target, why, tmp_path, monkeypatch
):
    (tmp_path / "broken_backend.py").write_text(
        'raise RuntimeError("cannot reach\\nthe service")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    register_bucket("lab-store", target)  # nothing is imported yet
    for _ in range(2):  # not cached: the same error each time
        with pytest.raises(BucketError) as e:
            open_bucket("lab-store://shared/x")
        message = str(e.value)
        assert "lab-store://" in message and target in message and why in message
        assert "\n" not in message
    assert "lab-store://shared/x" not in buckets._open


@pytest.mark.parametrize("target", [
    "builtins:dict", "kachery_tasks.storage.buckets:open_bucket",
    "kachery_tasks.storage.buckets.base:ObjectInfo", "kachery_tasks.storage.buckets:ENV_BUCKET",
])
def test_a_backend_that_is_not_a_bucket_is_an_error_naming_the_scheme(target):
    register_bucket("notabucket", target)
    with pytest.raises(BucketError, match=r"notabucket:// buckets, .* is not a subclass"):
        open_bucket("notabucket://x")


@pytest.mark.parametrize(
    "scheme", ["", "S3", "s3://", "3s", "-s", "s 3", "s_3", "s3:", "s/3", "é", None, b"s3"]
)
def test_a_bad_scheme_is_refused(scheme):
    with pytest.raises(InvalidValueError, match="not a valid bucket scheme"):
        register_bucket(scheme, MEMORY)
    assert scheme not in buckets._BACKENDS


@pytest.mark.parametrize(
    "target",
    ["", "memory", "memory:", ":MemoryBucket", "a:b:c", "tests..memory:M", "tests.storage.:M",
     "tests/storage/memory.py:M", "tests.storage.memory:Memory Bucket", "m:Bucket()", None, 3],
)
def test_a_bad_target_is_refused(target):
    with pytest.raises(InvalidValueError, match=r"mem:// buckets.*'package\.module:ClassName'"):
        register_bucket("mem", target)
    assert "mem" not in buckets._BACKENDS


@given(st.one_of(
    st.text(max_size=12),
    st.text(alphabet="aZ3+.-_:/ é", max_size=6),  # near misses: the characters around the rule
    st.from_regex(r"[a-z][a-z0-9+.-]{0,10}", fullmatch=True),
))
def test_a_scheme_is_refused_or_opens_its_urls(scheme):
    """A refused scheme leaves the registry as it was; an accepted one is what
    open_bucket reads back from a URL of it."""
    backends, opened = dict(buckets._BACKENDS), dict(buckets._open)
    try:
        try:
            register_bucket(scheme, MEMORY)
        except InvalidValueError:
            assert backends == buckets._BACKENDS  # unchanged
            return
        assert isinstance(open_bucket(f"{scheme}://bucket/prefix"), MemoryBucket)
    finally:
        buckets._BACKENDS, buckets._open = backends, opened


def test_the_default_create_answers_none_for_an_object_replaced_at_once():
    """A backend without its own ``create`` (this one) is read back after ``put``: an
    object another writer replaced meanwhile is not taken for this call's."""

    class Raced(MemoryBucket):
        def put(self, key, data, *, flush=True):
            wrote = super().put(key, data, flush=flush)
            self.replace(key, b"theirs", self.stat(key).generation)  # another writer
            return wrote

    bucket = Raced("mem://raced")
    assert bucket.create("c/k", b"mine") is None
    assert MemoryBucket("mem://calm").create("c/k", b"mine") is not None
