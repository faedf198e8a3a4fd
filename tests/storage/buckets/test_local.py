import errno
import os

import pytest

from kachery_tasks.errors import BucketAccessError, BucketNotFoundError, InvalidValueError
from kachery_tasks.storage.buckets import open_bucket
from kachery_tasks.storage.buckets.local import FileBucket
from kachery_tasks.testing.buckets import BucketContract


@pytest.fixture
def no_unnamed_files(monkeypatch):
    """A filesystem with no files without a name (``O_TMPFILE``; NFS, say): ``open``
    refuses them as such a filesystem does. Answers how many were asked for."""
    asked = []
    real = os.open

    def refusing(path, flags, *args, **kwargs):
        if flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1):
            asked.append(path)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported", str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    return asked


class TestFileBucket(BucketContract):
    @pytest.fixture
    def bucket(self, tmp_path):
        return open_bucket(f"file://{tmp_path}/bucket")


class TestFileBucketWithoutUnnamedFiles(BucketContract):
    @pytest.fixture
    def bucket(self, tmp_path, no_unnamed_files):
        return open_bucket(f"file://{tmp_path}/bucket")


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "temporary name"])
def test_an_object_has_no_name_until_it_is_whole_and_leaves_no_other_name(
        tmp_path, monkeypatch, request, unnamed):
    """Readers never see a partial object: while its bytes are flushed, its name does not
    exist yet; and once written, the directory holds the object's name alone."""
    if not unnamed:
        request.getfixturevalue("no_unnamed_files")
    bucket = FileBucket(f"file://{tmp_path}/bucket")
    final = tmp_path / "bucket" / "r" / "rec"
    seen = []
    real = os.fsync

    def look(fd):
        seen.append(final.exists())
        real(fd)

    monkeypatch.setattr(os, "fsync", look)
    assert bucket.put("r/rec", b"whole")
    assert seen == [False]
    assert [p.name for p in final.parent.iterdir()] == ["rec"]
    assert final.read_bytes() == b"whole"
    assert bucket.create("r/rec", b"other") is None and not bucket.put("r/rec", b"other")
    assert [p.name for p in final.parent.iterdir()] == ["rec"]
    assert final.read_bytes() == b"whole"


def test_a_filesystem_without_unnamed_files_is_asked_once(tmp_path, no_unnamed_files):
    bucket = FileBucket(f"file://{tmp_path}/bucket")
    for i in range(3):
        assert bucket.create(f"c/{i}", b"x", flush=False) == bucket.stat(f"c/{i}").generation
    if hasattr(os, "O_TMPFILE"):
        assert len(no_unnamed_files) == 1
    assert sorted(p.name for p in (tmp_path / "bucket" / "c").iterdir()) == ["0", "1", "2"]


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="files with no name are Linux's")
def test_a_system_without_proc_links_through_a_temporary_name(tmp_path, monkeypatch):
    """An unnamed file is linked through ``/proc/self/fd``; without /proc (a chroot, say)
    the bucket writes through temporary names instead, and nothing is left behind."""
    real_link, real_exists = os.link, os.path.exists

    def no_proc_link(src, dst, **kwargs):
        if str(src).startswith("/proc/"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(src))
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", no_proc_link)
    monkeypatch.setattr(os.path, "exists",
                        lambda p: False if str(p).startswith("/proc/") else real_exists(p))
    bucket = FileBucket(f"file://{tmp_path}/bucket")
    assert bucket.put("r/a", b"one") and bucket.put("r/b", b"two")
    assert bucket.get("r/a") == b"one" and bucket.get("r/b") == b"two"
    assert sorted(p.name for p in (tmp_path / "bucket" / "r").iterdir()) == ["a", "b"]


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
    flushed = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(fd), real(fd)))
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


def test_create_answers_the_generation_left_once_its_temporary_name_is_gone(
        tmp_path, monkeypatch, no_unnamed_files):
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
