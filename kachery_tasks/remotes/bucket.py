"""A bucket as a remote: content, result records and feeds under one prefix.

Where each kind lives in the bucket is :mod:`kachery_tasks.storage.layout`;
how content moves is :mod:`kachery_tasks.storage.sync` (verified chunks,
create-only writes, resumable downloads); feeds travel as append-only
segments (:mod:`kachery_tasks.feeds.bucket`). Result records are the objects
``results/<task id hex>.json``, written create-only: the first record
published for an id stays, unless its publisher finds it ``replaceable`` (a
record it would never serve): then it is replaced with
:meth:`Bucket.replace` over the generation that was judged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from ..errors import ContentNotFoundError, KacheryError
from ..feeds import bucket as feed_segments
from ..feeds.bucket import FeedSyncReport
from ..feeds.store import FeedStore
from ..storage.buckets import Bucket, open_bucket
from ..storage.layout import result_key
from ..storage.local import LocalStore
from ..storage.sync import (
    UploadReport,
    download,
    download_data,
    download_members,
    in_bucket,
    upload,
    upload_data,
)
from ..storage.zarr_index import is_index
from .base import Remote

log = logging.getLogger(__name__)

_REPLACE_ATTEMPTS = 5  # a record that keeps changing under a publisher is left alone


class BucketRemote(Remote):
    """Content, pure results and feeds shared through one bucket (``file://``, ``gs://``)."""

    def __init__(self, bucket: Bucket | str) -> None:
        self.bucket = open_bucket(bucket) if isinstance(bucket, str) else bucket
        self.url = self.bucket.url

    # ------------------------------------------------------------- content
    def has_content(self, sha256: str) -> bool:
        return in_bucket(self.bucket, sha256)

    def fetch_content(self, store: LocalStore, uri: str, progress: bool | None = None) -> str:
        return download(store, self.bucket, uri, progress=progress)

    def offer_content(
        self, store: LocalStore, uri: str, progress: bool | None = None, repair: bool = False
    ) -> UploadReport:
        return upload(store, self.bucket, uri, progress=progress, repair=repair)

    def offer_data(self, store: LocalStore, uri: str, data: bytes) -> UploadReport | None:
        if is_index(data):  # a zarr array's index: members first
            return super().offer_data(store, uri, data)
        return upload_data(self.bucket, data, uri)

    def fetch_data(self, uri: str, max_size: int) -> bytes | None:
        return download_data(self.bucket, uri, max_size)

    def fetch_members(self, store: LocalStore, uri: str, progress: bool | None = None) -> int:
        return download_members(store, self.bucket, uri, progress=progress)

    # ------------------------------------------------------------- results
    def has_result_record(self, task_id: str) -> bool:
        return self.bucket.exists(result_key(task_id))

    def get_result_records(self, task_ids: Iterable[str]) -> dict[str, bytes]:
        """Records of ``task_ids`` (one request each, several at once where the bucket is
        worth it: :attr:`Bucket.requests_at_once`); absent ones left out."""
        ids = list(dict.fromkeys(task_ids))

        def get(tid: str) -> bytes | None:
            try:
                return self.bucket.get(result_key(tid))
            except ContentNotFoundError:
                return None
            except KacheryError as e:
                log.warning("cannot read the published result of %s from %s: %s",
                            tid, self.url, e)
                return None

        threads = min(len(ids), self.bucket.requests_at_once)
        if threads <= 1:
            found = [get(tid) for tid in ids]
        else:
            with ThreadPoolExecutor(threads,
                                    thread_name_prefix="kachery-results") as pool:
                found = list(pool.map(get, ids))
        return {tid: data for tid, data in zip(ids, found) if data is not None}

    def put_result_record(self, task_id: str, data: bytes,
                          replaceable: Callable[[bytes], bool] | None = None) -> bool:
        key = result_key(task_id)
        if self.bucket.put(key, data):
            return True
        for _ in range(_REPLACE_ATTEMPTS if replaceable is not None else 0):
            info = self.bucket.stat(key)  # the generation, then its bytes (or later ones)
            if info is None:  # removed meanwhile
                if self.bucket.put(key, data):
                    return True
                continue
            try:
                old = self.bucket.get(key)
            except ContentNotFoundError:
                continue
            if not replaceable(old):
                return False
            # written only while the object still is the one judged: when it changed
            # meanwhile, the loop judges what is there now
            if self.bucket.replace(key, data, info.generation):
                log.warning("replaced the result record of %s in %s: the one there was "
                            "garbled or signed by a node that may not publish results there",
                            task_id, self.url)
                return True
        return False

    # --------------------------------------------------------------- feeds
    def pull_feed(self, feeds: FeedStore, feed_id: str) -> FeedSyncReport:
        return feed_segments.pull_feed(feeds, self.bucket, feed_id)

    def push_feed(self, feeds: FeedStore, feed_id: str) -> FeedSyncReport:
        return feed_segments.push_feed(feeds, self.bucket, feed_id)

    def feed_ids(self) -> list[str]:
        return feed_segments.bucket_feed_ids(self.bucket)

    def close(self) -> None:
        self.bucket.close()

