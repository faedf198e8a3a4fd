"""``gs://bucket/prefix`` buckets through ``google-cloud-storage``.

Credentials are found the usual Google way (application default credentials,
``GOOGLE_APPLICATION_CREDENTIALS``); ``STORAGE_EMULATOR_HOST`` points the
client at an emulator such as fake-gcs-server. Create-only writes use the
generation precondition ``if_generation_match=0``: the service refuses to
replace an existing object, so racing writers of the same content are
harmless. Transient failures (429, 5xx, dropped connections) are retried with
exponential backoff; permanent ones (403, 404) fail at once with a message
that never includes a credential.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import urlparse

from ...errors import (
    BucketAccessError,
    BucketError,
    BucketNotFoundError,
    ContentNotFoundError,
    TransferError,
)
from .base import Bucket, check_key

T = TypeVar("T")

RETRIES = 6
BACKOFF = 0.25
TIMEOUT = 60.0


class GCSBucket(Bucket):
    """A prefix inside a Google Cloud Storage bucket."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if not parsed.netloc:
            raise BucketNotFoundError(f"{url}: expected gs://BUCKET[/PREFIX]")
        self.url = url
        self.bucket_name = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self._local = threading.local()
        self._checked = False

    # A client per thread: the underlying HTTP sessions are not shared between threads.
    def _bucket(self):
        b = getattr(self._local, "bucket", None)
        if b is None:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import storage

            try:
                client = storage.Client()
            except DefaultCredentialsError:
                raise BucketAccessError(
                    f"no Google Cloud credentials found for {self.url}: run "
                    "'gcloud auth application-default login' or set "
                    "GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
                ) from None
            except OSError as e:
                raise BucketAccessError(
                    f"cannot load Google Cloud credentials for {self.url}: {e.strerror or e}"
                ) from None
            b = self._local.bucket = client.bucket(self.bucket_name)
        if not self._checked:
            self._call(lambda: b.reload(retry=None, timeout=TIMEOUT), "open the bucket")
            self._checked = True
        return b

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, fn: Callable[[], T], what: str, key: str | None = None) -> T:
        """Run one request, retrying transient failures, translating errors."""
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import RefreshError, TransportError

        delay = BACKOFF
        for attempt in range(RETRIES + 1):
            try:
                return fn()
            except gexc.NotFound:
                if key is None:
                    raise BucketNotFoundError(f"bucket {self.bucket_name} does not exist") from None
                raise ContentNotFoundError(f"{key} is not in bucket {self.url}") from None
            except (gexc.Forbidden, gexc.Unauthorized, RefreshError) as e:
                raise BucketAccessError(
                    f"not allowed to {what} in {self.url} ({type(e).__name__}); check that "
                    "the credentials in use have access to this bucket"
                ) from None
            except (gexc.TooManyRequests, gexc.ServerError, gexc.ServiceUnavailable,
                    gexc.RetryError, TransportError, ConnectionError, TimeoutError,
                    *_requests_errors()) as e:
                if attempt == RETRIES:
                    raise TransferError(
                        f"could not {what} in {self.url} after {RETRIES + 1} attempts: "
                        f"{type(e).__name__}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
            except gexc.GoogleAPICallError as e:
                raise BucketError(f"could not {what} in {self.url}: {e.code} {e.message}") from None
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes | memoryview) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        blob = self._bucket().blob(self._name(key))

        def upload() -> bool:
            try:
                blob.upload_from_string(
                    bytes(data), if_generation_match=0, checksum=None, retry=None, timeout=TIMEOUT
                )
            except PreconditionFailed:
                return False
            return True

        return self._call(upload, f"write {key}", key)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        blob = self._bucket().blob(self._name(key))
        if end is not None and end <= start:
            return b""
        # download_as_bytes takes an inclusive end.
        return self._call(
            lambda: blob.download_as_bytes(
                start=start or None, end=None if end is None else end - 1, checksum=None,
                retry=None, timeout=TIMEOUT,
            ),
            f"read {key}",
            key,
        )

    def size(self, key: str) -> int | None:
        bucket = self._bucket()
        name = self._name(key)
        blob = self._call(
            lambda: bucket.get_blob(name, retry=None, timeout=TIMEOUT), f"look up {key}", key
        )
        return None if blob is None else blob.size

    def list(self, prefix: str = "") -> Iterator[str]:
        bucket = self._bucket()
        full = (f"{self.prefix}/" if self.prefix else "") + prefix
        skip = len(self.prefix) + 1 if self.prefix else 0
        names = self._call(
            lambda: [
                b.name
                for b in bucket.client.list_blobs(bucket, prefix=full, retry=None, timeout=TIMEOUT)
            ], "list objects"
        )
        return iter(sorted(n[skip:] for n in names))

    def delete(self, key: str) -> bool:
        blob = self._bucket().blob(self._name(key))
        try:
            self._call(lambda: blob.delete(retry=None, timeout=TIMEOUT), f"delete {key}", key)
        except ContentNotFoundError:
            return False
        return True


def _requests_errors() -> tuple[type[BaseException], ...]:
    try:
        import requests

        return (requests.ConnectionError, requests.Timeout)
    except ImportError:  # pragma: no cover
        return ()
