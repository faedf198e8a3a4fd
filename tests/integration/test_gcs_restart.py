"""A download survives the GCS service going away: it fails clearly, then resumes."""

from __future__ import annotations

import os
import threading
import time

from kachery_tasks.config import init_node_dir
from kachery_tasks.errors import TransferError
from kachery_tasks.storage.buckets import gcs
from kachery_tasks.storage.buckets.gcs import GCSBucket
from kachery_tasks.storage.local import get_store
from kachery_tasks.storage.sync import download, upload
from tests.gcs_emulator import Emulator


def test_emulator_stopped_mid_download_then_restarted(tmp_path, monkeypatch):
    emu = Emulator(tmp_path / "gcs-data")
    emu.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.url)
        monkeypatch.setattr(gcs, "RETRIES", 2)
        monkeypatch.setattr(gcs, "BACKOFF", 0.05)
        emu.create_bucket("restart")
        stores = []
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            (tmp_path / name / "config.toml").write_text('[store]\nchunk_size = "1MiB"\n')
            stores.append(get_store(init_node_dir(tmp_path / name)))
        a, b = stores
        data = os.urandom(40 * 2**20)
        uri = a.store_bytes(data)
        upload(a, GCSBucket("gs://restart/k"), uri)

        fetched = []
        bucket = GCSBucket("gs://restart/k")
        real_get_into = bucket.get_into

        def counting_get_into(key, consume, start=0, end=None):
            out = real_get_into(key, consume, start, end)
            if key.startswith("chunks/"):
                fetched.append(key)
                time.sleep(0.02)  # slow enough to stop the service midway
            return out

        bucket.get_into = counting_get_into  # what downloads read chunks with
        failure = []

        def run():
            try:
                download(b, bucket, uri, threads=2)
            except TransferError as e:
                failure.append(e)

        t = threading.Thread(target=run)
        t.start()
        deadline = time.monotonic() + 60
        while len(fetched) < 8:
            assert time.monotonic() < deadline, "the download fetched no chunks"
            time.sleep(0.005)
        emu.stop()
        t.join(60)
        assert failure and "attempts" in str(failure[0])
        assert not b.has(uri)
        before = len(fetched)
        assert before < 40

        emu.start()  # same port, same data directory
        fetched.clear()
        with open(download(b, bucket, uri, threads=4), "rb") as f:
            assert f.read() == data
        assert len(fetched) <= 40 - before + 2  # only what was missing (plus in-flight ones)
    finally:
        emu.stop()

