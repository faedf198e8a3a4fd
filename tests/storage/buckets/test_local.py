import pytest

from kachery_tasks.errors import BucketAccessError, BucketNotFoundError, InvalidValueError
from kachery_tasks.storage.buckets import open_bucket
from kachery_tasks.storage.buckets.local import FileBucket
from kachery_tasks.testing.buckets import BucketContract


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


@pytest.mark.parametrize("url", ["file://", "file://localhost", "file://relative/x"])
def test_a_url_without_an_absolute_path_is_refused(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((InvalidValueError, BucketNotFoundError), match="file://"):
        FileBucket(url)
    assert list(tmp_path.iterdir()) == []  # nothing written into the current directory


def test_an_unreadable_bucket_directory_is_an_access_error(tmp_path, monkeypatch):
    import errno
    import os

    bucket = FileBucket(f"file://{tmp_path}/bucket")
    real_stat = os.stat

    def denied(path, *args, **kwargs):  # what a directory of mode 000 does to another user
        if str(path).startswith(str(bucket.root) + "/"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", denied)
    for call in (lambda: bucket.exists("blobs/x"), lambda: bucket.put("blobs/x", b"1"),
                 lambda: bucket.size("blobs/x")):
        with pytest.raises(BucketAccessError, match="permission denied"):
            call()


def test_a_put_is_flushed_unless_asked_not_to(tmp_path, monkeypatch):
    """Objects are fsynced before they get their name; short-lived coordination objects
    (``flush=False``: claims, turns) skip the flush, and are still whole once named."""
    import os

    from kachery_tasks import fsutil

    flushed = []
    real = os.fsync
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (flushed.append(fd), real(fd)))
    bucket = open_bucket(f"file://{tmp_path}")
    assert bucket.put("a/result", b"kept")
    assert len(flushed) == 1
    assert bucket.put("a/claim", b"short-lived", flush=False)
    assert len(flushed) == 1
    assert bucket.get("a/claim") == b"short-lived" and bucket.get("a/result") == b"kept"
    assert not bucket.put("a/claim", b"again", flush=False)  # still create-only


@pytest.mark.parametrize("how", ["renamed over", "deleted and created again"])
def test_create_answers_none_when_another_writer_replaced_the_object_at_once(tmp_path,
                                                                            monkeypatch, how):
    """A claim's writer must not take another writer's object for its own: between the
    link and the look, the name may already hold another file (even one that reuses the
    inode number of a file just deleted)."""
    import os

    bucket = FileBucket(f"file://{tmp_path}/bucket")
    real = FileBucket._link_new

    def then_replaced(self, key, data, flush, keep_open):
        got = real(self, key, data, flush, keep_open)
        final = self._path(key)
        if how == "renamed over":
            other = final.parent / "other"
            other.write_bytes(b"theirs")
            os.replace(other, final)
        else:
            os.unlink(final)
            final.write_bytes(b"theirs")
        return got

    monkeypatch.setattr(FileBucket, "_link_new", then_replaced)
    assert bucket.create("c/k", b"mine") is None
    assert bucket.get("c/k") == b"theirs"
    monkeypatch.undo()
    assert bucket.create("c/new", b"mine") == bucket.stat("c/new").generation


def test_create_answers_the_generation_left_once_its_temporary_name_is_gone(tmp_path,
                                                                           monkeypatch):
    """Removing the temporary name changes the file's change time, part of its generation:
    the generation answered is the one a later ``replace`` must name, even when that
    removal falls on a later tick of the kernel's clock."""
    import time

    from kachery_tasks.storage.buckets import local

    real = local._unlink_quietly

    def late_unlink(path):
        time.sleep(0.02)  # past the coarse clock's tick (1-10 ms)
        real(path)

    monkeypatch.setattr(local, "_unlink_quietly", late_unlink)
    bucket = FileBucket(f"file://{tmp_path}/bucket")
    generation = bucket.create("c/k", b"mine", flush=False)
    assert generation == bucket.stat("c/k").generation
    assert bucket.replace("c/k", b"renewed", generation)
