"""The gs:// backend against a real GCS API (fake-gcs-server started by the fixture)."""

import pytest

from kachery_tasks.errors import BucketAccessError, BucketNotFoundError, TransferError
from kachery_tasks.storage.buckets import gcs
from kachery_tasks.storage.buckets.gcs import GCSBucket
from tests.storage.buckets.contract import BucketContract


class TestGCSBucket(BucketContract):
    @pytest.fixture
    def bucket(self, gcs_bucket_url):
        return GCSBucket(gcs_bucket_url)


def test_prefix_isolates_objects(gcs_bucket_url):
    a = GCSBucket(gcs_bucket_url)
    b = GCSBucket(gcs_bucket_url.rsplit("/", 1)[0] + "/other")
    a.put("x", b"1")
    assert not b.exists("x")
    assert list(b.list()) == []


def test_bucket_that_does_not_exist(gcs_emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    with pytest.raises(BucketNotFoundError, match="no-such-bucket"):
        GCSBucket("gs://no-such-bucket/x").put("k", b"x")


def test_unreachable_service_is_a_transfer_error(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setattr(gcs, "RETRIES", 1)
    monkeypatch.setattr(gcs, "BACKOFF", 0.01)
    with pytest.raises(TransferError, match="after 2 attempts"):
        GCSBucket("gs://b/x").get("k")


def test_missing_credentials_are_named_without_secrets(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(BucketAccessError) as e:
        GCSBucket("gs://b/x").get("k")
    assert "credentials" in str(e.value)


def test_get_into_resumes_a_dropped_read_where_it_stopped(gcs_bucket_url, monkeypatch):
    import http.client
    import os

    monkeypatch.setattr(gcs, "BACKOFF", 0.01)
    monkeypatch.setattr(gcs, "READ_PIECE", 1000)
    bucket = GCSBucket(gcs_bucket_url)
    data = os.urandom(10_000)
    bucket.put("big", data)
    ranges = []
    real_request = None

    def request(self, method, url, *args, headers=None, **kwargs):
        ranges.append((headers or {}).get("Range"))
        return real_request(self, method, url, *args, headers=headers, **kwargs)

    import requests

    real_request = requests.Session.request
    monkeypatch.setattr(requests.Session, "request", request)
    real_readinto = http.client.HTTPResponse.readinto
    calls = {"n": 0, "dropped_at": None}
    pieces = []

    def readinto(self, b):  # the connection drops after the third piece
        calls["n"] += 1
        if calls["n"] == 4:
            calls["dropped_at"] = sum(map(len, pieces))
            raise http.client.IncompleteRead(b"")
        return real_readinto(self, b)

    monkeypatch.setattr(http.client.HTTPResponse, "readinto", readinto)
    assert bucket.get_into("big", lambda p: pieces.append(bytes(p))) == len(data)
    assert b"".join(pieces) == data
    assert 0 < calls["dropped_at"] < len(data)
    assert ranges[-2:] == [None, f"bytes={calls['dropped_at']}-"]


def test_get_into_resumes_a_read_that_ends_early_without_an_error(gcs_bucket_url, monkeypatch):
    """A connection closed before Content-Length bytes reads as a quiet end of
    data in http.client; it is resumed, never taken for the end of the object."""
    import http.client
    import os

    monkeypatch.setattr(gcs, "BACKOFF", 0.01)
    monkeypatch.setattr(gcs, "READ_PIECE", 1000)
    bucket = GCSBucket(gcs_bucket_url)
    data = os.urandom(10_000)
    bucket.put("big", data)
    real_readinto = http.client.HTTPResponse.readinto
    calls = {"n": 0}

    def readinto(self, b):  # the first response ends quietly after two pieces
        calls["n"] += 1
        if calls["n"] == 3:
            return 0
        return real_readinto(self, b)

    monkeypatch.setattr(http.client.HTTPResponse, "readinto", readinto)
    pieces: list[bytes] = []
    assert bucket.get_into("big", lambda p: pieces.append(bytes(p))) == len(data)
    assert b"".join(pieces) == data
