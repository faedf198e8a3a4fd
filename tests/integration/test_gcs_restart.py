"""A download survives the GCS service going away: it fails clearly, then resumes."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from kachery_tasks.errors import TransferError
from kachery_tasks.storage.buckets import gcs
from kachery_tasks.storage.buckets.gcs import GCSBucket
from kachery_tasks.storage.sync import download, upload
from tests.gcs_emulator import Emulator
from tests.storage.nodes import _node


def test_emulator_stopped_mid_download_then_restarted(tmp_path, monkeypatch):
    emu = Emulator(tmp_path / "gcs-data")
    emu.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.url)
        monkeypatch.setattr(gcs, "RETRIES", 2)
        monkeypatch.setattr(gcs, "BACKOFF", 0.05)
        emu.create_bucket("restart")
        a, b = _node(tmp_path, "a", "1MiB"), _node(tmp_path, "b", "1MiB")
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
        pool = ThreadPoolExecutor(1)
        running = pool.submit(download, b, bucket, uri, threads=2)
        deadline = time.monotonic() + 60
        while len(fetched) < 8:
            assert time.monotonic() < deadline, "the download fetched no chunks"
            time.sleep(0.005)
        emu.stop()
        failure = running.exception(timeout=60)
        pool.shutdown()
        assert isinstance(failure, TransferError) and "attempts" in str(failure)
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

