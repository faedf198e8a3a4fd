"""kachery-tasks upload / download of a zarr array through a file:// bucket."""

from __future__ import annotations

import numpy as np

from kachery_tasks.zarr_arrays import store_zarr


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
    from kachery_tasks.storage.local import get_store
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
    assert not get_store().has(a)
    assert run_main("download", a, "--bucket", f"file://{bucket}").status == 0
    assert get_store().has(a)
