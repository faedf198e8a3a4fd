"""Import of a kachery / kachery-cloud storage directory (``<dir>/sha1/ab/cd/ef/<sha1>``)."""

import hashlib
import os

import pytest

from kachery_tasks.errors import SourceFileError
from kachery_tasks.nodes import current_node
from kachery_tasks.storage.kachery_import import import_kachery_dir


def _put(root, data: bytes, name: str | None = None):
    sha1 = name or hashlib.sha1(data).hexdigest()
    d = root / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6]
    d.mkdir(parents=True, exist_ok=True)
    (d / sha1).write_bytes(data)
    return sha1


def test_import_verifies_and_resolves_sha1_uris(tmp_path):
    root = tmp_path / "kachery-cloud"
    good = [_put(root, os.urandom(n)) for n in (10, 5000, 1)]
    tampered = _put(root, b"edited after storing", name="1" * 40)
    report = import_kachery_dir(root, current_node().store, progress=False)
    assert report.imported == 3 and report.already == 0
    assert [p for p, _ in report.failed] == [str(root / "sha1/11/11/11" / tampered)]
    store = current_node().store
    for sha1 in good:
        with open(store.load_file(f"sha1://{sha1}?label=x"), "rb") as f:
            assert hashlib.sha1(f.read()).hexdigest() == sha1
    assert not store.has("sha1://" + "1" * 40)
    again = import_kachery_dir(root, current_node().store, progress=False)
    assert again.imported == 0 and again.already == 3


def test_not_a_kachery_dir(tmp_path):
    with pytest.raises(SourceFileError, match="sha1/"):
        import_kachery_dir(tmp_path, current_node().store, progress=False)


def test_dangling_links_and_pipes_in_the_tree_are_reported_and_skipped(tmp_path):
    root = tmp_path / "kachery"
    good = _put(root, b"a good file")
    d = root / "sha1" / "22" / "22" / "22"
    d.mkdir(parents=True)
    (d / ("2" * 40)).symlink_to(tmp_path / "gone")
    os.mkfifo(d / ("3" * 40))
    report = import_kachery_dir(root, current_node().store, progress=False)
    assert report.imported == 1 and current_node().store.has(f"sha1://{good}")
    why = dict(report.failed)
    dangling = why[str(d / ("2" * 40))]
    assert "symbolic link" in dangling and "does not exist" in dangling
    assert "named pipe" in why[str(d / ("3" * 40))]
    assert all("\n" not in w for w in why.values())


def test_the_command_reports_them_and_exits_1(tmp_path, run_cli):
    root = tmp_path / "kachery"
    _put(root, b"fine")
    d = root / "sha1" / "44" / "44" / "44"
    d.mkdir(parents=True)
    (d / ("4" * 40)).symlink_to(tmp_path / "gone")
    r = run_cli("import-kachery", str(root))
    assert r.returncode == 1 and b"Traceback" not in r.stderr
    assert b"imported 1 files" in r.stdout
    assert r.stderr.decode().count("\n") == 1 and "symbolic link" in r.stderr.decode()


def test_a_directory_name_too_long_is_a_clear_error(tmp_path):
    with pytest.raises(SourceFileError, match="cannot read"):
        import_kachery_dir(tmp_path / ("n" * 300), current_node().store, progress=False)
