"""``gs://bucket/prefix`` buckets through ``google-cloud-storage``.

Credentials are found the usual Google way (application default credentials,
``GOOGLE_APPLICATION_CREDENTIALS``); ``STORAGE_EMULATOR_HOST`` points the
client at an emulator such as fake-gcs-server. Create-only writes use the
generation precondition ``if_generation_match=0``: the service refuses to
replace an existing object, so racing writers of the same content are
harmless. Transient failures (429, 5xx, dropped connections) are retried with
exponential backoff; permanent ones (403, 404) fail at once with a message
that never includes a credential.

:meth:`GCSBucket.get_into` (what downloads use) does not go through
``download_as_bytes``, which reads the body 8 KiB at a time into a growing
buffer (about 1 s of CPU per GiB): it sends the same media request on the
client's own authorized session and reads the body in 1 MiB pieces into one
reused buffer. A read that drops is resumed with a ``Range`` request from
the first byte not yet handed over. No checksum is computed there: callers
verify SHA-256 themselves.
"""

from __future__ import annotations

import http.client
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
from .base import READ_PIECE, Bucket, check_key

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

    def get_into(
        self, key: str, consume: Callable[[memoryview], object], start: int = 0,
        end: int | None = None,
    ) -> int:
        if end is not None and end <= start:
            return 0
        blob = self._bucket().blob(self._name(key))
        client = blob.client
        session = getattr(client, "_http", None)
        url_of = getattr(blob, "_get_download_url", None)
        if session is None or url_of is None:  # pragma: no cover - another client version
            return super().get_into(key, consume, start, end)
        url = url_of(client)
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(READ_PIECE))
        got = 0

        def read() -> None:
            nonlocal got
            first = start + got
            headers = {"Accept-Encoding": "identity"}
            if first or end is not None:
                headers["Range"] = f"bytes={first}-{'' if end is None else end - 1}"
            with session.request(
                "GET", url, headers=headers, stream=True, timeout=TIMEOUT
            ) as response:
                if response.status_code == 416 and end is None:
                    return  # the object ends at (or before) the first byte asked for
                if response.status_code >= 300:
                    from google.api_core.exceptions import from_http_response

                    raise from_http_response(response)
                if first and response.status_code != 206:
                    raise BucketError(f"{self.url} ignored a byte-range read of {key}")
                encoding = response.headers.get("Content-Encoding", "identity")
                if encoding != "identity":
                    raise BucketError(
                        f"{self.url} sent {key} {encoding}-encoded; objects are read as stored"
                    )
                # The http.client response under urllib3's: its readinto receives straight
                # into buf (urllib3's would read into fresh bytes, then copy).
                raw = getattr(response.raw, "_fp", None)
                if not hasattr(raw, "readinto"):  # pragma: no cover - another urllib3
                    raw = response.raw
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                received = 0
                while end is None or start + got < end:
                    n = raw.readinto(buf if end is None else buf[: end - start - got])
                    if not n:
                        break
                    consume(buf[:n])
                    got += n
                    received += n
                if expected is not None and received < expected:
                    # the connection ended early: retried from the first byte not handed over
                    raise http.client.IncompleteRead(b"", expected - received)

        self._call(read, f"read {key}", key)
        return got

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
    """What a dropped connection raises inside requests, urllib3 and http.client."""
    try:
        import requests
        import urllib3.exceptions

        return (
            requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
            http.client.IncompleteRead,
        )
    except ImportError:  # pragma: no cover
        return (http.client.IncompleteRead,)
