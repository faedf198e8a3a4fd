"""kachery-tasks upload / download of a zarr array through a file:// bucket."""

from __future__ import annotations

import numpy as np

from kachery_tasks.nodes import current_node
from kachery_tasks.zarr_arrays import store_zarr


def _one_line_error(code, err):
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_upload_repair_replaces_a_damaged_chunk(run_cli, tmp_path, node_path):
    import os

    from kachery_tasks.storage.buckets import open_bucket
    from kachery_tasks.storage.sync import chunk_key

    node_path.mkdir()
    (node_path / "config.toml").write_text('[store]\nchunk_size = "64KiB"\n')
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 65536))
    uri = run_cli("store", str(src), check=True).stdout.decode().strip()
    bucket_url = f"file://{tmp_path}/bucket"
    victim = chunk_key(current_node().store.manifest(uri).chunks[1].sha256)
    open_bucket(bucket_url).put(victim, os.urandom(65536))
    assert run_cli("upload", uri, "--bucket", bucket_url, check=True).returncode == 0
    other = {"KACHERY_TASKS_DIR": str(tmp_path / "other")}
    down = run_cli("download", uri, "--bucket", bucket_url, env=other)
    assert "kachery-tasks upload --repair" in _one_line_error(down.returncode, down.stderr.decode())
    up = run_cli("upload", uri, "--bucket", bucket_url, "--repair")
    assert up.returncode == 0 and "1 of them replaced damaged objects" in up.stdout.decode()
    assert run_cli("download", uri, "--bucket", bucket_url, env=other).returncode == 0
    again = run_cli("upload", uri, "--bucket", bucket_url, "--repair").stdout.decode()
    assert "already in the bucket, every object checked" in again


def _main(capsys, *args):
    from kachery_tasks.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_download_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import os

    from kachery_tasks.config import init_node_dir
    from kachery_tasks.storage import fetch
    from kachery_tasks.storage.buckets import open_bucket
    from kachery_tasks.storage.local import get_store
    from kachery_tasks.storage.sync import upload

    a = tmp_path / "a"
    a.mkdir()
    (a / "config.toml").write_text('[store]\nchunk_size = "64KiB"\n')
    store_a = get_store(init_node_dir(a))
    uri = store_a.store_bytes(os.urandom(4 * 65536))
    bucket = f"file://{tmp_path}/bucket"
    upload(store_a, open_bucket(bucket), uri)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fetch, "write_all", no_space)
    err = _one_line_error(*_main(capsys, "download", uri, "--bucket", bucket))
    assert "no space left" in err and "partial download was removed" in err
    assert os.listdir(current_node().store.incoming) == []


def test_a_file_bucket_url_without_a_path_is_refused(tmp_path, monkeypatch, capsys):
    from kachery_tasks.files import store_bytes

    uri = store_bytes(b"content")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    err = _one_line_error(*_main(capsys, "upload", uri, "--bucket", "file://"))
    assert "absolute path" in err
    assert list(work.iterdir()) == []  # nothing written into the current directory


def test_a_bad_gs_bucket_name_is_one_line(capsys):
    err = _one_line_error(*_main(capsys, "download", "sha256://" + "a" * 64, "--bucket",
                                 "gs://UPPER_case!/x"))
    assert "not a valid Cloud Storage bucket name" in err


def test_an_unreadable_bucket_directory_is_one_line(tmp_path, run_cli):
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from kachery_tasks.files import store_bytes

    uri = store_bytes(b"content")
    if os.geteuid() != 0:
        bucket = tmp_path / "bucket"
        bucket.mkdir(mode=0o000)
        r = run_cli("upload", uri, "--bucket", f"file://{bucket}")
        code, err = r.returncode, r.stderr.decode()
    else:  # root reads everything: run the command as another user
        base = Path(tempfile.mkdtemp(prefix="kachery-unreadable-"))
        os.chmod(base, 0o755)
        (base / "bucket").mkdir(mode=0o700)  # root's; the other user may not enter it
        (base / "node").mkdir()
        os.chmod(base / "node", 0o777)
        script = (
            "import os, sys, importlib.metadata\n"
            "from kachery_tasks.cli import build_parser, main\n"
            "import kachery_tasks.storage.sync, kachery_tasks.storage.buckets.local\n"
            "build_parser()  # everything imported while the interpreter's files are readable\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            f"sys.exit(main(['download', {uri!r}, '--bucket', 'file://{base}/bucket']))\n"
        )
        env = {**os.environ, "KACHERY_TASKS_DIR": str(base / "node"),
               "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env,
                           timeout=60)
        code, err = r.returncode, r.stderr.decode()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    err = _one_line_error(code, err)
    assert "permission denied" in err and "bucket" in err


def test_a_gs_server_that_never_answers_is_one_line(run_cli, node_path):
    from tests.silent_proxy import Proxy

    node_path.mkdir()
    (node_path / "config.toml").write_text("[bucket]\nrequest_timeout = 0.3\ndeadline = 1\n")
    server = Proxy()  # accepts connections, never answers
    try:
        r = run_cli("download", "sha256://" + "a" * 64, "--bucket", "gs://lab-share/kachery",
                    env={"STORAGE_EMULATOR_HOST": server.url})
    finally:
        server.close()
    err = _one_line_error(r.returncode, r.stderr.decode())
    assert "gs://lab-share/kachery" in err and "no answer within 0.3 s" in err


def test_upload_and_download_of_an_array_move_every_blob(run_cli, tmp_path, monkeypatch):
    uri = store_zarr(np.arange(30 * 30, dtype="i4").reshape(30, 30), chunks=(10, 10))
    bucket = f"file://{tmp_path}/bucket"
    up = run_cli("upload", uri, "--bucket", bucket)
    assert up.returncode == 0, up.stderr.decode()
    assert "in 11 objects" in up.stdout.decode()  # 9 chunks, zarr.json, the index

    other = {"KACHERY_TASKS_DIR": str(tmp_path / "other"), "KACHERY_TASKS_PROGRESS": "1"}
    down = run_cli("download", uri, "--bucket", bucket, env=other)
    assert down.returncode == 0, down.stderr.decode()
    assert "download 10 array blobs" in down.stderr.decode()  # the bar counts blobs
    assert "blobs/s" in down.stderr.decode()
    info = run_cli("info", uri, env=other)
    assert "10 named, 10 here" in info.stdout.decode()


def test_upload_and_download_check_every_uri_before_moving_any(tmp_path, monkeypatch):
    from kachery_tasks import store_bytes
    from tests.cli.inprocess import run_main

    a = store_bytes(b"a" * 100)
    bucket = tmp_path / "bucket"
    for bad in ("bad", "sha256://" + "0" * 64):
        r = run_main("upload", a, bad, "--bucket", f"file://{bucket}")
        assert r.status == 1 and r.stderr.startswith("error: ")
        assert not any(p.is_file() for p in bucket.rglob("*"))  # nothing was uploaded
    assert run_main("upload", a, "--bucket", f"file://{bucket}").status == 0

    monkeypatch.setenv("KACHERY_TASKS_DIR", str(tmp_path / "other"))
    r = run_main("download", a, "bad", "--bucket", f"file://{bucket}")
    assert r.status == 1 and "bad" in r.stderr
    assert not current_node().store.has(a)
    assert run_main("download", a, "--bucket", f"file://{bucket}").status == 0
    assert current_node().store.has(a)
