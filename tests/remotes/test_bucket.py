"""BucketRemote: the remote contract on file:// and on gs:// (fake-gcs-server)."""

from __future__ import annotations

import pytest

from kachery_tasks.remotes.bucket import BucketRemote
from kachery_tasks.testing.remotes import RemoteContract


class TestFileBucketRemote(RemoteContract):
    @pytest.fixture
    def remote(self, tmp_path):
        return BucketRemote(f"file://{tmp_path}/bucket")


class TestGCSBucketRemote(RemoteContract):
    @pytest.fixture
    def remote(self, gcs_bucket_url):
        return BucketRemote(gcs_bucket_url)


def test_result_records_of_a_batch_are_fetched_several_at_once(tmp_path):
    import threading

    remote = BucketRemote(f"file://{tmp_path}/bucket")
    remote.bucket.requests_at_once = 8  # as a cloud bucket says (GCSBucket inherits it)
    ids = [f"sha256:{i:064x}" for i in range(16)]
    for tid in ids:
        remote.put_result_record(tid, b"{}")
    barrier = threading.Barrier(4, timeout=10)
    real_get = remote.bucket.get

    def get(key, *a):
        barrier.wait()  # only passes when four requests are in flight at once
        return real_get(key, *a)

    remote.bucket.get = get
    try:
        assert len(remote.get_result_records(ids)) == 16
    finally:
        remote.bucket.get = real_get


def test_a_directory_bucket_looks_records_up_one_after_the_other_in_the_caller(tmp_path):
    import threading

    from kachery_tasks.storage.buckets.gcs import GCSBucket

    assert GCSBucket.requests_at_once > 1
    remote = BucketRemote(f"file://{tmp_path}/bucket")
    ids = [f"sha256:{i:064x}" for i in range(16)]
    for tid in ids[::2]:
        remote.put_result_record(tid, b"{}")
    threads = set()
    real_get = remote.bucket.get

    def get(key, *a):
        threads.add(threading.get_ident())
        return real_get(key, *a)

    remote.bucket.get = get
    assert set(remote.get_result_records(ids)) == set(ids[::2])
    assert threads == {threading.get_ident()}  # no threads: each look is a system call
