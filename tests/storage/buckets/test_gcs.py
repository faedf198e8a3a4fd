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
