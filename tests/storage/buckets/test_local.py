import pytest

from kachery_tasks.errors import BucketNotFoundError, InvalidValueError
from kachery_tasks.storage.buckets import open_bucket
from kachery_tasks.storage.buckets.local import FileBucket
from tests.storage.buckets.contract import BucketContract


class TestFileBucket(BucketContract):
    @pytest.fixture
    def bucket(self, tmp_path):
        return open_bucket(f"file://{tmp_path}/bucket")


def test_remote_host_is_refused():
    with pytest.raises(BucketNotFoundError):
        FileBucket("file://server/share")


def test_missing_dir_without_create(tmp_path):
    with pytest.raises(BucketNotFoundError):
        FileBucket(f"file://{tmp_path}/none", create=False)


def test_unknown_scheme():
    with pytest.raises(InvalidValueError, match="gs://"):
        open_bucket("s3://bucket/x")
