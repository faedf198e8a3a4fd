import errno
import os
import stat

import pytest

from kachery_tasks.errors import StorageFullError, StoragePermissionError
from kachery_tasks.fsutil import ensure_dir, os_error, write_atomic


def test_shared_dirs_are_group_writable_whatever_the_umask(tmp_path):
    root = tmp_path / "lab"
    root.mkdir()
    os.chmod(root, 0o2775)
    old = os.umask(0o022)
    try:
        deep = ensure_dir(root / "a" / "b" / "c", shared=True)
    finally:
        os.umask(old)
    for d in (root / "a", root / "a" / "b", deep):
        mode = os.stat(d).st_mode
        assert mode & stat.S_IWGRP, oct(mode)
        assert mode & stat.S_ISGID, oct(mode)


def test_private_dirs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        d = ensure_dir(tmp_path / "x" / "y")
    finally:
        os.umask(old)
    assert not os.stat(d).st_mode & stat.S_IWGRP


def test_write_atomic_replaces_whole_file(tmp_path):
    p = tmp_path / "f"
    write_atomic(p, b"one")
    write_atomic(p, b"two two")
    assert p.read_bytes() == b"two two"
    assert [x.name for x in tmp_path.iterdir()] == ["f"]


def test_os_errors_become_actionable():
    full = os_error(OSError(errno.ENOSPC, "No space left on device"), "cannot store")
    assert isinstance(full, StorageFullError) and "gc" in str(full)
    denied = os_error(PermissionError(errno.EACCES, "Permission denied", "/x"), "cannot store")
    assert isinstance(denied, StoragePermissionError) and "/x" in str(denied)


def test_write_atomic_reports_full_disk(tmp_path, monkeypatch):
    def no_space(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(StorageFullError):
        write_atomic(tmp_path / "f", b"data")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_write_all_loops_over_short_writes(tmp_path, monkeypatch):
    import os as _os

    from kachery_tasks import fsutil

    real_write, real_pwrite = _os.write, _os.pwrite
    monkeypatch.setattr(fsutil.os, "write", lambda fd, b: real_write(fd, bytes(b[:3])))
    monkeypatch.setattr(fsutil.os, "pwrite", lambda fd, b, o: real_pwrite(fd, bytes(b[:5]), o))
    path = tmp_path / "f"
    fd = _os.open(path, _os.O_RDWR | _os.O_CREAT)
    try:
        fsutil.write_all(fd, b"0123456789abcdef")
        fsutil.write_all(fd, memoryview(b"XXXXXXXXXXXX"), offset=2)
    finally:
        _os.close(fd)
    assert path.read_bytes() == b"01XXXXXXXXXXXXef"
