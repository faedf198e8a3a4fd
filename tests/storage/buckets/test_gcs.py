"""The gs:// backend against a real GCS API (fake-gcs-server started by the fixture)."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from kachery_tasks.errors import (
    BucketAccessError,
    BucketNotFoundError,
    InvalidValueError,
    TransferError,
)
from kachery_tasks.storage.buckets import gcs
from kachery_tasks.storage.buckets.gcs import GCSBucket
from kachery_tasks.testing.buckets import BucketContract


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
        GCSBucket("gs://some-bucket/x").get("k")


def test_missing_credentials_are_named_without_secrets(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(BucketAccessError) as e:
        GCSBucket("gs://some-bucket/x").get("k")
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


@pytest.mark.parametrize("name", ["UPPER_case!", "ab", "-starts-with-dash", "a..b" + "c" * 70])
def test_a_bad_bucket_name_is_refused_before_any_request(name):
    with pytest.raises(InvalidValueError, match="not a valid Cloud Storage bucket name"):
        GCSBucket(f"gs://{name}/x")


def _limits(**kw):
    from kachery_tasks.config import TransferLimits

    return TransferLimits(**{"request_timeout": 0.5, "deadline": 2.0, "min_rate": 10**9, **kw})


def _proxied_bucket(gcs_emulator, monkeypatch, limits):
    """A fresh bucket reached through a proxy that can stop answering."""
    from tests.silent_proxy import Proxy

    proxy = Proxy(gcs_emulator.port)
    name = f"proxied-{os.urandom(4).hex()}"
    gcs_emulator.create_bucket(name)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    return proxy, GCSBucket(f"gs://{name}/k", limits)


def _outcome(fn, *args):
    """What ``fn(*args)`` raised, run on a thread that a hang cannot block the test on."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(fn, *args).exception(timeout=120)  # (TimeoutError if it hung)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def test_a_server_that_stops_answering_fails_a_download_by_its_deadline(
    tmp_path, gcs_emulator, monkeypatch
):
    from kachery_tasks.storage.sync import download, upload
    from tests.storage.nodes import _node

    proxy, bucket = _proxied_bucket(gcs_emulator, monkeypatch, _limits())
    try:
        a, b = _node(tmp_path, "a"), _node(tmp_path, "b")
        uri = a.store_bytes(os.urandom(4 * 65536))
        upload(a, bucket, uri)
        proxy.silent.set()
        error = _outcome(download, b, bucket, uri)
    finally:
        proxy.close()
    assert isinstance(error, TransferError), error
    assert bucket.url in str(error) and "no answer within 0.5 s" in str(error)
    assert "request_timeout" in str(error)
    assert not b.has(uri)


def test_a_read_that_trickles_past_its_deadline_is_given_up(gcs_emulator, monkeypatch):
    """Each piece comes well within the request timeout, but the whole is too slow."""
    proxy, bucket = _proxied_bucket(gcs_emulator, monkeypatch, _limits(deadline=1.0))
    try:
        bucket.put("slow", os.urandom(64 * 1024))
        proxy.throttle = 0.05  # 64 KiB in about 3 s, 1 KiB every 50 ms
        error = _outcome(bucket.get_into, "slow", lambda piece: None)
    finally:
        proxy.close()
    assert isinstance(error, TransferError), error
    assert "past its deadline" in str(error) and bucket.url in str(error)


def test_transfer_limits_come_from_the_node_config(node_path):
    node_path.mkdir()
    (node_path / "config.toml").write_text(
        '[bucket]\nrequest_timeout = 3\ndeadline = 7.5\nmin_rate = "1MB"\n'
    )
    limits = GCSBucket("gs://some-bucket/x").limits
    assert (limits.request_timeout, limits.deadline, limits.min_rate) == (3.0, 7.5, 10**6)
    assert limits.deadline_for(5 * 10**6) == 12.5


@pytest.mark.parametrize(
    "line", ["request_timeout = 0", "deadline = -1", 'deadline = "soon"', "request_timeout = true",
             'min_rate = "fast"', "min_rate = 0"],
)
def test_bad_transfer_limits_are_config_errors(line):
    from kachery_tasks.config import Config
    from kachery_tasks.errors import ConfigError

    with pytest.raises(ConfigError, match=r"x\.toml: bucket\.(request_timeout|deadline|min_rate)"):
        Config.from_toml(f"[bucket]\n{line}\n", "x.toml")
